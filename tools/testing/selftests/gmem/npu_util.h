/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the GMEM reliability selftests (stress, fuzz, isolation,
 * out of memory, range policy): the simulated NPU's ioctls, the per-device sysfs files, a
 * seeded random number generator and the "back to where it started" check
 * of device and tracking memory.
 *
 * Include it after kselftest_harness.h.
 */
#ifndef GMEM_NPU_UTIL_H
#define GMEM_NPU_UTIL_H

#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>

#include "gmem_util.h"
/*
 * The NPU's interface is private to the sample driver, so it is not
 * installed with the kernel headers (as lib/test_hmm_uapi.h for hmm-tests).
 */
#include "../../../../samples/rust/gmem_npu_sim/gmem_npu_sim_uapi.h"

#define NPU_MAX		2

static const char *const npu_dev_path[NPU_MAX] = {
	"/dev/gmem_npu0", "/dev/gmem_npu1",
};

/* Run one job: 0, or the errno of the failure. */
static inline int npu_run(int fd, struct gmem_npu_job *job)
{
	return ioctl(fd, GMEM_NPU_IOC_RUN, job) ? errno : 0;
}

/* One job on @engines engines at once; *@value in and out, if not NULL. */
static inline int npu_do_on(int fd, __u32 op, const void *dst, const void *src0,
			    const void *src1, size_t len, __u64 *value,
			    unsigned int engines)
{
	struct gmem_npu_job job = {
		.op = op,
		.flags = GMEM_NPU_JOB_ENGINES(engines),
		.dst = (unsigned long)dst,
		.src0 = (unsigned long)src0,
		.src1 = (unsigned long)src1,
		.len = len,
		.value = value ? *value : 0,
	};
	int ret = npu_run(fd, &job);

	if (!ret && value)
		*value = job.value;
	return ret;
}

static inline int npu_do(int fd, __u32 op, const void *dst, const void *src0,
			 const void *src1, size_t len, __u64 *value)
{
	return npu_do_on(fd, op, dst, src0, src1, len, value, 1);
}

static inline int npu_fill(int fd, void *dst, size_t len, __u32 value)
{
	__u64 v = value;

	return npu_do(fd, GMEM_NPU_OP_FILL32, dst, NULL, NULL, len, &v);
}

static inline int npu_copy(int fd, void *dst, const void *src, size_t len)
{
	return npu_do(fd, GMEM_NPU_OP_COPY, dst, src, NULL, len, NULL);
}

static inline int npu_add(int fd, void *dst, const void *a, const void *b,
			  size_t len)
{
	return npu_do(fd, GMEM_NPU_OP_ADD32, dst, a, b, len, NULL);
}

/* SUM32 sets *sum; it starts from garbage so that a job that did not is seen. */
static inline int npu_sum(int fd, const void *src, size_t len, __u64 *sum)
{
	*sum = 0xdeadbeefdeadbeefULL;
	return npu_do(fd, GMEM_NPU_OP_SUM32, NULL, src, NULL, len, sum);
}

/* FILL32 of @len bytes at @dst with @value on @engines engines at once. */
static inline int npu_fill_on(int fd, void *dst, size_t len, __u32 value,
			      unsigned int engines)
{
	__u64 v = value;

	return npu_do_on(fd, GMEM_NPU_OP_FILL32, dst, NULL, NULL, len, &v,
			 engines);
}

/* SUM32 of @len bytes at @src on @engines engines at once. */
static inline int npu_sum_on(int fd, const void *src, size_t len, __u64 *sum,
			     unsigned int engines)
{
	*sum = 0xdeadbeefdeadbeefULL;
	return npu_do_on(fd, GMEM_NPU_OP_SUM32, NULL, src, NULL, len, sum,
			 engines);
}

/* The NPU's counters: 0, or an errno. */
static inline int npu_stats(int fd, struct gmem_npu_stats *stats)
{
	return ioctl(fd, GMEM_NPU_IOC_STATS, stats) ? errno : 0;
}

static inline int npu_attach(int fd)
{
	return ioctl(fd, GMEM_NPU_IOC_ATTACH, 0) ? errno : 0;
}

static inline int npu_get_info(int fd, struct gmem_npu_info *info)
{
	return ioctl(fd, GMEM_NPU_IOC_INFO, info) ? errno : 0;
}

/* Open NPU @i and attach the calling process to it: the fd, or -1. */
static inline int npu_open_attached(int i)
{
	int fd = open(npu_dev_path[i], O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (npu_attach(fd)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The index of the first word of [p, p + len) that is not @v, or -1. */
static inline long first_not(const void *p, size_t len, __u32 v)
{
	const __u32 *w = p;

	for (size_t i = 0; i < len / 4; i++)
		if (w[i] != v)
			return i;
	return -1;
}

/* The sum of the u32 words of [p, p + len), as SUM32 computes it. */
static inline __u64 sum32(const void *p, size_t len)
{
	const __u32 *w = p;
	__u64 sum = 0;

	for (size_t i = 0; i < len / 4; i++)
		sum += w[i];
	return sum;
}

/* A number from /sys/kernel/mm/gmem/node<hnid>/<name>, or -1. */
static inline long long gm_node_read(unsigned int hnid, const char *name)
{
	unsigned long long v;
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/%s", hnid, name);
	return read_ull(path, &v) ? -1 : (long long)v;
}

/*
 * The bytes every process pinned on a device (hmadvise(MADV_PIN)), in
 * /sys/kernel/mm/gmem/node<hnid>/: at most its limit.
 */
#define GM_NODE_PINNED	"pinned"

static inline int gm_node_write(unsigned int hnid, const char *name,
				unsigned long long v)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/%s", hnid, name);
	return write_ull(path, v);
}

/* splitmix64: small, fast, and every seed (0 included) gives a good stream. */
static inline uint64_t rnd_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform enough in [0, n) for n far below 2^64; 0 for n == 0. */
static inline uint64_t rnd_below(uint64_t *state, uint64_t n)
{
	return n ? rnd_next(state) % n : 0;
}

/* True with probability 1/n. */
static inline int rnd_one_in(uint64_t *state, uint64_t n)
{
	return rnd_below(state, n) == 0;
}

/* An unsigned number from the environment (decimal or 0x...), or @def. */
static inline unsigned long long env_ull(const char *name,
					 unsigned long long def)
{
	const char *s = getenv(name);
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return def;
	errno = 0;
	v = strtoull(s, &end, 0);
	return errno || *end ? def : v;
}

/* The seed of a randomized test: $GMEM_SEED, else from the clock. */
static inline uint64_t test_seed(void)
{
	struct timespec ts;
	uint64_t s;

	if (getenv("GMEM_SEED") && *getenv("GMEM_SEED"))
		return env_ull("GMEM_SEED", 0);
	clock_gettime(CLOCK_REALTIME, &ts);
	s = ts.tv_sec * 1000000007ULL ^ ts.tv_nsec ^ (uint64_t)getpid() << 40;
	return rnd_next(&s);
}

/*
 * Puts the device memory limit of node @hnid back to @size if a test left
 * it lowered: a test killed by its timeout (on a slow debug kernel) never
 * runs its teardown, and every later test would fail for its sake.  That
 * test has failed already; say so and go on.
 */
static inline int gm_limit_reset(unsigned int hnid, unsigned long long size)
{
	long long limit = gm_node_read(hnid, "limit");

	if (limit < 0 || (unsigned long long)limit == size)
		return 0;
	fprintf(stderr, "# node %u's limit was left at %lld by an earlier test: reset to %llu\n",
		hnid, limit, size);
	return gm_node_write(hnid, "limit", size);
}

static inline double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * What GMEM holds on behalf of all processes: device memory in use and
 * pinned on each NPU, tracked pages and GMEM address spaces.  A test that
 * leaves nothing behind ends where it started.
 */
struct gm_baseline {
	int nnpu;
	unsigned int hnid[NPU_MAX];
	long long resident[NPU_MAX];	/* bytes, from sysfs */
	long long pinned[NPU_MAX];	/* bytes, from sysfs (-1: no pins) */
	long tracked;
	long spaces;
};

/*
 * Fill in @b now.  Returns 0, or -1 if a figure cannot be read (no NPU
 * driver, no debugfs).
 *
 * The calling process's own GMEM address space lives as long as the
 * process, so it is created first (by a peer-shared mapping): it is then
 * part of the baseline, and the figures can come back to it.
 */
static inline int gm_baseline_take(struct gm_baseline *b)
{
	struct gmem_npu_info info;
	void *p = mmap_peer_shared(NULL, 4096, 0);

	if (p == MAP_FAILED)
		return -1;
	munmap(p, 4096);
	memset(b, 0, sizeof(*b));
	if (tracked_pages() < 0)
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	for (int i = 0; i < NPU_MAX; i++) {
		int fd = open(npu_dev_path[i], O_RDWR | O_CLOEXEC);

		if (fd < 0)
			break;
		if (npu_get_info(fd, &info)) {
			close(fd);
			return -1;
		}
		close(fd);
		b->hnid[i] = info.hnid;
		b->resident[i] = gm_node_read(info.hnid, "resident");
		if (b->resident[i] < 0)
			return -1;
		b->pinned[i] = gm_node_read(info.hnid, GM_NODE_PINNED);
		b->nnpu++;
	}
	b->tracked = tracked_pages();
	b->spaces = gmem_stat("address_spaces");
	return b->tracked < 0 || b->spaces < 0 ? -1 : 0;
}

/*
 * Wait up to @timeout seconds for every figure to be back at @b (a process
 * that was killed may still be tearing its address space down, and a
 * device fault may hold the last user of its mm for a moment).  Returns 0,
 * or -1 with what differs in @why.
 */
static inline int gm_baseline_wait(const struct gm_baseline *b, double timeout,
				   char *why, size_t size)
{
	double end = now_sec() + timeout;
	struct gm_baseline now;

	for (;;) {
		int same;

		if (gm_baseline_take(&now)) {
			snprintf(why, size, "cannot read the GMEM statistics");
			return -1;
		}
		same = now.tracked == b->tracked && now.spaces == b->spaces;
		for (int i = 0; i < b->nnpu; i++)
			same &= now.resident[i] == b->resident[i] &&
				now.pinned[i] == b->pinned[i];
		if (same)
			return 0;
		if (now_sec() > end) {
			snprintf(why, size,
				 "tracked pages %ld (was %ld), address spaces %ld (was %ld), npu0 resident %lld (was %lld) pinned %lld (was %lld), npu1 resident %lld (was %lld) pinned %lld (was %lld)",
				 now.tracked, b->tracked, now.spaces, b->spaces,
				 now.resident[0],
				 b->resident[0], now.pinned[0], b->pinned[0],
				 now.resident[1], b->resident[1], now.pinned[1],
				 b->pinned[1]);
			return -1;
		}
		usleep(20000);
	}
}

#define BLOCK	(2UL * 1024 * 1024)	/* what one batch moves at most */

/* A peer-shared mapping of @len bytes that starts at a 2 MiB boundary. */
static inline char *mmap_block_aligned(size_t len)
{
	char *p = mmap(NULL, len + BLOCK, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		return MAP_FAILED;
	a = (char *)(((unsigned long)p + BLOCK - 1) & ~(BLOCK - 1));
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, p + len + BLOCK - (a + len));
	return mmap_peer_shared(a, len, MAP_FIXED);
}

#endif /* GMEM_NPU_UTIL_H */
