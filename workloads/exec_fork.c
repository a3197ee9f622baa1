/*
 * exec_fork: a target whose process tree changes while it is profiled. After printing its
 * pid it forks a child that spins in forked_child_spin() for SECONDS of CPU, spins itself
 * in before_exec_spin() for DELAY seconds of CPU, then execs the command after `--` (same pid, new
 * image). A profiler attached with -p must follow the fork (inherit) and the exec (new
 * mappings, new comm) and name frames of both images correctly.
 *
 * usage: exec_fork [-n DELAY_SECONDS (1)] [-s CHILD_SECONDS (3)] -- PROGRAM [ARGS...]
 */
#include "common.h"

#include <sys/wait.h>

#define NOINL __attribute__((noinline, noclone))

static uint64_t wl_total_ops(void) { return 0; }

static volatile uint64_t sink;

NOINL uint64_t spin_step(uint64_t x)
{
    wl_keep_frame();
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

/* Seconds of CPU this thread has used: the spins below last that long on CPU, so what a
 * profiler can sample of them does not depend on machine load. */
static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

NOINL void forked_child_spin(double seconds)
{
    double end = thread_cpu() + seconds;
    uint64_t x = 3;
    while (thread_cpu() < end)
        x = spin_step(x);
    sink = x;
}

NOINL void before_exec_spin(double seconds)
{
    double end = thread_cpu() + seconds;
    uint64_t x = 5;
    while (thread_cpu() < end)
        x = spin_step(x);
    sink = x;
}

int main(int argc, char **argv)
{
    double delay = 1, child_seconds = 3;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        if (i + 1 < argc && strcmp(argv[i], "-n") == 0)
            delay = atof(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "-s") == 0)
            child_seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: exec_fork [-n DELAY] [-s CHILD_SECONDS] -- PROGRAM [ARGS...]\n");
            return 2;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "usage: exec_fork [-n DELAY] [-s CHILD_SECONDS] -- PROGRAM [ARGS...]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Harnesses often stop reading after the pid= line: later lines (ours and the exec'd
     * program's) must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    printf("pid=%d name=exec_fork\n", (int)getpid());
    /* Give the profiler time to attach before the tree changes: with WL_GO_ON_STDIN set,
     * until a byte (or EOF) arrives on stdin, which a test sends once it sees the profiler
     * attached; otherwise one second. */
    if (getenv("WL_GO_ON_STDIN")) {
        char c;
        while (read(0, &c, 1) < 0 && errno == EINTR) {
        }
    } else {
        sleep(1);
    }
    pid_t child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        forked_child_spin(child_seconds);
        _exit(0);
    }
    printf("child=%d\n", (int)child);
    before_exec_spin(delay);
    execv(argv[i], &argv[i]);
    wl_die("execv");
}
