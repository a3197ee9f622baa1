/*
 * sleep_pipe: a known off-CPU split for checking an off-CPU profiler.
 *
 * Each iteration the parent sleeps 7 ms in nanosleep (sleep_phase), then tells a forked child
 * to go and blocks reading a pipe (wait_phase); the child sleeps 3 ms before writing. So the
 * parent spends ~70 % of its blocked time under sleep_phase and ~30 % under wait_phase, and
 * almost no CPU. The child is a separate process so a per-process profile of the parent does
 * not include its sleeps.
 *
 * At exit it prints, after the result line, `phases sleep_us=N wait_us=M`: the time it
 * measured in each phase.
 *
 * usage: sleep_pipe[_libc] [-s SECONDS] [-a SLEEP_MS] [-b PIPE_WAIT_MS]
 */
#include "common.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define NOINL __attribute__((noinline, noclone))

/* The blocking calls are made with an inline syscall instruction rather than libc's wrappers:
 * those wrappers are frameless leaves, so a frame-pointer walk from inside them skips their
 * caller and wait_phase would vanish from the off-CPU stack. Issued here, the user stack seen
 * by the kernel starts in sleep_phase / wait_phase itself.
 *
 * Built with -DSLEEP_PIPE_LIBC (the sleep_pipe_libc binary) it calls libc's nanosleep() and
 * read() instead: a program with frame pointers blocking inside a libc without them (Debian's,
 * RHEL's), the case hybrid unwinding (--call-graph auto) exists for. */
#if defined(__x86_64__) && !defined(SLEEP_PIPE_LIBC)
#include <sys/syscall.h>
static inline long raw_syscall3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#define blocking_read(fd, buf, n) raw_syscall3(SYS_read, (fd), (long)(buf), (n))
#define blocking_nanosleep(req, rem) raw_syscall3(SYS_nanosleep, (long)(req), (long)(rem), 0)
#else
#define blocking_read(fd, buf, n) read((fd), (buf), (n))
#define blocking_nanosleep(req, rem) nanosleep((req), (rem))
#endif

static atomic_uint_fast64_t iterations;
static double seconds = 10;
static long sleep_ms = 7;
static long wait_ms = 3;

static uint64_t wl_total_ops(void)
{
    return atomic_load(&iterations);
}

static inline __attribute__((always_inline)) void sleep_ms_exact(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    /* Resume after a signal (SIGUSR1 marks): the split must not depend on signal timing. */
    while (blocking_nanosleep(&ts, &ts) < 0 && errno == EINTR && !wl_stopped()) {
    }
}

/* Time spent in each phase, measured by the workload itself: the reference an off-CPU
 * profile is checked against, whatever wake-up latency a loaded machine adds to either. */
static uint64_t sleep_phase_ns, wait_phase_ns;

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

NOINL void sleep_phase(void)
{
    sleep_ms_exact(sleep_ms);
}

/* Returns 0 when the child is gone or we are stopping. */
NOINL int wait_phase(int go_fd, int back_fd)
{
    char c = 'g';
    if (write(go_fd, &c, 1) != 1)
        return 0;
    for (;;) {
        long r = blocking_read(back_fd, &c, 1);
        if (r == 1)
            return 1;
        if (r < 0 && errno == EINTR && !wl_stopped())
            continue;
        return 0;
    }
}

static void child_loop(int go_fd, int back_fd)
{
    char c;
    /* Die with the parent even if it is SIGKILLed, so no stray child outlives a benchmark. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGINT, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    while (read(go_fd, &c, 1) == 1) {
        sleep_ms_exact(wait_ms);
        if (write(back_fd, &c, 1) != 1)
            break;
    }
    _exit(0);
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 's': seconds = wl_parse_seconds(v); break;
    case 'a': sleep_ms = wl_parse_long(v, 1, 10000, "sleep ms"); break;
    case 'b': wait_ms = wl_parse_long(v, 1, 10000, "pipe wait ms"); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "sab",
              "[-s SECONDS (0 = until SIGINT)] [-a SLEEP_MS (7)] [-b PIPE_WAIT_MS (3)]", set_opt);
    int go[2], back[2];
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(back, O_CLOEXEC) < 0)
        wl_die("pipe");
    pid_t child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        close(go[1]);
        close(back[0]);
        child_loop(go[0], back[1]);
    }
    close(go[0]);
    close(back[1]);
    wl_start(seconds);
    printf("pid=%d name=sleep_pipe child=%d sleep_ms=%ld wait_ms=%ld\n", (int)getpid(),
           (int)child, sleep_ms, wait_ms);
    while (!wl_stopped()) {
        uint64_t t0 = mono_ns();
        sleep_phase();
        uint64_t t1 = mono_ns();
        sleep_phase_ns += t1 - t0;
        if (wl_stopped() || !wait_phase(go[1], back[0]))
            break;
        wait_phase_ns += mono_ns() - t1;
        atomic_fetch_add(&iterations, 1);
    }
    close(go[1]);
    close(back[0]);
    waitpid(child, NULL, 0);
    wl_report("sleep_pipe");
    printf("phases sleep_us=%llu wait_us=%llu\n", (unsigned long long)(sleep_phase_ns / 1000),
           (unsigned long long)(wait_phase_ns / 1000));
    return 0;
}
