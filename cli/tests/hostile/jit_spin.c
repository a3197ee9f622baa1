/* A JIT-like target: copies a tiny function into anonymous executable memory at a fixed
 * address (so a process that later gets the same PID runs code at the same address) and
 * spins in it. Prints "pid=PID code=ADDR" when running. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CODE_ADDR ((void *)0x7e0000000000UL)

int main(void) {
    /* push %rbp; mov %rsp,%rbp; 1: jmp 1b */
    static const unsigned char spin[] = {0x55, 0x48, 0x89, 0xe5, 0xeb, 0xfe};
    unsigned char *code = mmap(CODE_ADDR, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(code + 0x100, spin, sizeof spin);
    printf("pid=%d code=%p\n", getpid(), (void *)(code + 0x100));
    fflush(stdout);
    ((void (*)(void))(code + 0x100))();
    return 0;
}
