/*
 * Off-CPU workload for the QEMU kernel tests: a loop that blocks in two distinctively named
 * functions, one in nanosleep and one reading a pipe that a child process writes every 20 ms.
 *
 * The blocking system calls are issued with inline `syscall` instructions inside the named
 * functions, so the user-space instruction pointer of every off-CPU sample lies in
 * psample_nap / psample_wait_pipe themselves. That keeps the test about psample (kernel
 * interface, symbolization) rather than about whether the static libc's syscall wrappers
 * happen to keep frame pointers.
 *
 * Usage: sleep_workload [SECONDS]   (default 3)
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline __attribute__((always_inline)) long raw_syscall3(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void psample_nap(long ms)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = ms * 1000000L };
	raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

__attribute__((noinline)) long psample_wait_pipe(int fd)
{
	char byte;
	return raw_syscall3(SYS_read, fd, (long)&byte, 1);
}

__attribute__((noinline)) static void pipe_writer(int fd, double seconds)
{
	double end = now() + seconds;
	while (now() < end) {
		psample_nap(20);
		if (write(fd, "x", 1) != 1)
			break;
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3.0;
	int fds[2];
	if (seconds <= 0)
		seconds = 3.0;
	if (pipe(fds) != 0)
		return 1;
	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		close(fds[0]);
		pipe_writer(fds[1], seconds);
		_exit(0);
	}
	close(fds[1]);
	/* Each round: ~10 ms asleep, then ~10 ms waiting for the writer's next byte. */
	for (;;) {
		psample_nap(10);
		if (psample_wait_pipe(fds[0]) <= 0)
			break; /* writer finished: EOF */
	}
	waitpid(child, NULL, 0);
	return 0;
}
