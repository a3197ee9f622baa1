/*
 * libdemo.so: loaded by dlopen_demo at run time, so its code appears in the address space
 * only after the profiler has started. A profiler that reads /proc/PID/maps once at attach
 * and ignores later MMAP records cannot name demo_hot.
 */
#include <stdint.h>

/* Keeps demo_hot_inner non-leaf so frame-pointer walks see demo_hot above it (see
 * wl_keep_frame in common.h: gcc gives frameless leaves no frame pointer). */
__attribute__((noinline)) static void keep_frame(void)
{
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) uint64_t demo_hot_inner(uint64_t x, long n)
{
    keep_frame();
    for (long i = 0; i < n; i++) {
        x ^= x << 7;
        x ^= x >> 9;
        x += 0x632be59bd9b4e019ull;
    }
    return x;
}

/* Exported entry point looked up with dlsym. */
__attribute__((noinline)) uint64_t demo_hot(uint64_t x)
{
    return demo_hot_inner(x, 20000) ^ 1;
}
