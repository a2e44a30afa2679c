// SPDX-License-Identifier: GPL-2.0
/*
 * Migration and fault microbenchmarks of GMEM with the simulated NPU
 * (samples/rust/gmem_npu_sim), and the memcpy bandwidth that bounds any
 * migration on the same machine.  One mode per run:
 *
 *   npu_bench memcpy SIZE_MIB CHUNK_KIB [ITERATIONS]
 *	memcpy() between two prefaulted buffers, CHUNK_KIB at a time; on
 *	x86-64 also the copy that the kernel's copy_page() makes on this CPU,
 *	which bounds what the kernel's page copies can do (under QEMU's TCG,
 *	for one, the two run at very different speeds).
 *   npu_bench prefetch SIZE_MIB CHUNK_KIB [ITERATIONS]
 *	hmadvise(MADV_PREFETCH) of CPU-written pages to the NPU (h2d) and
 *	back to host node 0 (d2h), one call per CHUNK_KIB.
 *   npu_bench fault zero|migrate SIZE_MIB [ITERATIONS]
 *	An NPU SUM32 job over pages that were never touched (zero-fill
 *	device faults) or that the CPU wrote (migrate-in device faults), with
 *	density prefetch at 51% (us_per_page; faults: how many pages faulted)
 *	and off (us_per_page_noprefetch), and the CPU writing each page of
 *	fresh anonymous memory without THP (anon_us_per_page).  The NPU's
 *	prefetch_threshold is restored at the end.
 *   npu_bench cpufault SIZE_MIB [ITERATIONS]
 *	The CPU writing each page of a buffer resident on the NPU (a fault
 *	that brings the page home), and the CPU writing each page of fresh
 *	ordinary anonymous memory, for comparison: without THP (a zero-fill
 *	fault per page, anon_us_per_page) and with THP as configured
 *	(anon_thp_us_per_page).
 *   npu_bench inplace SIZE_MIB [ITERATIONS]
 *	The CPU writes a buffer, an NPU SUM32 job reads it, the CPU reads it
 *	back: with hmadvise(MADV_ACCESSED_BY), the NPU maps the host pages in
 *	place (inplace_*), without it the pages migrate to the NPU and home
 *	again (migrate_*).  Per page: the NPU job (npu_us_per_page) and the
 *	CPU's read-back (cpu_us_per_page).  SIZE_MIB at most 32 (the NPU's
 *	aperture for host pages).
 *   npu_bench pingpong SIZE_MIB ROUNDS
 *	The CPU writes a buffer and an NPU SUM32 job reads it, ROUNDS times
 *	in turn, with thrashing control off (off_us_per_page_round: every
 *	turn moves every page there and back) and on, threshold 2
 *	(on_us_per_page_round: after two turns the pages stay home and the
 *	NPU maps them in place).  The sysfs knobs are restored at the end.
 *   npu_bench readmostly SIZE_MIB ROUNDS
 *	The CPU writes a buffer, then NPU SUM32 jobs on npu0 and npu1 read it
 *	in turn, ROUNDS jobs each: with hmadvise(MADV_READ_MOSTLY) each NPU
 *	reads its read-only copy (readmostly_us_per_page_job: the pages are
 *	copied once to each), without it every job moves the pages from the
 *	other NPU (migrate_us_per_page_job).  Needs /dev/gmem_npu1.
 *   npu_bench oversub FACTOR LIMIT_MIB [ITERATIONS]
 *	The NPU's limit lowered to LIMIT_MIB (sysfs), then NPU SUM32 jobs
 *	over a CPU-written buffer FACTOR times that size, after one pass to
 *	warm up.  The limit is restored at the end.
 *
 * Each mode prints one line "npu_bench MODE key=value ...": times are
 * medians of the iterations, bandwidths are decimal (1 GB/s = 1e9 bytes/s).
 * The data is checked and the NPU's counters must show that every page
 * moved as expected, otherwise the figures are not printed and the exit
 * status is 1.  Uses /dev/gmem_npu0, which nothing else may use meanwhile.
 * Not a test: timings are for benchmarks, never for pass/fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "gmem_util.h"
/* Private to the sample driver, so not among the installed headers. */
#include "../../../../samples/rust/gmem_npu_sim/gmem_npu_sim_uapi.h"

#define NPU_PATH	"/dev/gmem_npu0"
#define HOST_NODE	0
#define MAX_ITERATIONS	64

static size_t page_size;

static void die(const char *what)
{
	fprintf(stderr, "npu_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "npu_bench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The median of @n values (sorts them). */
static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void *map_anon(size_t len, int extra_flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

/* Word i of [p, p + len) is seed + i (u32 arithmetic). */
static void fill_words(void *p, size_t len, __u32 seed)
{
	__u32 *w = p;

	for (size_t i = 0; i < len / 4; i++)
		w[i] = seed + i;
}

/* What fill_words() leaves, summed as SUM32 sums it. */
static __u64 sum_words(size_t len, __u32 seed)
{
	__u64 sum = 0;

	for (size_t i = 0; i < len / 4; i++)
		sum += (__u32)(seed + i);
	return sum;
}

static void check_words(const void *p, size_t len, __u32 seed)
{
	const __u32 *w = p;

	for (size_t i = 0; i < len / 4; i++)
		if (w[i] != (__u32)(seed + i))
			fail("data: word %zu is %#x, expected %#x", i, w[i],
			     (__u32)(seed + i));
}

struct npu {
	int fd;
	struct gmem_npu_info info;
};

static void npu_open_path(struct npu *npu, const char *path)
{
	npu->fd = open(path, O_RDWR | O_CLOEXEC);
	if (npu->fd < 0)
		die(path);
	if (ioctl(npu->fd, GMEM_NPU_IOC_INFO, &npu->info))
		die("GMEM_NPU_IOC_INFO");
	if (ioctl(npu->fd, GMEM_NPU_IOC_ATTACH, 0))
		die("GMEM_NPU_IOC_ATTACH");
}

static void npu_open(struct npu *npu)
{
	npu_open_path(npu, NPU_PATH);
}

static void npu_stats(struct npu *npu, struct gmem_npu_stats *s)
{
	if (ioctl(npu->fd, GMEM_NPU_IOC_STATS, s))
		die("GMEM_NPU_IOC_STATS");
}

/* SUM32 over [p, p + len) on the NPU; returns the job's duration. */
static double npu_sum(struct npu *npu, const void *p, size_t len, __u64 *sum)
{
	struct gmem_npu_job job = {
		.op = GMEM_NPU_OP_SUM32,
		.src0 = (unsigned long)p,
		.len = len,
	};
	double t0 = now();

	if (ioctl(npu->fd, GMEM_NPU_IOC_RUN, &job))
		die("GMEM_NPU_IOC_RUN");
	*sum = job.value;
	return now() - t0;
}

/* hmadvise(MADV_PREFETCH) of [p, p + len) to @hnid, @chunk at a time. */
static double prefetch(int hnid, char *p, size_t len, size_t chunk)
{
	double t0 = now();

	for (size_t off = 0; off < len; off += chunk)
		if (hmadvise(hnid, (unsigned long)p + off, chunk, MADV_PREFETCH))
			die("hmadvise(MADV_PREFETCH)");
	return now() - t0;
}

static void expect(const char *what, long long got, long long want)
{
	if (got != want)
		fail("%s: %lld, expected %lld", what, got, want);
}

#ifdef __x86_64__
/*
 * Copies as the x86-64 kernel's copy_page() makes them: "rep movsq" on a CPU
 * with X86_FEATURE_REP_GOOD, otherwise a loop of 64-bit moves, 64 bytes at a
 * time (copy_page_regs).  @len is a multiple of 64.
 */
static void copy_movsq(void *dst, const void *src, size_t len)
{
	size_t words = len / 8;

	asm volatile("rep movsq"
		     : "+D" (dst), "+S" (src), "+c" (words) : : "memory");
}

static void copy_regs(void *dst, const void *src, size_t len)
{
	size_t blocks = len / 64;

	asm volatile("1:\n\t"
		     "movq 0(%1), %%rax\n\t"
		     "movq 8(%1), %%rdx\n\t"
		     "movq 16(%1), %%r8\n\t"
		     "movq 24(%1), %%r9\n\t"
		     "movq %%rax, 0(%0)\n\t"
		     "movq %%rdx, 8(%0)\n\t"
		     "movq %%r8, 16(%0)\n\t"
		     "movq %%r9, 24(%0)\n\t"
		     "movq 32(%1), %%rax\n\t"
		     "movq 40(%1), %%rdx\n\t"
		     "movq 48(%1), %%r8\n\t"
		     "movq 56(%1), %%r9\n\t"
		     "movq %%rax, 32(%0)\n\t"
		     "movq %%rdx, 40(%0)\n\t"
		     "movq %%r8, 48(%0)\n\t"
		     "movq %%r9, 56(%0)\n\t"
		     "leaq 64(%0), %0\n\t"
		     "leaq 64(%1), %1\n\t"
		     "decq %2\n\t"
		     "jnz 1b"
		     : "+r" (dst), "+r" (src), "+r" (blocks)
		     : : "rax", "rdx", "r8", "r9", "cc", "memory");
}

/* Whether the kernel says the CPU has fast "rep movs" (X86_FEATURE_REP_GOOD). */
static int rep_good(void)
{
	char line[4096];
	int found = 0;
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (!f)
		return 0;
	while (!found && fgets(line, sizeof(line), f))
		found = !strncmp(line, "flags", 5) && strstr(line, " rep_good");
	fclose(f);
	return found;
}
#endif

/* Seconds to copy [src, src + len) to dst, @chunk at a time; the median. */
static double time_copy(void (*copy)(void *, const void *, size_t),
			char *dst, const char *src, size_t len, size_t chunk,
			int iterations)
{
	double t[MAX_ITERATIONS];

	for (int it = -1; it < iterations; it++) {
		double t0 = now();

		for (size_t off = 0; off < len; off += chunk)
			copy(dst + off, src + off, chunk);
		if (it >= 0)
			t[it] = now() - t0;
	}
	if (memcmp(src, dst, len))
		fail("memcpy: the copy differs");
	return median(t, iterations);
}

static void copy_memcpy(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
}

static int bench_memcpy(size_t len, size_t chunk, int iterations)
{
	char *src = map_anon(len, 0), *dst = map_anon(len, 0);
	double t;

	memset(src, 0x5a, len);
	memset(dst, 0xa5, len);
	t = time_copy(copy_memcpy, dst, src, len, chunk, iterations);
	printf("npu_bench memcpy size_mib=%zu chunk_kib=%zu iterations=%d gbps=%.4f",
	       len >> 20, chunk >> 10, iterations, len / t / 1e9);
#ifdef __x86_64__
	memset(dst, 0xa5, len);
	t = time_copy(rep_good() ? copy_movsq : copy_regs, dst, src, len, chunk,
		      iterations);
	printf(" copy_page=%s copy_page_gbps=%.4f",
	       rep_good() ? "movsq" : "regs", len / t / 1e9);
#endif
	printf("\n");
	munmap(src, len);
	munmap(dst, len);
	return 0;
}

static int bench_prefetch(size_t len, size_t chunk, int iterations)
{
	double h2d[MAX_ITERATIONS], d2h[MAX_ITERATIONS];
	long long npages = len / page_size;
	struct gmem_npu_stats s0, s1, s2;
	struct npu npu;
	char *p;

	npu_open(&npu);
	if (npu.info.dram_size < len) {
		fprintf(stderr, "npu_bench: %zu MiB do not fit in the NPU's %llu MiB\n",
			len >> 20, (unsigned long long)npu.info.dram_size >> 20);
		return 1;
	}
	p = map_anon(len, MAP_PEER_SHARED);
	fill_words(p, len, 0x1234);
	/* One round trip first, as hmm-tests' benchmark does. */
	for (int it = -1; it < iterations; it++) {
		npu_stats(&npu, &s0);
		h2d[it < 0 ? 0 : it] = prefetch(npu.info.hnid, p, len, chunk);
		npu_stats(&npu, &s1);
		d2h[it < 0 ? 0 : it] = prefetch(HOST_NODE, p, len, chunk);
		npu_stats(&npu, &s2);
		expect("pages moved to the NPU",
		       s1.migrations_to_dev - s0.migrations_to_dev, npages);
		expect("pages moved home",
		       s2.migrations_to_host - s1.migrations_to_host, npages);
	}
	check_words(p, len, 0x1234);
	munmap(p, len);
	printf("npu_bench prefetch size_mib=%zu chunk_kib=%zu iterations=%d",
	       len >> 20, chunk >> 10, iterations);
	printf(" h2d_gbps=%.4f d2h_gbps=%.4f\n",
	       len / median(h2d, iterations) / 1e9,
	       len / median(d2h, iterations) / 1e9);
	return 0;
}

/* The NPU's prefetch_threshold before bench_fault() changed it, put back at exit. */
static char threshold_path[96];
static unsigned long long threshold_saved;

static void restore_threshold(void)
{
	if (write_ull(threshold_path, threshold_saved))
		fprintf(stderr, "npu_bench: cannot restore %s\n", threshold_path);
}

/*
 * One SUM32 job over fresh pages (zero-fill faults, or migrate-in faults of
 * CPU-written pages) with the NPU's prefetch threshold at @threshold; checks
 * that every page came exactly once, faulting or prefetched.  Returns the
 * job's duration and the pages that faulted in *@faults.
 */
static double fault_job(struct npu *npu, int migrate, size_t len,
			unsigned long long threshold, long long *faults)
{
	long long npages = len / page_size;
	struct gmem_npu_stats s0, s1;
	__u64 sum, want = migrate ? sum_words(len, 0x4321) : 0;
	char *p = map_anon(len, MAP_PEER_SHARED);
	double t;

	if (write_ull(threshold_path, threshold))
		die(threshold_path);
	if (migrate)
		fill_words(p, len, 0x4321);
	npu_stats(npu, &s0);
	t = npu_sum(npu, p, len, &sum);
	npu_stats(npu, &s1);
	expect("job result", sum, want);
	*faults = s1.faults - s0.faults;
	expect("pages that faulted or came along",
	       *faults + s1.prefetched_pages - s0.prefetched_pages, npages);
	if (!threshold)
		expect("device faults without prefetch", *faults, npages);
	expect(migrate ? "pages migrated in" : "pages zero-filled",
	       migrate ? s1.migrations_to_dev - s0.migrations_to_dev :
			 s1.zero_fills - s0.zero_fills, npages);
	/* The same job on the same pages, now on the NPU. */
	npu_sum(npu, p, len, &sum);
	npu_stats(npu, &s0);
	expect("job result", sum, want);
	expect("device faults", s0.faults - s1.faults, 0);
	munmap(p, len);
	return t;
}

/* The CPU writes one byte of each page of [p, p + len). */
static double cpu_touch(char *p, size_t len, char value);

static int bench_fault(int migrate, size_t len, int iterations)
{
	double ton[MAX_ITERATIONS], toff[MAX_ITERATIONS], ta[MAX_ITERATIONS];
	double fon[MAX_ITERATIONS];
	long long npages = len / page_size, faults;
	struct npu npu;

	npu_open(&npu);
	if (!(npu.info.flags & GMEM_NPU_INFO_FAULTABLE)) {
		fprintf(stderr, "npu_bench: the NPU does not fault\n");
		return 1;
	}
	snprintf(threshold_path, sizeof(threshold_path),
		 "/sys/kernel/mm/gmem/node%u/prefetch_threshold", npu.info.hnid);
	if (read_ull(threshold_path, &threshold_saved))
		die(threshold_path);
	atexit(restore_threshold);
	for (int it = -1; it < iterations; it++) {
		int i = it < 0 ? 0 : it;
		char *q;

		ton[i] = fault_job(&npu, migrate, len, 51, &faults);
		fon[i] = faults;
		toff[i] = fault_job(&npu, migrate, len, 0, &faults);
		/* A fresh anonymous 4 KiB fault per page, for comparison. */
		q = map_anon(len, 0);
		if (madvise(q, len, MADV_NOHUGEPAGE))
			die("madvise(MADV_NOHUGEPAGE)");
		ta[i] = cpu_touch(q, len, 1);
		munmap(q, len);
	}
	printf("npu_bench fault kind=%s size_mib=%zu iterations=%d pages=%lld",
	       migrate ? "migrate" : "zero", len >> 20, iterations, npages);
	printf(" us_per_page=%.3f faults=%.0f us_per_page_noprefetch=%.3f",
	       median(ton, iterations) * 1e6 / npages, median(fon, iterations),
	       median(toff, iterations) * 1e6 / npages);
	printf(" anon_us_per_page=%.3f\n", median(ta, iterations) * 1e6 / npages);
	return 0;
}

/* The CPU writes one byte of each page of [p, p + len). */
static double cpu_touch(char *p, size_t len, char value)
{
	double t0 = now();

	for (size_t off = 0; off < len; off += page_size)
		p[off] = value;
	return now() - t0;
}

static int bench_cpufault(size_t len, int iterations)
{
	double tb[MAX_ITERATIONS], ta[MAX_ITERATIONS], th[MAX_ITERATIONS];
	long long npages = len / page_size;
	struct gmem_npu_stats s0, s1;
	struct npu npu;

	npu_open(&npu);
	for (int it = -1; it < iterations; it++) {
		char *p = map_anon(len, MAP_PEER_SHARED), *q;
		int i = it < 0 ? 0 : it;

		fill_words(p, len, 0x5678);
		prefetch(npu.info.hnid, p, len, len);
		npu_stats(&npu, &s0);
		tb[i] = cpu_touch(p, len, 0);
		npu_stats(&npu, &s1);
		expect("pages moved home",
		       s1.migrations_to_host - s0.migrations_to_host, npages);
		/* Put back the words written into, then check every word. */
		for (size_t off = 0; off < len; off += page_size)
			((__u32 *)p)[off / 4] = 0x5678 + off / 4;
		check_words(p, len, 0x5678);
		munmap(p, len);

		/*
		 * Fresh anonymous memory: one fault per 4 KiB page, as
		 * above (peer-shared ranges get no THP), and with THP as
		 * the kernel is configured, for reference.
		 */
		q = map_anon(len, 0);
		if (madvise(q, len, MADV_NOHUGEPAGE))
			die("madvise(MADV_NOHUGEPAGE)");
		ta[i] = cpu_touch(q, len, 1);
		munmap(q, len);
		q = map_anon(len, 0);
		th[i] = cpu_touch(q, len, 1);
		munmap(q, len);
	}
	printf("npu_bench cpufault size_mib=%zu iterations=%d pages=%lld",
	       len >> 20, iterations, npages);
	printf(" us_per_page=%.3f anon_us_per_page=%.3f anon_thp_us_per_page=%.3f\n",
	       median(tb, iterations) * 1e6 / npages,
	       median(ta, iterations) * 1e6 / npages,
	       median(th, iterations) * 1e6 / npages);
	return 0;
}

/* The NPU's limit before bench_oversub() lowered it, put back at exit. */
static char limit_path[96];
static unsigned long long limit_saved;

static void restore_limit(void)
{
	if (write_ull(limit_path, limit_saved))
		fprintf(stderr, "npu_bench: cannot restore %s\n", limit_path);
}

static int bench_oversub(int factor, size_t limit, int iterations)
{
	double t[MAX_ITERATIONS], ev[MAX_ITERATIONS];
	size_t len = factor * limit;
	struct gmem_npu_stats s0, s1;
	__u64 sum, want;
	struct npu npu;
	char *p;

	npu_open(&npu);
	if (!(npu.info.flags & GMEM_NPU_INFO_FAULTABLE)) {
		fprintf(stderr, "npu_bench: the NPU does not fault\n");
		return 1;
	}
	snprintf(limit_path, sizeof(limit_path),
		 "/sys/kernel/mm/gmem/node%u/limit", npu.info.hnid);
	if (read_ull(limit_path, &limit_saved))
		die(limit_path);
	atexit(restore_limit);
	if (write_ull(limit_path, limit))
		die(limit_path);
	p = map_anon(len, MAP_PEER_SHARED);
	fill_words(p, len, 0x9abc);
	want = sum_words(len, 0x9abc);
	/* The first pass brings every page in: it warms up. */
	for (int it = -1; it < iterations; it++) {
		int i = it < 0 ? 0 : it;

		npu_stats(&npu, &s0);
		t[i] = npu_sum(&npu, p, len, &sum);
		npu_stats(&npu, &s1);
		expect("job result", sum, want);
		ev[i] = s1.evictions - s0.evictions;
	}
	check_words(p, len, 0x9abc);
	munmap(p, len);
	printf("npu_bench oversub factor=%d limit_mib=%zu size_mib=%zu iterations=%d",
	       factor, limit >> 20, len >> 20, iterations);
	printf(" gbps=%.4f evictions_per_pass=%.0f\n",
	       len / median(t, iterations) / 1e9, median(ev, iterations));
	return 0;
}

/*
 * One round of the in-place comparison (see the top): the NPU job's time
 * in *@tnpu, the CPU's read-back in *@tcpu.
 */
static void inplace_round(struct npu *npu, int in_place, size_t len,
			  double *tnpu, double *tcpu)
{
	long long npages = len / page_size, moved = in_place ? 0 : npages;
	struct gmem_npu_stats s0, s1;
	__u64 sum, want = sum_words(len, 0x5151);
	char *p = map_anon(len, MAP_PEER_SHARED);
	double t0;

	fill_words(p, len, 0x5151);
	if (in_place &&
	    hmadvise(npu->info.hnid, (unsigned long)p, len, MADV_ACCESSED_BY))
		die("hmadvise(MADV_ACCESSED_BY)");
	npu_stats(npu, &s0);
	*tnpu = npu_sum(npu, p, len, &sum);
	npu_stats(npu, &s1);
	expect("job result", sum, want);
	expect("pages migrated in", s1.migrations_to_dev - s0.migrations_to_dev,
	       moved);
	t0 = now();
	check_words(p, len, 0x5151);
	*tcpu = now() - t0;
	npu_stats(npu, &s0);
	expect("pages migrated home",
	       s0.migrations_to_host - s1.migrations_to_host, moved);
	munmap(p, len);
}

static int bench_inplace(size_t len, int iterations)
{
	double in_npu[MAX_ITERATIONS], in_cpu[MAX_ITERATIONS];
	double mig_npu[MAX_ITERATIONS], mig_cpu[MAX_ITERATIONS];
	double in_total[MAX_ITERATIONS], mig_total[MAX_ITERATIONS];
	long long npages = len / page_size;
	struct npu npu;

	npu_open(&npu);
	if (!(npu.info.flags & GMEM_NPU_INFO_FAULTABLE)) {
		fprintf(stderr, "npu_bench: the NPU does not fault\n");
		return 1;
	}
	for (int it = -1; it < iterations; it++) {
		int i = it < 0 ? 0 : it;

		inplace_round(&npu, 1, len, &in_npu[i], &in_cpu[i]);
		inplace_round(&npu, 0, len, &mig_npu[i], &mig_cpu[i]);
		in_total[i] = in_npu[i] + in_cpu[i];
		mig_total[i] = mig_npu[i] + mig_cpu[i];
	}
	printf("npu_bench inplace size_mib=%zu iterations=%d pages=%lld",
	       len >> 20, iterations, npages);
	printf(" inplace_npu_us_per_page=%.3f inplace_cpu_us_per_page=%.3f",
	       median(in_npu, iterations) * 1e6 / npages,
	       median(in_cpu, iterations) * 1e6 / npages);
	printf(" migrate_npu_us_per_page=%.3f migrate_cpu_us_per_page=%.3f",
	       median(mig_npu, iterations) * 1e6 / npages,
	       median(mig_cpu, iterations) * 1e6 / npages);
	printf(" inplace_us_per_page=%.3f migrate_us_per_page=%.3f\n",
	       median(in_total, iterations) * 1e6 / npages,
	       median(mig_total, iterations) * 1e6 / npages);
	return 0;
}

#define THRASHING "/sys/kernel/mm/gmem/thrashing/"

static unsigned long long thrashing_saved[2];

static void restore_thrashing(void)
{
	write_ull(THRASHING "threshold", thrashing_saved[0]);
	write_ull(THRASHING "window_ms", thrashing_saved[1]);
}

/* @rounds turns of CPU writes and NPU sums; the time of all of them. */
static double ping_pong(struct npu *npu, size_t len, int rounds,
			unsigned long long threshold, long long *moved)
{
	struct gmem_npu_stats s0, s1;
	char *p = map_anon(len, MAP_PEER_SHARED);
	double t0;
	__u64 sum;

	if (write_ull(THRASHING "threshold", threshold))
		die(THRASHING "threshold");
	npu_stats(npu, &s0);
	t0 = now();
	for (int r = 0; r < rounds; r++) {
		fill_words(p, len, 0x600d + r);
		npu_sum(npu, p, len, &sum);
		expect("job result", sum, sum_words(len, 0x600d + r));
	}
	t0 = now() - t0;
	npu_stats(npu, &s1);
	*moved = s1.migrations_to_dev - s0.migrations_to_dev;
	munmap(p, len);
	return t0;
}

static int bench_pingpong(size_t len, int rounds)
{
	long long npages = len / page_size, off_moved, on_moved;
	double off, on;
	struct npu npu;

	npu_open(&npu);
	if (read_ull(THRASHING "threshold", &thrashing_saved[0]) ||
	    read_ull(THRASHING "window_ms", &thrashing_saved[1]))
		die(THRASHING);
	atexit(restore_thrashing);
	if (write_ull(THRASHING "window_ms", 3600000))
		die(THRASHING "window_ms");
	off = ping_pong(&npu, len, rounds, 0, &off_moved);
	expect("pages moved to the NPU, control off", off_moved,
	       rounds * npages);
	on = ping_pong(&npu, len, rounds, 2, &on_moved);
	if (on_moved >= off_moved)
		fail("thrashing control on moved %lld pages, off %lld",
		     on_moved, off_moved);
	printf("npu_bench pingpong size_mib=%zu rounds=%d pages=%lld", len >> 20,
	       rounds, npages);
	printf(" off_us_per_page_round=%.3f off_moved=%lld",
	       off * 1e6 / npages / rounds, off_moved);
	printf(" on_us_per_page_round=%.3f on_moved=%lld\n",
	       on * 1e6 / npages / rounds, on_moved);
	return 0;
}

/*
 * @rounds SUM32 jobs on each of @a and @b in turn over a CPU-written
 * buffer, read-mostly or not; the time of all of them, and the pages
 * copied or moved to either NPU in *@moved.
 */
static double read_turns(struct npu *a, struct npu *b, size_t len,
			 int rounds, int read_mostly, long long *moved)
{
	struct gmem_npu_stats a0, a1, b0, b1;
	__u64 sum, want = sum_words(len, 0x7eed);
	char *p = map_anon(len, MAP_PEER_SHARED);
	double t0;

	fill_words(p, len, 0x7eed);
	if (read_mostly &&
	    hmadvise(GM_NODE_ALL, (unsigned long)p, len, MADV_READ_MOSTLY))
		die("hmadvise(MADV_READ_MOSTLY)");
	npu_stats(a, &a0);
	npu_stats(b, &b0);
	t0 = now();
	for (int r = 0; r < rounds; r++) {
		npu_sum(a, p, len, &sum);
		expect("job result", sum, want);
		npu_sum(b, p, len, &sum);
		expect("job result", sum, want);
	}
	t0 = now() - t0;
	npu_stats(a, &a1);
	npu_stats(b, &b1);
	*moved = a1.migrations_to_dev - a0.migrations_to_dev +
		 b1.migrations_to_dev - b0.migrations_to_dev;
	check_words(p, len, 0x7eed);
	munmap(p, len);
	return t0;
}

static int bench_readmostly(size_t len, int rounds)
{
	long long npages = len / page_size, copied, moved;
	struct npu a, b;
	double dup, mig;

	npu_open(&a);
	npu_open_path(&b, "/dev/gmem_npu1");
	/* One warm-up turn each way. */
	read_turns(&a, &b, len, 1, 1, &copied);
	read_turns(&a, &b, len, 1, 0, &moved);
	dup = read_turns(&a, &b, len, rounds, 1, &copied);
	expect("pages copied, read-mostly", copied, 2 * npages);
	mig = read_turns(&a, &b, len, rounds, 0, &moved);
	expect("pages moved, without the advice", moved, 2 * rounds * npages);
	printf("npu_bench readmostly size_mib=%zu rounds=%d pages=%lld",
	       len >> 20, rounds, npages);
	printf(" readmostly_us_per_page_job=%.3f readmostly_copied=%lld",
	       dup * 1e6 / npages / (2 * rounds), copied);
	printf(" migrate_us_per_page_job=%.3f migrate_moved=%lld\n",
	       mig * 1e6 / npages / (2 * rounds), moved);
	return 0;
}

static void bad_args(void)
{
	fprintf(stderr,
		"usage: npu_bench memcpy SIZE_MIB CHUNK_KIB [ITERATIONS]\n"
		"       npu_bench prefetch SIZE_MIB CHUNK_KIB [ITERATIONS]\n"
		"       npu_bench fault zero|migrate SIZE_MIB [ITERATIONS]\n"
		"       npu_bench cpufault SIZE_MIB [ITERATIONS]\n"
		"       npu_bench inplace SIZE_MIB [ITERATIONS]\n"
		"       npu_bench pingpong SIZE_MIB ROUNDS\n"
		"       npu_bench readmostly SIZE_MIB ROUNDS\n"
		"       npu_bench oversub FACTOR LIMIT_MIB [ITERATIONS]\n");
	exit(2);
}

static unsigned long arg(int argc, char **argv, int i, unsigned long dflt)
{
	char *end;
	unsigned long v;

	if (i >= argc)
		return dflt;
	v = strtoul(argv[i], &end, 0);
	if (*end || end == argv[i])
		bad_args();
	return v;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	size_t size, chunk;
	int iterations;

	page_size = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "memcpy") || !strcmp(mode, "prefetch")) {
		size = arg(argc, argv, 2, 0) << 20;
		chunk = arg(argc, argv, 3, 0) << 10;
		iterations = arg(argc, argv, 4, 5);
		if (!size || !chunk || chunk % page_size || size % chunk ||
		    iterations < 1 || iterations > MAX_ITERATIONS || argc > 5)
			bad_args();
		if (!strcmp(mode, "memcpy"))
			return bench_memcpy(size, chunk, iterations);
		return bench_prefetch(size, chunk, iterations);
	}
	if (!strcmp(mode, "fault")) {
		int migrate = argc > 2 && !strcmp(argv[2], "migrate");

		if (argc < 4 || argc > 5 ||
		    (!migrate && strcmp(argv[2], "zero")))
			bad_args();
		size = arg(argc, argv, 3, 0) << 20;
		iterations = arg(argc, argv, 4, 5);
		if (!size || iterations < 1 || iterations > MAX_ITERATIONS)
			bad_args();
		return bench_fault(migrate, size, iterations);
	}
	if (!strcmp(mode, "cpufault")) {
		size = arg(argc, argv, 2, 0) << 20;
		iterations = arg(argc, argv, 3, 5);
		if (!size || iterations < 1 || iterations > MAX_ITERATIONS ||
		    argc > 4)
			bad_args();
		return bench_cpufault(size, iterations);
	}
	if (!strcmp(mode, "inplace")) {
		size = arg(argc, argv, 2, 0) << 20;
		iterations = arg(argc, argv, 3, 5);
		if (!size || size > (32UL << 20) || iterations < 1 ||
		    iterations > MAX_ITERATIONS || argc > 4)
			bad_args();
		return bench_inplace(size, iterations);
	}
	if (!strcmp(mode, "pingpong")) {
		int rounds = arg(argc, argv, 3, 0);

		size = arg(argc, argv, 2, 0) << 20;
		if (!size || size > (32UL << 20) || rounds < 3 || argc != 4)
			bad_args();
		return bench_pingpong(size, rounds);
	}
	if (!strcmp(mode, "readmostly")) {
		int rounds = arg(argc, argv, 3, 0);

		size = arg(argc, argv, 2, 0) << 20;
		if (!size || rounds < 1 || argc != 4)
			bad_args();
		return bench_readmostly(size, rounds);
	}
	if (!strcmp(mode, "oversub")) {
		int factor = arg(argc, argv, 2, 0);

		size = arg(argc, argv, 3, 0) << 20;
		iterations = arg(argc, argv, 4, 3);
		if (factor < 1 || !size || iterations < 1 ||
		    iterations > MAX_ITERATIONS || argc > 5)
			bad_args();
		return bench_oversub(factor, size, iterations);
	}
	bad_args();
	return 2;
}
