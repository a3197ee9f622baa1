/*
 * rbp_clobber: a frame-pointer program whose hot leaf, mix(), is built without frame
 * pointers and keeps data in rbp: a pointer to a decoy "frame record" in its caller's frame,
 * { spin's real frame pointer, an address in main that is not a return address }. The
 * kernel's frame-pointer walk of a sample in mix() therefore reports the decoy as mix's
 * caller and then rejoins the true chain at spin's record; the decoy is what a hybrid unwind
 * must drop (mix's CFI says where its caller's return address really is).
 *
 * Build: gcc -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls rbp_clobber.c
 * Prints "pid=PID" when running; runs until killed.
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define NOINL __attribute__((noinline, noclone))

NOINL __attribute__((optimize("omit-frame-pointer"))) uint64_t mix(uint64_t *record, long n)
{
    /* rbp holds data here, as code built without frame pointers is free to do. */
    register uint64_t *data asm("rbp") = record;
    uint64_t acc = 0;
    for (long i = 0; i < n; i++) {
        __asm__ volatile("" : "+r"(data));
        acc = (acc ^ data[2]) * 0x9e3779b97f4a7c15ull + (uint64_t)i;
    }
    return acc;
}

NOINL void decoy(void)
{
    __asm__ volatile("");
}

static volatile uint64_t sink;

NOINL void spin(void)
{
    uint64_t record[3];
    record[0] = (uint64_t)__builtin_frame_address(0);
    record[1] = (uint64_t)&decoy + 1;
    record[2] = 42;
    for (;;)
        sink += mix(record, 100000);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid=%d\n", (int)getpid());
    spin();
    return 0;
}
