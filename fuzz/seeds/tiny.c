/* Seed module for the symbolize/unwind fuzz targets: a few nested frames, no libc. */
__attribute__((noinline)) static long leaf(long x) { return x * 3 + 1; }
__attribute__((noinline)) static long middle(long x) { return leaf(x) + leaf(x + 1); }
__attribute__((noinline)) long outer(long x) { return middle(x) ^ middle(x >> 1); }
void _start(void) {
    volatile long r = outer(42);
    (void)r;
    __asm__ volatile("mov $60, %eax\n xor %edi, %edi\n syscall");
    for (;;) {}
}
