/* dlopen'ed by prog.c: its frames must unwind although it was mapped after attach. */
volatile unsigned long lib_sink;

__attribute__((noinline, noclone)) void lib_work(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) lib_sink += i * 3;
}
__attribute__((noinline, noclone)) void lib_hot(void) { lib_work(5000); }

void lib_entry(void (*callback)(void)) {
    for (;;) {
        lib_hot();
        callback();
    }
}
