/* Address-space churn: maps anonymous executable memory at ever new addresses and unmaps it
 * again, for SECONDS seconds, spinning in hot_loop in between. Every mapping is a distinct
 * MMAP2 record for the profiler. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

__attribute__((noinline)) static void hot_loop(void) {
    for (int i = 0; i < 2000; i++) sink += i * 7;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    printf("pid=%d\n", getpid());
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long base = 0x600000000000UL, n = 0;
    for (;;) {
        void *hint = (void *)(base + (n % (1UL << 24)) * 0x2000);
        void *p = mmap(hint, 4096, PROT_READ | PROT_EXEC,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != MAP_FAILED) munmap(p, 4096);
        n++;
        hot_loop();
        if ((n & 255) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 > seconds) break;
        }
    }
    printf("mappings=%lu\n", n);
    return 0;
}
