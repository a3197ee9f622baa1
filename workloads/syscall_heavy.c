/*
 * syscall_heavy: spends most of its time in the kernel, so profiles show kernel frames
 * (`_[k]`) under the user frames that made each call.
 *
 * One op = getppid() + a 64-byte write to /dev/null + a 4 KiB read from /dev/zero, each from
 * its own named function so the three kernel paths stay apart in a flame graph.
 *
 * usage: syscall_heavy [-t THREADS] [-s SECONDS]
 */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>

#define NOINL __attribute__((noinline, noclone))

static struct wl_counter counters[WL_MAX_THREADS];
static int nthreads = 1;
static double seconds = 10;

static uint64_t wl_total_ops(void)
{
    return wl_sum_counters(counters, nthreads);
}

NOINL long do_getppid(void)
{
    return getppid();
}

NOINL long do_write_null(int fd, const char *buf)
{
    return write(fd, buf, 64);
}

NOINL long do_read_zero(int fd, char *buf)
{
    return read(fd, buf, 4096);
}

NOINL void *syscall_loop(void *arg)
{
    int idx = (int)(intptr_t)arg;
    char buf[4096];
    int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int zero_fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || zero_fd < 0)
        wl_die("open /dev/null or /dev/zero");
    memset(buf, 'x', sizeof buf);
    while (!wl_stopped()) {
        do_getppid();
        if (do_write_null(null_fd, buf) != 64)
            wl_die("write /dev/null");
        if (do_read_zero(zero_fd, buf) != 4096)
            wl_die("read /dev/zero");
        atomic_fetch_add_explicit(&counters[idx].ops, 1, memory_order_relaxed);
    }
    close(null_fd);
    close(zero_fd);
    return NULL;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 't': nthreads = (int)wl_parse_long(v, 1, WL_MAX_THREADS, "threads"); break;
    case 's': seconds = wl_parse_seconds(v); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "ts", "[-t THREADS] [-s SECONDS (0 = until SIGINT)]", set_opt);
    pthread_t tids[WL_MAX_THREADS];
    wl_start(seconds);
    for (int i = 1; i < nthreads; i++)
        if ((errno = pthread_create(&tids[i], NULL, syscall_loop, (void *)(intptr_t)i)))
            wl_die("pthread_create");
    printf("pid=%d name=syscall_heavy threads=%d\n", (int)getpid(), nthreads);
    syscall_loop((void *)0);
    for (int i = 1; i < nthreads; i++)
        pthread_join(tids[i], NULL);
    wl_report("syscall_heavy");
    return 0;
}
