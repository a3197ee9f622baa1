/*
 * Shared plumbing for the bundled workloads: argument parsing, the stop/measure-window signal
 * protocol and the result line the benchmark harness parses.
 *
 * Protocol (stdout, line buffered so a harness reading a pipe sees it immediately):
 *   pid=<PID> name=<workload> [extra]          printed once the workload is ready
 *   result name=<workload> ops=<N> seconds=<T> ops_per_sec=<R> window_ops=<N> window_seconds=<T> end_mono=<T>
 * SIGINT/SIGTERM, the -s deadline or the WL_CPU_SECONDS budget stop the workload; SIGUSR1 marks the start of the
 * measurement window, so a harness can exclude the time a profiler needs to attach. Without
 * SIGUSR1 the window is the whole run. end_mono is CLOCK_MONOTONIC at stop, which lets a
 * harness measure "stop to output ready" against the same clock.
 */
#ifndef PSAMPLE_WORKLOADS_COMMON_H
#define PSAMPLE_WORKLOADS_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Busy threads poll this once per unit of work: a relaxed load is a plain mov on x86_64, so
 * stopping costs nothing measurable, unlike reading the clock in the hot loop. */
static atomic_int wl_stop;
static atomic_int wl_window_marked;
static double wl_start_mono;
static double wl_mark_mono;
static atomic_uint_fast64_t wl_mark_ops;
static double wl_end_mono;

/* Called first thing in hot leaf functions to make them non-leaf. gcc 12 on x86_64 gives a
 * leaf function no frame even with -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer, and a
 * frame-pointer walk from a frameless leaf skips its caller: the flame graph would show the
 * leaf under its grandparent. One call per thousands of loop iterations costs nothing
 * measurable. */
__attribute__((noinline, unused)) static void wl_keep_frame(void)
{
    __asm__ volatile("" ::: "memory");
}

/* Every workload provides its total op count; it must be async-signal-safe (atomics only). */
static uint64_t wl_total_ops(void);

static inline double wl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void wl_on_stop(int sig)
{
    (void)sig;
    if (!atomic_load_explicit(&wl_stop, memory_order_relaxed)) {
        wl_end_mono = wl_now();
        atomic_store_explicit(&wl_stop, 1, memory_order_release);
    }
}

static inline void wl_on_mark(int sig)
{
    (void)sig;
    if (!atomic_exchange(&wl_window_marked, 1)) {
        wl_mark_mono = wl_now();
        atomic_store(&wl_mark_ops, wl_total_ops());
    }
}

static inline int wl_stopped(void)
{
    return atomic_load_explicit(&wl_stop, memory_order_relaxed);
}

static inline void wl_die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static inline double wl_parse_seconds(const char *v);

/* One-shot timer `which` (ITIMER_REAL: wall time, ITIMER_PROF: the process's CPU time). */
static inline void wl_arm_timer(int which, double seconds)
{
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_sec = (time_t)seconds;
    it.it_value.tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6);
    if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0)
        it.it_value.tv_usec = 1;
    setitimer(which, &it, NULL);
}

/* WL_CPU_SECONDS=X in the environment also stops the workload once the process (all its
 * threads) has used X seconds of CPU. Tests use it so that how much work gets sampled does
 * not depend on how loaded the machine is; the -s deadline is wall time. */
static inline void wl_arm_cpu_budget(void)
{
    const char *v = getenv("WL_CPU_SECONDS");
    if (v && *v)
        wl_arm_timer(ITIMER_PROF, wl_parse_seconds(v));
}

/* Installs the handlers and arms the deadline. seconds <= 0 means run until signalled. */
static inline void wl_start(double seconds)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = wl_on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGPROF, &sa, NULL);
    sa.sa_handler = wl_on_mark;
    sigaction(SIGUSR1, &sa, NULL);
    /* A reader of our stdout may go away; exiting on SIGPIPE would lose the result line. */
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    wl_start_mono = wl_now();
    if (seconds > 0)
        wl_arm_timer(ITIMER_REAL, seconds);
    wl_arm_cpu_budget();
}

/* Blocks the calling thread (not busy) until stopped: for workloads whose main thread only
 * waits for workers. */
static inline void wl_wait_stop(void)
{
    while (!wl_stopped()) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static inline void wl_report(const char *name)
{
    uint64_t ops = wl_total_ops();
    double end = wl_end_mono > 0 ? wl_end_mono : wl_now();
    double secs = end - wl_start_mono;
    double wstart = atomic_load(&wl_window_marked) ? wl_mark_mono : wl_start_mono;
    uint64_t wops = ops - (atomic_load(&wl_window_marked) ? atomic_load(&wl_mark_ops) : 0);
    double wsecs = end - wstart;
    printf("result name=%s ops=%llu seconds=%.6f ops_per_sec=%.3f window_ops=%llu "
           "window_seconds=%.6f window_ops_per_sec=%.3f end_mono=%.6f\n",
           name, (unsigned long long)ops, secs, secs > 0 ? (double)ops / secs : 0.0,
           (unsigned long long)wops, wsecs, wsecs > 0 ? (double)wops / wsecs : 0.0, end);
    fflush(stdout);
}

/* Parses "-x VALUE" style options; unknown options are an error so typos never run silently
 * with defaults. `spec` lists accepted letters, each taking a value. */
static inline void wl_getopt(int argc, char **argv, const char *spec, const char *usage,
                             void (*set)(char opt, const char *val))
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0' || a[2] != '\0' || !strchr(spec, a[1]) ||
            i + 1 >= argc) {
            fprintf(stderr, "usage: %s %s\n", argv[0], usage);
            exit(2);
        }
        set(a[1], argv[++i]);
    }
}

static inline long wl_parse_long(const char *v, long lo, long hi, const char *what)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "bad %s: %s (expected %ld..%ld)\n", what, v, lo, hi);
        exit(2);
    }
    return x;
}

static inline double wl_parse_seconds(const char *v)
{
    char *end = NULL;
    double x = strtod(v, &end);
    if (end == v || *end || x < 0 || x > 86400) {
        fprintf(stderr, "bad seconds: %s\n", v);
        exit(2);
    }
    return x;
}

/* Per-thread counters on their own cache lines: a shared counter would bounce between cores
 * and make the measured throughput depend on cache traffic rather than the work. */
#define WL_MAX_THREADS 64
struct wl_counter {
    _Alignas(64) atomic_uint_fast64_t ops;
};

static inline uint64_t wl_sum_counters(struct wl_counter *c, int n)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += atomic_load_explicit(&c[i].ops, memory_order_relaxed);
    return s;
}

#endif
