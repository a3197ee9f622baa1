static volatile unsigned long sink_b;

__attribute__((noinline)) void phase_b(void) {
    for (int i = 0; i < 100000; i++) sink_b += i * 5;
}
