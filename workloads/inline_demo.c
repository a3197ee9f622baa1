/*
 * inline_demo: hot code that exists only as inlined copies, for checking that a symbolizer
 * expands inline frames from DWARF (psample marks them `_[i]`).
 *
 * outer_loop (a real function) -> mix_block (always inlined) -> mix_step (always inlined).
 * A profile without inline expansion shows only outer_loop; with it, the samples sit under
 * outer_loop;mix_block;mix_step. checksum_tail is a second, non-inlined path (~25 % of the
 * work) so the split can be checked too.
 *
 * usage: inline_demo [-s SECONDS]
 */
#include "common.h"

#define NOINL __attribute__((noinline, noclone))
#define INL static inline __attribute__((always_inline))

static atomic_uint_fast64_t rounds;
static double seconds = 10;

static uint64_t wl_total_ops(void)
{
    return atomic_load(&rounds);
}

INL uint64_t mix_step(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 29;
    return x;
}

INL uint64_t mix_block(uint64_t x, int n)
{
    for (int i = 0; i < n; i++)
        x = mix_step(x + (uint64_t)i);
    return x;
}

NOINL uint64_t outer_loop(uint64_t x)
{
    wl_keep_frame();
    return mix_block(x, 3000);
}

NOINL uint64_t checksum_tail(uint64_t x)
{
    wl_keep_frame();
    for (int i = 0; i < 1000; i++) {
        x = (x << 5) + x + (uint64_t)i;
        x ^= x >> 11;
    }
    return x;
}

static volatile uint64_t sink;

static void set_opt(char o, const char *v)
{
    if (o == 's')
        seconds = wl_parse_seconds(v);
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "s", "[-s SECONDS (0 = until SIGINT)]", set_opt);
    wl_start(seconds);
    printf("pid=%d name=inline_demo\n", (int)getpid());
    uint64_t x = 1;
    while (!wl_stopped()) {
        x = outer_loop(x);
        x = checksum_tail(x);
        atomic_fetch_add_explicit(&rounds, 1, memory_order_relaxed);
    }
    sink = x;
    wl_report("inline_demo");
    return 0;
}
