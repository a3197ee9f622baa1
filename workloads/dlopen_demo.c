/*
 * dlopen_demo: spins in main_spin for DELAY seconds, then dlopens libdemo.so (from the
 * directory holding this executable) and spends the rest of the run in its demo_hot.
 * Tests that a profiler follows mappings created after it attached.
 *
 * usage: dlopen_demo [-n DELAY_SECONDS (2)] [-s SECONDS (10)] [-l LIBRARY_PATH]
 */
#include "common.h"

#include <dlfcn.h>
#include <libgen.h>

#define NOINL __attribute__((noinline, noclone))

static atomic_uint_fast64_t rounds;
static double seconds = 10;
static double delay = 2;
static const char *lib_arg = NULL;

static uint64_t wl_total_ops(void)
{
    return atomic_load(&rounds);
}

NOINL uint64_t main_spin(uint64_t x)
{
    wl_keep_frame();
    for (long i = 0; i < 20000; i++) {
        x ^= x << 11;
        x ^= x >> 5;
        x += 0x9e3779b97f4a7c15ull;
    }
    return x;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 'n': delay = wl_parse_seconds(v); break;
    case 's': seconds = wl_parse_seconds(v); break;
    case 'l': lib_arg = v; break;
    }
}

static volatile uint64_t sink;

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "nsl", "[-n DELAY_SECONDS (2)] [-s SECONDS (10)] [-l LIBRARY]",
              set_opt);
    char lib[4096];
    if (lib_arg) {
        snprintf(lib, sizeof lib, "%s", lib_arg);
    } else {
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n < 0)
            wl_die("readlink /proc/self/exe");
        exe[n] = '\0';
        snprintf(lib, sizeof lib, "%s/libdemo.so", dirname(exe));
    }
    wl_start(seconds);
    printf("pid=%d name=dlopen_demo delay=%.3f lib=%s\n", (int)getpid(), delay, lib);
    uint64_t x = 1;
    double until = wl_start_mono + delay;
    /* The clock is read once per ~20k iterations: negligible next to main_spin itself. */
    while (!wl_stopped() && wl_now() < until) {
        x = main_spin(x);
        atomic_fetch_add_explicit(&rounds, 1, memory_order_relaxed);
    }
    if (!wl_stopped()) {
        void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
            return 1;
        }
        uint64_t (*hot)(uint64_t) = (uint64_t(*)(uint64_t))dlsym(h, "demo_hot");
        if (!hot) {
            fprintf(stderr, "dlsym demo_hot: %s\n", dlerror());
            return 1;
        }
        printf("loaded=%s\n", lib);
        while (!wl_stopped()) {
            x = hot(x);
            atomic_fetch_add_explicit(&rounds, 1, memory_order_relaxed);
        }
        /* Not dlclosed: a profiler symbolizing at the end should still find the mapping
         * history, and unmapping is a separate scenario. */
    }
    sink = x;
    wl_report("dlopen_demo");
    return 0;
}
