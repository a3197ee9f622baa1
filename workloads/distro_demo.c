/*
 * distro_demo: a program as distros ship it once stripped: its hot code is in static
 * functions, which keep no symbol after `strip` (only .dynsym survives, and it names none of
 * them), plus an always-inlined helper whose frames only DWARF can give back.
 *
 * main -> demo_round (static) -> demo_alpha (static, ~2/3 of the work) -> demo_mix (inlined)
 *                             -> demo_beta  (static, ~1/3)
 * The tests strip a copy, keep its debug file apart (objcopy --only-keep-debug) and serve it
 * over debuginfod. The loops are long so that samples land on many different addresses of
 * each function.
 *
 * usage: distro_demo [-s SECONDS]
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

INL uint64_t demo_mix(uint64_t x, uint64_t i)
{
    x += i;
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return x;
}

static NOINL uint64_t demo_alpha(uint64_t x)
{
    wl_keep_frame();
    for (uint64_t i = 0; i < 4000; i++) {
        x = demo_mix(x, i);
        x = (x << 7) | (x >> 57);
    }
    return x;
}

static NOINL uint64_t demo_beta(uint64_t x)
{
    wl_keep_frame();
    for (uint64_t i = 0; i < 2000; i++) {
        x = (x << 5) + x + i;
        x ^= x >> 13;
        x += x << 3;
    }
    return x;
}

static NOINL uint64_t demo_round(uint64_t x)
{
    wl_keep_frame();
    x = demo_alpha(x);
    return demo_beta(x);
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
    printf("pid=%d name=distro_demo\n", (int)getpid());
    uint64_t x = 1;
    while (!wl_stopped()) {
        x = demo_round(x);
        atomic_fetch_add_explicit(&rounds, 1, memory_order_relaxed);
    }
    sink = x;
    wl_report("distro_demo");
    return 0;
}
