/*
 * On-CPU workload for the QEMU kernel tests: spins for a fixed wall time, splitting the work
 * about 2:1 between two distinctively named functions so the test can check both that
 * psample symbolizes them and that their sample counts keep the expected order.
 *
 * Usage: workload [SECONDS]   (default 3: longer than `record -d 2`, so the profile window
 * is fully covered by the workload whichever of the two ends first)
 */
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* noinline + volatile keep each function a real frame with real work at -O1. */
__attribute__((noinline)) void psample_hot_alpha(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		sink = sink * 31 + i;
}

__attribute__((noinline)) void psample_hot_beta(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		sink = sink * 17 + i;
}

__attribute__((noinline)) static void spin_for(double seconds)
{
	double end = now() + seconds;
	while (now() < end) {
		psample_hot_alpha(200000);
		psample_hot_beta(100000);
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3.0;
	spin_for(seconds > 0 ? seconds : 3.0);
	return 0;
}
