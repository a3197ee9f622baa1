/* The emulated kernels' workload: a real process whose functions the scripted samples point
 * into, so psample symbolizes them for real. It does no work itself: it starts a named
 * worker thread, says "ready", and waits for stdin to close. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

volatile unsigned long sink;

#define BODY(n) do { for (int i = 0; i < (n); i++) sink += (unsigned long)i * 7u; } while (0)

__attribute__((noinline)) void emu_leaf_a(void) { BODY(11); }
__attribute__((noinline)) void emu_leaf_b(void) { BODY(13); }
__attribute__((noinline)) void emu_work(int which) { if (which) emu_leaf_a(); else emu_leaf_b(); BODY(3); }
__attribute__((noinline)) void emu_run(int which) { emu_work(which); BODY(5); }
__attribute__((noinline)) void emu_sleep_phase(void) { BODY(17); }
__attribute__((noinline)) void emu_wait_phase(void) { BODY(19); }
__attribute__((noinline)) void emu_wake_peer(void) { BODY(23); }
__attribute__((noinline)) void emu_worker_spin(void) { BODY(29); }
/* Blocks in libc's read (a frameless wrapper in a libc built without frame pointers), so a
 * frame-pointer walk from there loses this function: what hybrid unwinding restores. */
__attribute__((noinline)) long emu_wait_stdin(char *buf) { long n = read(0, buf, 1); sink += n; return n; }
__attribute__((noinline)) void *emu_worker_main(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "emu_worker", 0, 0, 0);
    for (;;) { pause(); emu_worker_spin(); emu_wake_peer(); }
    return NULL;
}

int main(int argc, char **argv) {
    (void)argv;
    pthread_t t;
    if (pthread_create(&t, NULL, emu_worker_main, NULL) != 0) return 1;
    /* Wait until the worker has renamed itself, so /proc shows the final names. */
    char name[32] = "";
    for (int tries = 0; tries < 2000; tries++) {
        if (pthread_getname_np(t, name, sizeof name) == 0 && strcmp(name, "emu_worker") == 0) break;
        usleep(1000);
    }
    printf("ready\n");
    fflush(stdout);
    char buf[1];
    while (emu_wait_stdin(buf) > 0) { }
    if (argc > 99) { emu_run(argc); emu_sleep_phase(); emu_wait_phase(); }
    return 0;
}
