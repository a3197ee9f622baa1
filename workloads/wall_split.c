/*
 * wall_split: a known split of wall time between on-CPU and off-CPU, for checking
 * `psample wall`.
 *
 * Each of N worker threads (named wall_w0, wall_w1, ...) loops: compute until its own CPU
 * time (CLOCK_THREAD_CPUTIME_ID) has advanced COMPUTE_MS (compute_phase), then nanosleep
 * SLEEP_MS (sleep_phase). On an idle CPU that is 40 % on-CPU and 60 % off-CPU with the
 * defaults (4 ms / 6 ms). The compute phase is a CPU budget, not a wall-clock one: on a
 * loaded CPU it takes longer (the thread waits, runnable, for the CPU) but does the same
 * work. With -c CPU every worker is pinned to that CPU, so two workers compete for it.
 * Workers start together (a barrier), so with -c they contend from the first iteration.
 *
 * At exit it prints, after the result line, one line per worker with what it measured
 * itself: `thread name=wall_w0 tid=N cpu_us=C sleep_us=S wall_us=W` (CPU time, time inside
 * the sleep phase, time from the start of its loop to its end).
 *
 * usage: wall_split [-s SECONDS] [-t THREADS] [-a COMPUTE_MS] [-b SLEEP_MS] [-c CPU]
 */
#include "common.h"

#include <pthread.h>
#include <sched.h>

#define NOINL __attribute__((noinline, noclone))

/* nanosleep through an inline syscall instruction: libc's wrapper is a frameless leaf, so a
 * frame-pointer walk from inside it would skip sleep_phase (see sleep_pipe.c). */
#if defined(__x86_64__)
#include <sys/syscall.h>
static inline long raw_nanosleep(struct timespec *req, struct timespec *rem)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_nanosleep), "D"(req), "S"(rem)
                     : "rcx", "r11", "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#else
#define raw_nanosleep nanosleep
#endif

static double seconds = 10;
static long nthreads = 1;
static long compute_ms = 4;
static long sleep_ms = 6;
static long pin_cpu = -1;

struct worker {
    pthread_t thread;
    int index;
    pid_t tid;
    uint64_t cpu_ns, sleep_ns, wall_ns;
    atomic_uint_fast64_t iterations;
};

static struct worker workers[WL_MAX_THREADS];
static pthread_barrier_t start_line;

static uint64_t wl_total_ops(void)
{
    uint64_t n = 0;
    for (long i = 0; i < nthreads; i++)
        n += atomic_load(&workers[i].iterations);
    return n;
}

static inline uint64_t clock_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static volatile uint64_t sink;

/* A small unit of arithmetic; non-leaf so that frame-pointer walks keep compute_phase. */
NOINL void spin(void)
{
    wl_keep_frame();
    uint64_t x = sink;
    for (int i = 0; i < 2000; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    sink = x;
}

/* Computes until this thread used `ms` more of CPU time. */
NOINL void compute_phase(long ms)
{
    uint64_t until = clock_ns(CLOCK_THREAD_CPUTIME_ID) + (uint64_t)ms * 1000000ull;
    while (!wl_stopped() && clock_ns(CLOCK_THREAD_CPUTIME_ID) < until)
        spin();
}

NOINL void sleep_phase(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (raw_nanosleep(&ts, &ts) < 0 && errno == EINTR && !wl_stopped()) {
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "wall_w%d", w->index);
    pthread_setname_np(pthread_self(), name);
    w->tid = (pid_t)syscall(SYS_gettid);
    if (pin_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)pin_cpu, &set);
        if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
            wl_die("pthread_setaffinity_np");
    }
    pthread_barrier_wait(&start_line);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID), wall0 = clock_ns(CLOCK_MONOTONIC);
    while (!wl_stopped()) {
        compute_phase(compute_ms);
        if (wl_stopped())
            break;
        uint64_t t = clock_ns(CLOCK_MONOTONIC);
        sleep_phase(sleep_ms);
        w->sleep_ns += clock_ns(CLOCK_MONOTONIC) - t;
        atomic_fetch_add(&w->iterations, 1);
    }
    w->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    w->wall_ns = clock_ns(CLOCK_MONOTONIC) - wall0;
    return NULL;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 's': seconds = wl_parse_seconds(v); break;
    case 't': nthreads = wl_parse_long(v, 1, WL_MAX_THREADS, "threads"); break;
    case 'a': compute_ms = wl_parse_long(v, 1, 10000, "compute ms"); break;
    case 'b': sleep_ms = wl_parse_long(v, 1, 10000, "sleep ms"); break;
    case 'c': pin_cpu = wl_parse_long(v, 0, CPU_SETSIZE - 1, "cpu"); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "stabc",
              "[-s SECONDS (0 = until SIGINT)] [-t THREADS (1)] [-a COMPUTE_MS (4)] "
              "[-b SLEEP_MS (6)] [-c CPU (pin every worker to it)]",
              set_opt);
    wl_start(seconds);
    if (pthread_barrier_init(&start_line, NULL, (unsigned)nthreads + 1) != 0)
        wl_die("pthread_barrier_init");
    for (long i = 0; i < nthreads; i++) {
        workers[i].index = (int)i;
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0)
            wl_die("pthread_create");
    }
    pthread_barrier_wait(&start_line);
    printf("pid=%d name=wall_split threads=%ld compute_ms=%ld sleep_ms=%ld\n", (int)getpid(),
           nthreads, compute_ms, sleep_ms);
    for (long i = 0; i < nthreads; i++)
        pthread_join(workers[i].thread, NULL);
    wl_report("wall_split");
    for (long i = 0; i < nthreads; i++) {
        struct worker *w = &workers[i];
        printf("thread name=wall_w%d tid=%d cpu_us=%llu sleep_us=%llu wall_us=%llu\n", w->index,
               (int)w->tid, (unsigned long long)(w->cpu_ns / 1000),
               (unsigned long long)(w->sleep_ns / 1000), (unsigned long long)(w->wall_ns / 1000));
    }
    return 0;
}
