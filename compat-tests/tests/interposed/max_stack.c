/*
 * max_stack: opens a cpu-clock event on itself with a callchain limited by
 * attr.sample_max_stack = 2 (and FD_CLOEXEC), spins in a 6-deep call chain, and prints the
 * longest callchain of its first SAMPLES samples and whether the fd is close-on-exec:
 *   nr=N cloexec=0|1
 * A kernel that honours sample_max_stack (4.8+) gives nr <= 2 plus context markers in every
 * sample; RHEL 7.9 accepts the field as padding and ignores it, so the full chain comes back.
 * The longest of many samples, not the first: a sample can land in main (its first touch of
 * the ring pages faults, and on a loaded machine the timer may fire during the fault), whose
 * chain is short anyway; the deep chain is where nearly all the CPU time goes.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SAMPLES 50

static volatile uint64_t sink;

__attribute__((noinline)) static void d6(void) { for (int i = 0; i < 1000; i++) sink += i; }
__attribute__((noinline)) static void d5(void) { d6(); sink++; }
__attribute__((noinline)) static void d4(void) { d5(); sink++; }
__attribute__((noinline)) static void d3(void) { d4(); sink++; }
__attribute__((noinline)) static void d2(void) { d3(); sink++; }
__attribute__((noinline)) static void d1(void) { d2(); sink++; }

int main(void)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = 112; /* PERF_ATTR_SIZE_VER5: holds sample_max_stack */
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_CPU_CLOCK;
    a.sample_period = 100000;
    a.sample_type = PERF_SAMPLE_CALLCHAIN;
    a.exclude_kernel = 1;
    a.sample_max_stack = 2;
    int fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 8 /* PERF_FLAG_FD_CLOEXEC */);
    if (fd < 0) {
        perror("perf_event_open");
        return 1;
    }
    int cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
    size_t len = 9 * 4096;
    struct perf_event_mmap_page *pg = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (pg == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    const char *data = (const char *)pg + 4096;
    const uint64_t size = 8 * 4096;
    uint64_t longest = 0;
    int seen = 0;
    for (int round = 0; round < 1000000 && seen < SAMPLES; round++) {
        d1();
        uint64_t head = __atomic_load_n(&pg->data_head, __ATOMIC_ACQUIRE);
        for (uint64_t pos = pg->data_tail; pos < head && seen < SAMPLES;) {
            struct perf_event_header h;
            memcpy(&h, data + pos % size, sizeof h); /* 8-byte aligned: never wraps */
            if (h.size == 0)
                break;
            if (h.type == PERF_RECORD_SAMPLE) {
                uint64_t nr; /* the record may wrap: nr is the next aligned word */
                memcpy(&nr, data + (pos + sizeof h) % size, sizeof nr);
                longest = nr > longest ? nr : longest;
                seen++;
            }
            pos += h.size;
        }
        __atomic_store_n(&pg->data_tail, head, __ATOMIC_RELEASE);
    }
    if (seen > 0) {
        printf("nr=%llu cloexec=%d\n", (unsigned long long)longest, cloexec);
        return 0;
    }
    fprintf(stderr, "no sample\n");
    return 1;
}
