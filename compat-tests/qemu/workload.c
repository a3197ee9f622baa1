/*
 * On-CPU workload for the QEMU kernel tests: spins for a fixed wall time, splitting the work
 * about 2:1 between two distinctively named functions so the test can check both that
 * psample symbolizes them and that their sample counts keep the expected order.
 *
 * Usage: workload [SECONDS [WINDOW [REPORT]]]   (default 3: longer than `record -d 2`, so the
 * profile window is fully covered by the workload whichever of the two ends first)
 *
 * With WINDOW, it writes at exit (to the file REPORT, else to stdout) how long it actually
 * executed in its first WINDOW seconds:
 *   psample-workload: window W s, ran R s, cpu C s
 * (a file, because it exits after `record -d 2` has: its stdout would land in a later step)
 * R is rounds run in the window times the fastest round. Under TCG the guest clock is the
 * host's, so while the host deschedules the vCPU the guest's clock (and the task's CPU time
 * C, which is charged from it) runs on although nothing executes and the sampling timer's
 * expiries merge into one. R is the time the workload really ran: the host test bases its
 * expected sample count on it, so a loaded host cannot fail the test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

static double clock_s(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
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

/* What executed in the first `window` seconds (see the header). */
struct window_run {
	unsigned long rounds;
	double fastest;
	double cpu;
};

__attribute__((noinline)) static void spin_for(double seconds, double window,
					       struct window_run *w)
{
	double start = now(), end = start + seconds, t = start;
	w->fastest = 1e9;
	while (t < end) {
		psample_hot_alpha(200000);
		psample_hot_beta(100000);
		double next = now();
		if (next <= start + window) {
			w->rounds++;
			if (next - t < w->fastest)
				w->fastest = next - t;
			w->cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID);
		}
		t = next;
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3.0;
	double window = argc > 2 ? atof(argv[2]) : 0.0;
	struct window_run w = { 0 };
	spin_for(seconds > 0 ? seconds : 3.0, window, &w);
	if (window <= 0 || w.rounds == 0)
		return 0;
	FILE *out = argc > 3 ? fopen(argv[3], "w") : stdout;
	if (!out)
		return 1;
	fprintf(out, "psample-workload: window %.3f s, ran %.3f s, cpu %.3f s\n", window,
		w.rounds * w.fastest, w.cpu);
	return fclose(out) ? 1 : 0;
}
