/*
 * many_stacks: CPU time spread over 2^13 = 8192 distinct call stacks, for checking that a
 * profiler with bounded stack tables (BPF stack maps) loses none of them.
 *
 * Each unit of work takes a path through 13 levels of functions, each level a choice of two
 * (lv<N>_0 or lv<N>_1, by bit N of a counter stepped by an odd constant), and burns a little
 * CPU in the leaf. Every path is a different chain of return addresses, so samples land on up
 * to 8192 distinct stacks, about evenly. Built with frame pointers.
 *
 * With -b USEC the leaf also blocks for USEC microseconds in nanosleep, issued with an inline
 * syscall instruction (libc's wrapper is a frameless leaf: a frame-pointer walk from it would
 * skip `leaf`), so off-CPU profiles see the same 8192 stacks blocked.
 *
 * usage: many_stacks [-t THREADS] [-s SECONDS] [-n ITERS_PER_LEAF] [-b BLOCK_USEC]
 */
#include "common.h"

#include <pthread.h>
#include <sys/syscall.h>

#define NOINL __attribute__((noinline, noclone))

static struct wl_counter counters[WL_MAX_THREADS];
static int nthreads = 1;
static double seconds = 10;
static long iters = 20000;
static long block_us;

static inline __attribute__((always_inline)) void block_in_leaf(void)
{
    struct timespec ts = {0, block_us * 1000};
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_nanosleep), "D"((long)&ts), "S"(0L)
                     : "rcx", "r11", "memory");
    (void)ret;
}

static uint64_t wl_total_ops(void)
{
    return wl_sum_counters(counters, nthreads);
}

NOINL uint64_t leaf(uint64_t x)
{
    wl_keep_frame();
    for (long i = 0; i < iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    if (block_us)
        block_in_leaf();
    return x;
}

/* lv<N>_<B> calls level N+1's function chosen by bit N+1 of `path`; the two functions of a
 * level differ in a constant so identical-code folding cannot merge them. */
#define LEVEL(N, NEXT)                                                                     \
    NOINL uint64_t lv##N##_0(uint64_t x, unsigned path);                                   \
    NOINL uint64_t lv##N##_1(uint64_t x, unsigned path);                                   \
    NOINL uint64_t lv##N##_0(uint64_t x, unsigned path)                                    \
    {                                                                                      \
        x = (path >> ((N) + 1)) & 1 ? NEXT##_1(x + 1, path) : NEXT##_0(x + 1, path);       \
        return x ^ (N);                                                                    \
    }                                                                                      \
    NOINL uint64_t lv##N##_1(uint64_t x, unsigned path)                                    \
    {                                                                                      \
        x = (path >> ((N) + 1)) & 1 ? NEXT##_1(x + 3, path) : NEXT##_0(x + 3, path);       \
        return x ^ ((N) << 8);                                                                 \
    }

NOINL uint64_t lv13_0(uint64_t x, unsigned path) { (void)path; return leaf(x + 5); }
NOINL uint64_t lv13_1(uint64_t x, unsigned path) { (void)path; return leaf(x + 7); }
LEVEL(12, lv13)
LEVEL(11, lv12)
LEVEL(10, lv11)
LEVEL(9, lv10)
LEVEL(8, lv9)
LEVEL(7, lv8)
LEVEL(6, lv7)
LEVEL(5, lv6)
LEVEL(4, lv5)
LEVEL(3, lv4)
LEVEL(2, lv3)
LEVEL(1, lv2)

static volatile uint64_t sink;

NOINL uint64_t run(int idx)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)(idx + 1);
    unsigned path = (unsigned)idx * 977u;
    while (!wl_stopped()) {
        /* 2^13 paths: bits 1..13 choose lv1..lv13. */
        path += 2 * 2654435761u;
        x = (path >> 1) & 1 ? lv1_1(x, path) : lv1_0(x, path);
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
    case 'b': block_us = wl_parse_long(v, 1, 999999, "block microseconds"); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "tsnb",
              "[-t THREADS] [-s SECONDS (0 = until SIGINT)] [-n ITERS] [-b BLOCK_USEC]",
              set_opt);
    pthread_t tids[WL_MAX_THREADS];
    wl_start(seconds);
    for (int i = 1; i < nthreads; i++)
        if ((errno = pthread_create(&tids[i], NULL, thread_main, (void *)(intptr_t)i)))
            wl_die("pthread_create");
    printf("pid=%d name=many_stacks threads=%d\n", (int)getpid(), nthreads);
    sink = run(0);
    for (int i = 1; i < nthreads; i++)
        pthread_join(tids[i], NULL);
    wl_report("many_stacks");
    return 0;
}
