/* Test target for the unwind crate: known call chains with a 70/30 CPU split.
 * Built with -O2 -fomit-frame-pointer -fno-optimize-sibling-calls so only CFI can unwind it.
 *   prog single                 main -> a -> b -> c -> hot1/hot2 -> work, forever
 *   prog threads N DELAY_MS     after DELAY_MS, N threads run thread_main -> a -> ...
 *   prog dlopen LIB DELAY_MS    after DELAY_MS, dlopen LIB and run lib_entry(a)
 *   prog signal                 the chain runs inside a SIGALRM handler, forever
 * It prints "ready" once main runs (the loader is done) and "went" once the threads exist,
 * the library is loaded or the handler runs. DELAY_MS "go" waits for a byte (or EOF) on
 * stdin instead of a time, so a test decides when the process changes, not the clock.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline, noclone)) void work(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) sink += i * 7;
}
__attribute__((noinline, noclone)) void hot1(void) { work(7000); }
__attribute__((noinline, noclone)) void hot2(void) { work(3000); }
__attribute__((noinline, noclone)) void c(void) { hot1(); hot2(); }
__attribute__((noinline, noclone)) void b(void) { c(); }
__attribute__((noinline, noclone)) void a(void) { b(); }

static void *thread_main(void *arg) {
    (void)arg;
    for (;;) a();
    return NULL;
}

static void say(const char *line) {
    /* write(2): also from the signal handler. */
    if (write(1, line, strlen(line)) < 0) sink = 0;
}

static void on_alarm(int sig) {
    (void)sig;
    say("went\n");
    for (;;) a();
}

static void delay(const char *how) {
    if (strcmp(how, "go") == 0) {
        char ch;
        if (read(0, &ch, 1) < 0) sink = 0;
    } else {
        usleep(1000 * atoi(how));
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "single";
    say("ready\n");
    if (strcmp(mode, "threads") == 0 && argc > 3) {
        int n = atoi(argv[2]);
        delay(argv[3]);
        pthread_t t[16];
        if (n > 16) n = 16;
        for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, thread_main, NULL);
        say("went\n");
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
        return 0;
    }
    if (strcmp(mode, "dlopen") == 0 && argc > 3) {
        delay(argv[3]);
        void *h = dlopen(argv[2], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        void (*entry)(void (*)(void)) = (void (*)(void (*)(void)))dlsym(h, "lib_entry");
        if (!entry) return 1;
        say("went\n");
        entry(a);
        return 0;
    }
    if (strcmp(mode, "signal") == 0) {
        signal(SIGALRM, on_alarm);
        ualarm(20000, 0);
        for (;;) pause();
    }
    for (;;) a();
}
