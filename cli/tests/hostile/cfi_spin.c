/* Static, no frame pointers: only its CFI unwinds it. main -> outer_fn -> hot_fn. */
#include <stdio.h>
#include <unistd.h>

static volatile unsigned long sink;

__attribute__((noinline)) void hot_fn(void) {
    for (int i = 0; i < 100000; i++) sink += i * 3;
}

__attribute__((noinline)) void outer_fn(void) {
    for (;;) hot_fn();
}

int main(void) {
    printf("pid=%d\n", getpid());
    fflush(stdout);
    outer_fn();
    return 0;
}
