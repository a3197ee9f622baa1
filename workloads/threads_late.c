/*
 * threads_late: single-threaded and idle for DELAY seconds, then spawns THREADS busy workers.
 * Tests that a profiler attached with -p follows threads created after it attached.
 *
 * usage: threads_late [-n DELAY_SECONDS (2)] [-t THREADS (2)] [-s SECONDS (10)]
 */
#include "common.h"

#include <pthread.h>
#include <sys/syscall.h>

#define NOINL __attribute__((noinline, noclone))

static struct wl_counter counters[WL_MAX_THREADS];
static int nthreads = 2;
static double seconds = 10;
static double delay = 2;

static uint64_t wl_total_ops(void)
{
    return wl_sum_counters(counters, nthreads);
}

NOINL uint64_t late_worker_hot(uint64_t x)
{
    wl_keep_frame();
    for (long i = 0; i < 20000; i++) {
        x ^= x << 21;
        x ^= x >> 35;
        x ^= x << 4;
    }
    return x;
}

static volatile uint64_t sink;

NOINL void *late_worker(void *arg)
{
    int idx = (int)(intptr_t)arg;
    printf("worker=%d tid=%ld\n", idx, (long)syscall(SYS_gettid));
    uint64_t x = (uint64_t)idx + 7;
    while (!wl_stopped()) {
        x = late_worker_hot(x);
        atomic_fetch_add_explicit(&counters[idx].ops, 1, memory_order_relaxed);
    }
    sink = x;
    return NULL;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 'n': delay = wl_parse_seconds(v); break;
    case 't': nthreads = (int)wl_parse_long(v, 1, WL_MAX_THREADS, "threads"); break;
    case 's': seconds = wl_parse_seconds(v); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "nts", "[-n DELAY_SECONDS (2)] [-t THREADS (2)] [-s SECONDS (10)]",
              set_opt);
    wl_start(seconds);
    printf("pid=%d name=threads_late delay=%.3f threads=%d\n", (int)getpid(), delay, nthreads);
    double until = wl_start_mono + delay;
    while (!wl_stopped() && wl_now() < until) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_t tids[WL_MAX_THREADS];
    int started = 0;
    if (!wl_stopped()) {
        for (; started < nthreads; started++)
            if ((errno = pthread_create(&tids[started], NULL, late_worker,
                                        (void *)(intptr_t)started)))
                wl_die("pthread_create");
        wl_wait_stop();
    }
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    wl_report("threads_late");
    return 0;
}
