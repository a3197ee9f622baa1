/*
 * cpu_split: a known CPU split for checking a profiler's attribution.
 *
 * Each unit of work calls hot_a 7 times and hot_b 3 times; both run the same number of
 * iterations of the same-cost loop, so hot_a gets 70 % of the samples and hot_b 30 % by
 * construction, without any clock reads in the hot path. Call chain:
 *   main -> run -> work -> hot_a / hot_b          (thread 0, the main thread)
 *   start_thread -> thread_main -> run -> work -> hot_a / hot_b   (threads 1..T-1)
 *
 * Built twice: cpu_split_fp (frame pointers) and cpu_split_nofp (no frame pointers, sibling
 * calls kept as calls so every frame stays on the stack for DWARF unwinding).
 *
 * usage: cpu_split [-t THREADS] [-s SECONDS] [-n ITERS_PER_CALL]
 */
#include "common.h"

#include <pthread.h>

#define NOINL __attribute__((noinline, noclone))

static struct wl_counter counters[WL_MAX_THREADS];
static int nthreads = 1;
static double seconds = 10;
static long iters = 4000;

static uint64_t wl_total_ops(void)
{
    return wl_sum_counters(counters, nthreads);
}

/* Two xorshift64 variants with different shift triples: identical cost (3 shifts, 3 xors, one
 * loop-carried dependency), but different constants so the compiler cannot fold the two
 * functions into one (-fipa-icf) and break the attribution. */
NOINL uint64_t hot_a(uint64_t x, long n)
{
    wl_keep_frame();
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

NOINL uint64_t hot_b(uint64_t x, long n)
{
    wl_keep_frame();
    for (long i = 0; i < n; i++) {
        x ^= x << 17;
        x ^= x >> 7;
        x ^= x << 13;
    }
    return x;
}

/* Interleaved rather than 7-then-3 so short windows still see the 70/30 mix. */
NOINL uint64_t work(uint64_t x)
{
    x = hot_a(x, iters);
    x = hot_b(x, iters);
    x = hot_a(x, iters);
    x = hot_a(x, iters);
    x = hot_b(x, iters);
    x = hot_a(x, iters);
    x = hot_a(x, iters);
    x = hot_b(x, iters);
    x = hot_a(x, iters);
    x = hot_a(x, iters);
    return x;
}

static volatile uint64_t sink;

NOINL uint64_t run(int idx)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)(idx + 1);
    while (!wl_stopped()) {
        x = work(x);
        atomic_fetch_add_explicit(&counters[idx].ops, 1, memory_order_relaxed);
    }
    return x;
}

NOINL void *thread_main(void *arg)
{
    int idx = (int)(intptr_t)arg;
    sink = run(idx);
    return NULL;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 't': nthreads = (int)wl_parse_long(v, 1, WL_MAX_THREADS, "threads"); break;
    case 's': seconds = wl_parse_seconds(v); break;
    case 'n': iters = wl_parse_long(v, 1, 100000000, "iterations"); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "tsn", "[-t THREADS] [-s SECONDS (0 = until SIGINT)] [-n ITERS]",
              set_opt);
    pthread_t tids[WL_MAX_THREADS];
    wl_start(seconds);
    for (int i = 1; i < nthreads; i++)
        if ((errno = pthread_create(&tids[i], NULL, thread_main, (void *)(intptr_t)i)))
            wl_die("pthread_create");
    printf("pid=%d name=cpu_split threads=%d\n", (int)getpid(), nthreads);
    sink = run(0);
    for (int i = 1; i < nthreads; i++)
        pthread_join(tids[i], NULL);
    wl_report("cpu_split");
    return 0;
}
