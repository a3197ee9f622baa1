/*
 * libc_split: a known CPU split spent inside libc, for checking a profiler's leaf frames.
 *
 * Each unit of work calls scan_a 7 times and scan_b 3 times; each scan calls libc's memchr
 * the same number of times over the same buffer, so ~70 % of the CPU is in memchr called from
 * scan_a and ~30 % from scan_b. Call chain:
 *   main -> run -> work -> scan_a / scan_b -> memchr (libc)
 *
 * Built with frame pointers over the system's libc. Debian's and RHEL's libc are built
 * without them, and memchr is a frameless leaf: a frame-pointer walk from inside it starts at
 * scan_a's frame record and reports run as memchr's caller, so scan_a and scan_b vanish.
 * DWARF unwinding and psample's hybrid mode (--call-graph auto) keep them.
 *
 * usage: libc_split [-s SECONDS] [-n CALLS_PER_SCAN]
 */
#include "common.h"

#define NOINL __attribute__((noinline, noclone))
#define BUF_SIZE 4096

static atomic_uint_fast64_t units;
static double seconds = 10;
static long calls = 200;

static uint64_t wl_total_ops(void)
{
    return atomic_load(&units);
}

static char buffer[BUF_SIZE];
/* Read through a volatile pointer so the compiler cannot hoist the (pure) memchr call out of
 * the loop: each iteration really calls into libc. */
static const char *volatile haystack = buffer;

/* The two scans differ in the byte they look for so -fipa-icf cannot merge them. Neither byte
 * occurs in the (all-zero) buffer: every call scans all of it. */
NOINL uint64_t scan_a(long n)
{
    uint64_t misses = 0;
    for (long i = 0; i < n; i++)
        misses += memchr(haystack, 'a', BUF_SIZE) == NULL;
    return misses;
}

NOINL uint64_t scan_b(long n)
{
    uint64_t misses = 0;
    for (long i = 0; i < n; i++)
        misses += memchr(haystack, 'b', BUF_SIZE) == NULL;
    return misses;
}

/* Interleaved, as in cpu_split, so short windows still see the 70/30 mix. */
NOINL uint64_t work(void)
{
    uint64_t x = 0;
    x += scan_a(calls);
    x += scan_b(calls);
    x += scan_a(calls);
    x += scan_a(calls);
    x += scan_b(calls);
    x += scan_a(calls);
    x += scan_a(calls);
    x += scan_b(calls);
    x += scan_a(calls);
    x += scan_a(calls);
    return x;
}

static volatile uint64_t sink;

NOINL void run(void)
{
    while (!wl_stopped()) {
        sink += work();
        atomic_fetch_add_explicit(&units, 1, memory_order_relaxed);
    }
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 's': seconds = wl_parse_seconds(v); break;
    case 'n': calls = wl_parse_long(v, 1, 100000000, "calls per scan"); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "sn", "[-s SECONDS (0 = until SIGINT)] [-n CALLS_PER_SCAN]", set_opt);
    wl_start(seconds);
    printf("pid=%d name=libc_split\n", (int)getpid());
    run();
    wl_report("libc_split");
    return 0;
}
