/* Runs phase_a until TRIGGER exists, then truncates its own debug file DEBUG (which the
 * profiler has mapped) and runs phase_b, in another compilation unit, for ever.
 * usage: two_phase DEBUG TRIGGER */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

void phase_b(void);
static volatile unsigned long sink;

__attribute__((noinline)) void phase_a(void) {
    for (int i = 0; i < 100000; i++) sink += i * 3;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    printf("pid=%d\n", getpid());
    fflush(stdout);
    struct stat st;
    while (stat(argv[2], &st) != 0) phase_a();
    if (truncate(argv[1], 0) != 0) {
        perror("truncate");
        return 1;
    }
    for (;;) phase_b();
}
