/*
 * cpuprobe.h — how fast each CPU is right now, for reading a benchmark's
 * figures.
 *
 * The reference machine is a 2-vCPU VM whose vCPUs do not run at one
 * speed: for minutes at a time one of them runs the same code about 1.3
 * to 1.5 times slower than the other (bench_format pinned with taskset:
 * 64 ns a series row on one vCPU, 95 on the other, in the same minute),
 * then the two are alike again. A latency figure taken in such a phase
 * is that much slower whatever the code does. So a benchmark times a
 * fixed chain of multiplies pinned to each CPU before and after its
 * measurements and prints the times: figures from different runs are
 * compared only when their probes agree.
 */
#ifndef TALLY_BENCH_CPUPROBE_H
#define TALLY_BENCH_CPUPROBE_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define CPUPROBE_MAX 64

typedef struct cpuprobe_arg {
	int cpu;
	double ns; /* per step of the chain; 0 when the CPU could not be pinned */
} cpuprobe_arg;

static void *cpuprobe_main(void *arg)
{
	cpuprobe_arg *a = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(a->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof set, &set))
		return NULL;
	sched_yield(); /* be moved there before the clock starts */
	/* best of 5 rounds of four independent multiply-xor-add chains: they
	 * keep the core's ports busy the way the formatting and parsing
	 * loops do (a single chain waits on its multiplies and did not
	 * notice the slow phases, which look like a busy hyperthread
	 * sibling); no memory, the same instructions every time */
	double best = 1e9;
	for (int r = 0; r < 5; r++) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		volatile uint64_t sink;
		uint64_t x = 0x9e3779b97f4a7c15ULL + (uint64_t)r, y = x * 3, z = x * 5, w = x * 7;
		for (int i = 0; i < 2000000; i++) {
			x = (x ^ (x >> 29)) * 0xbf58476d1ce4e5b9ULL + (y >> 7);
			y = (y ^ (y >> 31)) * 0x94d049bb133111ebULL + (z >> 9);
			z = (z ^ (z >> 27)) * 0xbf58476d1ce4e5b9ULL + (w >> 11);
			w = (w ^ (w >> 30)) * 0x94d049bb133111ebULL + (x >> 13);
		}
		sink = x ^ y ^ z ^ w;
		(void)sink;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 +
			     (double)(t1.tv_nsec - t0.tv_nsec)) /
			    2000000.0;
		if (ns < best)
			best = ns;
	}
	a->ns = best;
	return NULL;
}

/* Prints "  cpu speed (WHEN): cpu0 0.86 ns, cpu1 1.27 ns (1.48x)" for the
 * CPUs this process may run on; the ratio is the slowest over the fastest. */
static void cpuprobe_print(const char *when)
{
	cpu_set_t mine;
	if (sched_getaffinity(0, sizeof mine, &mine))
		return;
	cpuprobe_arg a[CPUPROBE_MAX];
	int n = 0;
	for (int c = 0; c < CPUPROBE_MAX && c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &mine))
			continue;
		a[n] = (cpuprobe_arg){.cpu = c};
		pthread_t t;
		/* one at a time: two probes at once would share the machine */
		if (!pthread_create(&t, NULL, cpuprobe_main, &a[n]))
			pthread_join(t, NULL);
		n++;
	}
	double lo = 1e9, hi = 0;
	printf("  cpu speed (%s):", when);
	for (int i = 0; i < n; i++) {
		if (a[i].ns <= 0)
			continue;
		printf("%s cpu%d %.2f ns", i ? "," : "", a[i].cpu, a[i].ns);
		lo = a[i].ns < lo ? a[i].ns : lo;
		hi = a[i].ns > hi ? a[i].ns : hi;
	}
	if (hi > 0)
		printf(" (%.2fx)", hi / lo);
	printf("\n");
	fflush(stdout);
}

#endif
