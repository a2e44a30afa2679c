// SPDX-License-Identifier: GPL-2.0
/*
 * Anonymous page-fault microbenchmark: mmap a private anonymous range,
 * touch every page, munmap; repeat.  Ordinary memory by default, so that
 * the cost of GMEM's hooks for processes that do not use GMEM can be
 * compared with a CONFIG_GMEM=n kernel; --peer-shared measures the
 * MAP_PEER_SHARED fault path instead.
 *
 * Prints one line: "fault_bench <kind> size_mib=N iterations=N
 * ns_per_fault=X faults_per_sec=Y" with the median of the iterations.
 * Not a test: timings are for benchmarks, never for pass/fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/gmem.h>

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	size_t size_mib = 256, page = sysconf(_SC_PAGESIZE);
	int iterations = 5, peer_shared = 0, flags;
	double ns[64];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--peer-shared")) {
			peer_shared = 1;
		} else if (!strcmp(argv[i], "--size-mib") && i + 1 < argc) {
			size_mib = strtoul(argv[++i], NULL, 0);
		} else if (!strcmp(argv[i], "--iterations") && i + 1 < argc) {
			iterations = atoi(argv[++i]);
		} else {
			fprintf(stderr,
				"usage: %s [--peer-shared] [--size-mib N] [--iterations N]\n",
				argv[0]);
			return 2;
		}
	}
	if (iterations < 1 || iterations > 64)
		iterations = 5;
	flags = MAP_PRIVATE | MAP_ANONYMOUS | (peer_shared ? MAP_PEER_SHARED : 0);

	for (int it = 0; it < iterations; it++) {
		size_t len = size_mib << 20;
		struct timespec t0, t1;
		char *p;

		p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (size_t off = 0; off < len; off += page)
			p[off] = 1;
		munmap(p, len);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ns[it] = ((t1.tv_sec - t0.tv_sec) * 1e9 +
			  (t1.tv_nsec - t0.tv_nsec)) / (len / page);
	}
	qsort(ns, iterations, sizeof(ns[0]), cmp_double);
	printf("fault_bench %s size_mib=%zu iterations=%d ns_per_fault=%.1f faults_per_sec=%.0f\n",
	       peer_shared ? "peer_shared" : "anonymous", size_mib, iterations,
	       ns[iterations / 2], 1e9 / ns[iterations / 2]);
	return 0;
}
