// SPDX-License-Identifier: GPL-2.0
/*
 * The GMEM simulated NPU (samples/rust/gmem_npu_sim): the CPU and two NPUs
 * share the virtual addresses of MAP_PEER_SHARED memory, and GMEM moves each
 * page to whichever side touches it.  Every test checks the data, the errno
 * and the NPUs' counters.
 *
 * The tests pass with faultable NPUs and with NPUs whose jobs are prefaulted
 * (gmem_npu_sim.faultable=0): the counters are checked exactly only where
 * both modes agree (zero fills, migrations, resident pages).
 *
 * Counters are per NPU and global: nothing else may use the NPUs while this
 * runs.
 */
#include <linux/mman.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define NPAGES		64	/* pages of most test buffers */
#define NPU_PAGE_SIZE	4096

/* Pages of the NPU's DRAM in use now, or -1. */
static long long npu_resident(int fd)
{
	struct gmem_npu_stats stats;

	return npu_stats(fd, &stats) ? -1 : (long long)stats.resident_pages;
}

/* How the counters of an NPU moved since a gmem_npu_stats was taken. */
struct npu_delta {
	long long faults;
	long long zero_fills;
	long long to_dev;	/* migrations_to_dev */
	long long to_host;	/* migrations_to_host */
	long long tlb_invalidations;
	long long resident;	/* resident_pages */
};

static int npu_delta(int fd, const struct gmem_npu_stats *before,
		     struct npu_delta *d)
{
	struct gmem_npu_stats now;

	if (npu_stats(fd, &now))
		return errno;
	d->faults = now.faults - before->faults;
	d->zero_fills = now.zero_fills - before->zero_fills;
	d->to_dev = now.migrations_to_dev - before->migrations_to_dev;
	d->to_host = now.migrations_to_host - before->migrations_to_host;
	d->tlb_invalidations = now.tlb_invalidations - before->tlb_invalidations;
	d->resident = now.resident_pages - before->resident_pages;
	return 0;
}

/* Word i of [p, p + len) is i * mul + add (u32 arithmetic). */
static void fill_words(void *p, size_t len, __u32 mul, __u32 add)
{
	__u32 *w = p;

	for (size_t i = 0; i < len / 4; i++)
		w[i] = i * mul + add;
}

/* The index of the first word that fill_words() would not have written, or -1. */
static long check_words(const void *p, size_t len, __u32 mul, __u32 add)
{
	const __u32 *w = p;

	for (size_t i = 0; i < len / 4; i++)
		if (w[i] != (__u32)(i * mul + add))
			return i;
	return -1;
}

/* What SUM32 returns for what fill_words() writes. */
static __u64 sum_words(size_t len, __u32 mul, __u32 add)
{
	__u64 sum = 0;

	for (size_t i = 0; i < len / 4; i++)
		sum += (__u32)(i * mul + add);
	return sum;
}

static __u64 sum_of(const void *p, size_t len)
{
	const __u32 *w = p;
	__u64 sum = 0;

	for (size_t i = 0; i < len / 4; i++)
		sum += w[i];
	return sum;
}

/* 1 + the highest online host NUMA node, or -1. */
static int host_nodes(void)
{
	char buf[256], *s, *end;
	long n, max = -1;
	FILE *f;

	f = fopen("/sys/devices/system/node/online", "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	for (s = buf; *s; s = end) {
		n = strtol(s, &end, 10);
		if (end == s) {
			end = s + 1;
			continue;
		}
		if (n > max)
			max = n;
	}
	return max + 1;
}

/* A kernel parameter's value is false (0, n, N, off, false)? */
static int param_false(const char *v)
{
	return *v == '0' || *v == 'n' || *v == 'N' || *v == 'f' ||
	       !strncmp(v, "off", 3);
}

/*
 * Whether gmem_npu_sim.faultable is on: from sysfs if the driver shows its
 * parameter there, else from the kernel command line (default on).
 */
static int expect_faultable(void)
{
	static const char param[] = "gmem_npu_sim.faultable=";
	char buf[4096], *p;
	FILE *f;

	f = fopen("/sys/module/gmem_npu_sim/parameters/faultable", "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = '\0';
		fclose(f);
		return !param_false(buf);
	}
	f = fopen("/proc/cmdline", "r");
	if (!f)
		return 1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	p = strstr(buf, param);
	return !p || !param_false(p + sizeof(param) - 1);
}

FIXTURE(npu)
{
	size_t page;
	size_t len;		/* of the test buffers: NPAGES pages */
	long long npages;	/* NPAGES, signed like the counter deltas */
	int fd[2];		/* /dev/gmem_npu0, /dev/gmem_npu1 (-1: none) */
	struct gmem_npu_info info[2];
	struct gmem_npu_stats start[2];	/* when the test started */
	long long threshold[2];	/* prefetch_threshold, restored at the end */
	int faultable;
};

FIXTURE_SETUP(npu)
{
	self->page = sysconf(_SC_PAGESIZE);
	self->len = NPAGES * self->page;
	self->npages = NPAGES;
	self->fd[0] = -1;
	self->fd[1] = -1;
	self->threshold[0] = -1;
	self->threshold[1] = -1;
	if (access(npu_dev_path[0], F_OK))
		SKIP(return, "no %s (gmem_npu_sim not loaded, or no ivshmem device)",
		     npu_dev_path[0]);
	for (int i = 0; i < 2; i++) {
		self->fd[i] = open(npu_dev_path[i], O_RDWR | O_CLOEXEC);
		if (i == 1 && self->fd[i] < 0 && errno == ENOENT)
			break;
		ASSERT_LE(0, self->fd[i])
			TH_LOG("open %s: %s", npu_dev_path[i], strerror(errno));
		ASSERT_EQ(0, ioctl(self->fd[i], GMEM_NPU_IOC_INFO, &self->info[i]));
		ASSERT_EQ(0, gm_limit_reset(self->info[i].hnid,
					    self->info[i].dram_size));
		ASSERT_EQ(0, npu_stats(self->fd[i], &self->start[i]));
		/*
		 * The tests count pages moved one by one, and their buffers
		 * are often one VMA: density prefetch, which would take pages
		 * of a neighbour along, is off but where a test turns it on.
		 */
		self->threshold[i] = gm_node_read(self->info[i].hnid,
						  "prefetch_threshold");
		ASSERT_LE(0, self->threshold[i]);
		ASSERT_EQ(0, gm_node_write(self->info[i].hnid,
					   "prefetch_threshold", 0));
	}
	self->faultable = !!(self->info[0].flags & GMEM_NPU_INFO_FAULTABLE);
}

FIXTURE_TEARDOWN(npu)
{
	for (int i = 0; i < 2; i++) {
		if (self->threshold[i] >= 0)
			gm_node_write(self->info[i].hnid, "prefetch_threshold",
				      self->threshold[i]);
		if (self->fd[i] >= 0)
			close(self->fd[i]);
	}
}

/* Both NPUs' resident pages are back where they were at @start. */
static void expect_resident(struct __test_metadata *_metadata, const int fd[2],
			    const struct gmem_npu_stats start[2])
{
	for (int i = 0; i < 2; i++) {
		if (fd[i] < 0)
			continue;
		ASSERT_EQ((long long)start[i].resident_pages, npu_resident(fd[i]))
			TH_LOG("npu%d", i);
	}
}

/* The NPUs are device nodes of their own, with 4 KiB pages. */
TEST_F(npu, info)
{
	int nodes = host_nodes();
	struct gmem_npu_info again;

	ASSERT_LT(0, nodes);
	for (int i = 0; i < 2; i++) {
		struct gmem_npu_info *info = &self->info[i];

		if (self->fd[i] < 0)
			continue;
		TH_LOG("npu%d: hnid %u, %llu MiB, flags %#x", i, info->hnid,
		       (unsigned long long)info->dram_size >> 20, info->flags);
		/* Not a host NUMA node. */
		ASSERT_LE(nodes, (long long)info->hnid);
		ASSERT_EQ(NPU_PAGE_SIZE, info->page_size);
		ASSERT_LT(0, info->dram_size);
		ASSERT_EQ(0, info->dram_size % info->page_size);
		ASSERT_EQ(info->dram_size / info->page_size, self->start[i].dram_pages);
		ASSERT_LE(self->start[i].resident_pages, self->start[i].dram_pages);
		ASSERT_EQ(0, info->flags & ~GMEM_NPU_INFO_FAULTABLE);
		ASSERT_EQ(expect_faultable(), !!(info->flags & GMEM_NPU_INFO_FAULTABLE));
		ASSERT_EQ(0, info->reserved);
	}
	if (self->fd[1] >= 0)
		ASSERT_NE(self->info[0].hnid, self->info[1].hnid);
	/* Attaching changes nothing of it. */
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	ASSERT_EQ(0, ioctl(self->fd[0], GMEM_NPU_IOC_INFO, &again));
	ASSERT_EQ(0, memcmp(&again, &self->info[0], sizeof(again)));
}

/* The NPU reads what the CPU wrote; the pages move to it and back. */
TEST_F(npu, cpu_writes_npu_sums)
{
	size_t len = 1 << 20;
	long long pages = len / self->page;
	struct gmem_npu_stats s;
	struct npu_delta d;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, len, 2654435761u, 12345);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, len, &sum));
	ASSERT_EQ(sum_words(len, 2654435761u, 12345), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_LE(pages, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(pages, d.resident);
	ASSERT_LT(0, d.faults);
	/* The CPU reads them back: they come home intact. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(-1, check_words(p, len, 2654435761u, 12345));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(pages, d.to_host);
	ASSERT_EQ(-pages, d.resident);
	ASSERT_EQ(0, munmap(p, len));
	expect_resident(_metadata, self->fd, self->start);
}

/* The CPU reads what the NPU wrote (FILL32, ADD32 with u32 wrap-around). */
TEST_F(npu, npu_fill_and_add)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *a, *b, *c;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	a = mmap_peer_shared(NULL, self->len, 0);
	b = mmap_peer_shared(NULL, self->len, 0);
	c = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, a);
	ASSERT_NE(MAP_FAILED, b);
	ASSERT_NE(MAP_FAILED, c);

	/* Untouched pages are zero-filled in NPU DRAM, nothing is copied. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], a, self->len, 0x12345678));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(n, d.resident);

	/* c = a + b: b moves to the NPU, c is new there. */
	fill_words(b, self->len, 1, 0xf0000000);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_add(self->fd[0], c, a, b, self->len));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(n, d.to_dev);
	ASSERT_EQ(2 * n, d.resident);

	/* The CPU reads a and c: they come home. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(-1, check_words(c, self->len, 1, 0x12345678 + 0xf0000000));
	ASSERT_EQ(-1, check_words(a, self->len, 0, 0x12345678));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(2 * n, d.to_host);
	ASSERT_EQ(-2 * n, d.resident);
	ASSERT_EQ(0, d.zero_fills);
	/* b was only read by the NPU: intact. */
	ASSERT_EQ(-1, check_words(b, self->len, 1, 0xf0000000));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(3 * n, d.to_host);

	ASSERT_EQ(0, munmap(a, self->len));
	ASSERT_EQ(0, munmap(b, self->len));
	ASSERT_EQ(0, munmap(c, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* Memory nobody wrote reads as zeros on both sides, and copies as zeros. */
TEST_F(npu, untouched_memory_is_zero)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *a, *b, *c, *e;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	a = mmap_peer_shared(NULL, self->len, 0);
	b = mmap_peer_shared(NULL, self->len, 0);
	c = mmap_peer_shared(NULL, self->len, 0);
	e = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, a);
	ASSERT_NE(MAP_FAILED, b);
	ASSERT_NE(MAP_FAILED, c);
	ASSERT_NE(MAP_FAILED, e);

	/* The NPU first. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_sum(self->fd[0], a, self->len, &sum));
	ASSERT_EQ(0, sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(n, d.resident);

	/* The CPU first. */
	ASSERT_EQ(-1, check_words(b, self->len, 0, 0));

	/* The NPU copies the CPU's zeros into memory nobody touched. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_copy(self->fd[0], c, b, self->len));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_dev);
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(-1, check_words(c, self->len, 0, 0));

	/* ... and data over its own zeros. */
	fill_words(e, self->len, 7, 3);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_copy(self->fd[0], a, e, self->len));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(-1, check_words(a, self->len, 7, 3));
	ASSERT_EQ(-1, check_words(e, self->len, 7, 3));

	ASSERT_EQ(0, munmap(a, self->len));
	ASSERT_EQ(0, munmap(b, self->len));
	ASSERT_EQ(0, munmap(c, self->len));
	ASSERT_EQ(0, munmap(e, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * The CPU and both NPUs take turns on the same buffers; an NPU reads what
 * the other one wrote (the pages move from NPU to NPU).
 */
TEST_F(npu, two_npus_take_turns)
{
	size_t half = self->len / 2, words = self->len / 4;
	long long n = self->npages;
	struct gmem_npu_stats s0, s1;
	struct npu_delta d0, d1;
	__u32 *x, *y, *want_x, *want_y;
	__u64 sum;

	if (self->fd[1] < 0)
		SKIP(return, "no %s", npu_dev_path[1]);
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	ASSERT_EQ(0, npu_attach(self->fd[1]));
	x = mmap_peer_shared(NULL, self->len, 0);
	y = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, x);
	ASSERT_NE(MAP_FAILED, y);
	want_x = malloc(self->len);
	want_y = malloc(self->len);
	ASSERT_NE(NULL, want_x);
	ASSERT_NE(NULL, want_y);

	/* The CPU writes x and y. */
	fill_words(x, self->len, 1, 0);
	fill_words(y, self->len, 3, 1);

	/* npu0: x += y, in place. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	ASSERT_EQ(0, npu_add(self->fd[0], x, x, y, self->len));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s0, &d0));
	ASSERT_EQ(2 * n, d0.to_dev);
	ASSERT_EQ(0, d0.zero_fills);
	ASSERT_EQ(2 * n, d0.resident);
	for (size_t i = 0; i < words; i++)
		want_x[i] = 4 * i + 1;

	/* npu1 sums x: npu0's writes move over to npu1. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	ASSERT_EQ(0, npu_stats(self->fd[1], &s1));
	ASSERT_EQ(0, npu_sum(self->fd[1], x, self->len, &sum));
	ASSERT_EQ(sum_of(want_x, self->len), sum);
	ASSERT_EQ(0, npu_delta(self->fd[1], &s1, &d1));
	ASSERT_LE(n, d1.to_dev);
	ASSERT_EQ(0, d1.zero_fills);
	ASSERT_EQ(n, d1.resident);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s0, &d0));
	ASSERT_EQ(-n, d0.resident);

	/* npu1 fills the first half of y, then y = x + y. */
	ASSERT_EQ(0, npu_fill(self->fd[1], y, half, 7));
	ASSERT_EQ(0, npu_add(self->fd[1], y, x, y, self->len));
	for (size_t i = 0; i < words; i++)
		want_y[i] = want_x[i] + (i < words / 2 ? 7 : 3 * i + 1);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s0, &d0));
	ASSERT_EQ(-2 * n, d0.resident);
	ASSERT_EQ(0, npu_delta(self->fd[1], &s1, &d1));
	ASSERT_EQ(2 * n, d1.resident);
	ASSERT_EQ(0, d1.zero_fills);

	/* npu0 sums y: npu1's writes move back to npu0. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	ASSERT_EQ(0, npu_sum(self->fd[0], y, self->len, &sum));
	ASSERT_EQ(sum_of(want_y, self->len), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s0, &d0));
	ASSERT_LE(n, d0.to_dev);
	ASSERT_EQ(n, d0.resident);

	/* The CPU sees everything. */
	ASSERT_EQ(0, memcmp(want_x, x, self->len));
	ASSERT_EQ(0, memcmp(want_y, y, self->len));
	expect_resident(_metadata, self->fd, self->start);

	ASSERT_EQ(0, munmap(x, self->len));
	ASSERT_EQ(0, munmap(y, self->len));
	free(want_x);
	free(want_y);
}

/*
 * munmap of pages that live on the NPU frees them there and removes the
 * NPU's mappings: new memory at the same address is zeros for everyone.
 */
TEST_F(npu, munmap_while_on_npu)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p, *q;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0xdeadbeef));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(-n, d.resident);
	ASSERT_LT(0, d.tlb_invalidations);
	/* Batched: one invalidation for many pages, not one per page. */
	ASSERT_GE(n / 8, d.tlb_invalidations);
	ASSERT_EQ(0, d.to_host);
	expect_resident(_metadata, self->fd, self->start);

	q = mmap_peer_shared(p, self->len, MAP_FIXED_NOREPLACE);
	ASSERT_EQ(p, q);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_sum(self->fd[0], q, self->len, &sum));
	ASSERT_EQ(0, sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(-1, check_words(q, self->len, 0, 0));
	ASSERT_EQ(0, munmap(q, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * hmadvise(MADV_PREFETCH) to host node 0 brings the NPU's pages home before
 * it returns: the CPU then reads them without a migration in the fault path.
 */
TEST_F(npu, prefetch_to_host_brings_pages_home)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x5a5a5a5a));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(0, (unsigned long)p, self->len, MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	ASSERT_EQ(-n, d.resident);
	/* Already home: reading moves nothing, and a second prefetch neither. */
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(-1, check_words(p, self->len, 0, 0x5a5a5a5a));
	ASSERT_EQ(0, hmadvise(0, (unsigned long)p, self->len, MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* munmap of the middle of a range on the NPU: exactly those pages go. */
TEST_F(npu, partial_munmap_while_on_npu)
{
	size_t quarter = self->len / 4;
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	char *p;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x01020304));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, munmap(p + quarter, 2 * quarter));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(-n / 2, d.resident);
	/* What is left is still on the NPU, intact. */
	ASSERT_EQ(0, npu_sum(self->fd[0], p, quarter, &sum));
	ASSERT_EQ(sum_words(quarter, 0, 0x01020304), sum);
	ASSERT_EQ(0, npu_sum(self->fd[0], p + 3 * quarter, quarter, &sum));
	ASSERT_EQ(sum_words(quarter, 0, 0x01020304), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(0, d.to_dev);
	/* The hole is a hole for the NPU too. */
	ASSERT_EQ(EFAULT, npu_sum(self->fd[0], p + quarter, 4, &sum));
	ASSERT_EQ(-1, check_words(p, quarter, 0, 0x01020304));
	ASSERT_EQ(-1, check_words(p + 3 * quarter, quarter, 0, 0x01020304));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* madvise(MADV_DONTNEED) drops the NPU's pages: zeros on both sides after. */
TEST_F(npu, dontneed_while_on_npu)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x5555aaaa));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, madvise(p, self->len, MADV_DONTNEED));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(-n, d.resident);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(0, sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.zero_fills);
	ASSERT_EQ(-1, check_words(p, self->len, 0, 0));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* mprotect keeps the pages on the NPU; it reads them read-only, then the CPU. */
TEST_F(npu, mprotect_keeps_npu_pages)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x0badcafe));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, mprotect(p, self->len, PROT_READ));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 0, 0x0badcafe), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.resident);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(0, mprotect(p, self->len, PROT_READ | PROT_WRITE));
	ASSERT_EQ(-1, check_words(p, self->len, 0, 0x0badcafe));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * mprotect() of a range that starts at address 0 ends the MMU notifier
 * range it starts.  It did not (patch 0001): the mm's notifier sequence
 * stayed odd, and the next prefetch to the NPU slept forever in
 * mmu_interval_read_begin(), unkillable.  A child does the work under a
 * deadline, so that a regression fails the test instead of hanging the run
 * (the child is then left behind, stuck).  Mapping at 0 needs
 * CAP_SYS_RAWIO (or vm.mmap_min_addr = 0).
 */
TEST_F(npu, mprotect_at_address_zero)
{
	size_t len = 2 * self->page;
	unsigned int hnid = self->info[0].hnid;
	pid_t pid, done = 0;
	int status = 0;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		int fd = npu_open_attached(0);
		char *z, *p;
		__u64 sum;

		if (fd < 0)
			_exit(10);
		z = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE |
			 MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_PEER_SHARED,
			 -1, 0);
		if (z == MAP_FAILED)
			_exit(errno == EPERM || errno == EACCES ? 20 : 11);
		p = mmap_peer_shared(NULL, self->len, 0);
		if (p == MAP_FAILED)
			_exit(12);
		/* z is NULL, which the compiler does not know. */
		fill_words(z, len, 5, 3);
		fill_words(p, self->len, 9, 1);
		if (mprotect(z, len, PROT_READ))
			_exit(13);
		/* The first read_begin() after the mprotect(). */
		if (hmadvise(hnid, (unsigned long)p, self->len, MADV_PREFETCH))
			_exit(14);
		/* Address 0 is a page like any other. */
		if (hmadvise(hnid, 0, len, MADV_PREFETCH))
			_exit(15);
		if (npu_sum(fd, z, len, &sum) || sum != sum_words(len, 5, 3))
			_exit(16);
		if (npu_sum(fd, p, self->len, &sum) ||
		    sum != sum_words(self->len, 9, 1))
			_exit(17);
		if (check_words(z, len, 5, 3) != -1 || munmap(z, len))
			_exit(18);
		_exit(0);
	}
	for (int i = 0; i < 600 && !done; i++) {
		done = waitpid(pid, &status, WNOHANG);
		if (!done)
			usleep(50000);
	}
	if (done != pid)
		kill(pid, SIGKILL);
	ASSERT_EQ(pid, done) TH_LOG("the child is stuck after mprotect() at 0");
	ASSERT_TRUE(WIFEXITED(status));
	if (WEXITSTATUS(status) == 20)
		SKIP(return, "cannot map at address 0 (needs CAP_SYS_RAWIO)");
	ASSERT_EQ(0, WEXITSTATUS(status));
	expect_resident(_metadata, self->fd, self->start);
}

/* mremap moves the range, not the pages: they stay on the NPU. */
TEST_F(npu, mremap_keeps_npu_pages)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p, *q, *target;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	target = mmap(NULL, self->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, target);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x600df00d));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	q = mremap(p, self->len, self->len, MREMAP_MAYMOVE | MREMAP_FIXED, target);
	ASSERT_EQ(target, q);
	ASSERT_EQ(0, npu_sum(self->fd[0], q, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 0, 0x600df00d), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.resident);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	/* Nothing is left at the old address, for the NPU either. */
	ASSERT_EQ(EFAULT, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(-1, check_words(q, self->len, 0, 0x600df00d));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	ASSERT_EQ(0, munmap(q, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* A process that exits with pages on the NPU leaves nothing there. */
TEST_F(npu, exit_frees_npu_pages)
{
	long long before = self->start[0].resident_pages;
	size_t len = self->len;
	int status;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		int fd = open(npu_dev_path[0], O_RDWR);
		void *p = mmap_peer_shared(NULL, len, 0);

		if (fd < 0 || p == MAP_FAILED)
			_exit(1);
		if (npu_attach(fd) || npu_fill(fd, p, len, 3))
			_exit(2);
		if (npu_resident(fd) != before + NPAGES)
			_exit(3);
		/* No munmap, no close. */
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(before, npu_resident(self->fd[0]));
}

/*
 * The same when the attached file outlives the process (another process
 * holds it): the pages go with the address space, not with the file.
 */
TEST_F(npu, exit_with_file_still_open)
{
	long long before = self->start[0].resident_pages;
	size_t len = self->len;
	int status, fd;
	pid_t pid;
	__u64 sum;
	void *p;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		p = mmap_peer_shared(NULL, len, 0);
		if (p == MAP_FAILED)
			_exit(1);
		/* The parent's file, which the parent never attached. */
		if (npu_attach(self->fd[0]) || npu_fill(self->fd[0], p, len, 3))
			_exit(2);
		if (npu_resident(self->fd[0]) != before + NPAGES)
			_exit(3);
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(before, npu_resident(self->fd[0]));

	/* The NPU still works for others (the old file goes at teardown). */
	fd = open(npu_dev_path[0], O_RDWR);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, npu_attach(fd));
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, len, 1, 1);
	ASSERT_EQ(0, npu_sum(fd, p, len, &sum));
	ASSERT_EQ(sum_words(len, 1, 1), sum);
	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(before, npu_resident(fd));
	close(fd);
}

/*
 * fork with data on the NPU: the child sees it (with the CPU and with an NPU
 * of its own), the parent keeps it.
 */
TEST_F(npu, fork_with_npu_data)
{
	const __u32 value = 0x5a5a0001;
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	int status;
	pid_t pid;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, value));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		int fd;

		if (check_words(p, self->len, 0, value) != -1)
			_exit(1);
		/* The child's address space is attached to no NPU. */
		fd = open(npu_dev_path[0], O_RDWR);
		if (fd < 0 || npu_attach(fd))
			_exit(2);
		if (npu_sum(fd, p, self->len, &sum) ||
		    sum != sum_words(self->len, 0, value))
			_exit(3);
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status))
		TH_LOG("the child's check %d failed", WEXITSTATUS(status));
	/* fork brought the parent's pages home first (Documentation/mm/gmem.rst). */
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	expect_resident(_metadata, self->fd, self->start);
	/* The parent still has its data, for the NPU and for the CPU. */
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 0, value), sum);
	ASSERT_EQ(-1, check_words(p, self->len, 0, value));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* After fork, what the parent's NPU writes does not reach the child. */
TEST_F(npu, fork_then_npu_writes_stay_private)
{
	int status, pipefd[2];
	pid_t pid;
	void *p;
	char c;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len, 1, 0);
	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		if (read(pipefd[0], &c, 1) != 1)
			_exit(1);
		_exit(check_words(p, self->len, 1, 0) == -1 ? 0 : 2);
	}
	/* The pages the parent shares with the child go to the NPU. */
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0xffffffff));
	ASSERT_EQ(1, write(pipefd[1], "x", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(-1, check_words(p, self->len, 0, 0xffffffff));
	ASSERT_EQ(0, munmap(p, self->len));
	close(pipefd[0]);
	close(pipefd[1]);
	expect_resident(_metadata, self->fd, self->start);
}

/* Jobs may start anywhere 4-byte aligned, and cover parts of pages. */
TEST_F(npu, sub_page_jobs)
{
	size_t len = 2 * self->page;
	struct gmem_npu_stats s;
	struct npu_delta d;
	char *p, *want;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	want = calloc(1, len);
	ASSERT_NE(NULL, want);

	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], p + 100, 40, 0xabcdabcd));
	fill_words(want + 100, 40, 0, 0xabcdabcd);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(1, d.zero_fills);
	ASSERT_EQ(1, d.resident);
	/* Across the page boundary: the second page joins. */
	ASSERT_EQ(0, npu_fill(self->fd[0], p + self->page - 8, 16, 0x11111111));
	fill_words(want + self->page - 8, 16, 0, 0x11111111);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(2, d.zero_fills);
	ASSERT_EQ(2, d.resident);
	ASSERT_EQ(0, npu_sum(self->fd[0], p + 96, 48, &sum));
	ASSERT_EQ(sum_of(want + 96, 48), sum);
	ASSERT_EQ(0, npu_sum(self->fd[0], p + self->page - 12, 24, &sum));
	ASSERT_EQ(sum_of(want + self->page - 12, 24), sum);
	/* One word. */
	ASSERT_EQ(0, npu_sum(self->fd[0], p + len - 4, 4, &sum));
	ASSERT_EQ(0, sum);
	ASSERT_EQ(0, memcmp(want, p, len));
	ASSERT_EQ(0, munmap(p, len));
	free(want);
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * The first touch of a page raises a fault into GMEM (or, not faultable, is
 * prefaulted through it); a second job finds the pages where they are.
 */
TEST_F(npu, faults_counted)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 1));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_LT(0, d.faults);
	ASSERT_EQ(n, d.zero_fills);

	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 2));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, d.resident);
	/* A faultable NPU kept its mappings; a prefaulting one counts again. */
	if (self->faultable)
		ASSERT_EQ(0, d.faults);
	ASSERT_EQ(-1, check_words(p, self->len, 0, 2));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Four engines fill untouched memory with prefetch off: each stalls once on
 * each of its pages, and the NPU hands GMEM one batch whenever all four are
 * stalled, so every batch holds four faults (on two 2 MiB blocks).  SUM32 on
 * four engines adds up their parts.
 */
TEST_F(npu, batched_faults_of_several_engines)
{
	size_t len = 4UL * 1024 * 1024;
	long long pages = len / self->page;
	struct gmem_npu_stats s, e;
	__u64 sum;
	void *p;

	if (!self->faultable)
		SKIP(return, "a prefaulting NPU raises no faults");
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill_on(self->fd[0], p, len, 7, 4));
	ASSERT_EQ(0, npu_stats(self->fd[0], &e));
	ASSERT_EQ(pages, (long long)(e.faults - s.faults));
	ASSERT_EQ(pages / 4, (long long)(e.fault_batches - s.fault_batches));
	ASSERT_EQ(0, e.prefetched_pages - s.prefetched_pages);

	/* On the NPU already: no fault, and the engines' sums add up. */
	ASSERT_EQ(0, npu_sum_on(self->fd[0], p, len, &sum, 4));
	ASSERT_EQ(7ULL * (len / 4), sum);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(e.faults, s.faults);
	ASSERT_EQ(-1, check_words(p, len, 0, 7));

	/* A job shorter than its engines' pages runs on fewer engines. */
	ASSERT_EQ(0, npu_fill_on(self->fd[0], p, 3 * self->page, 9, 8));
	ASSERT_EQ(9, ((__u32 *)p)[3 * self->page / 4 - 1]);
	ASSERT_EQ(7, ((__u32 *)p)[3 * self->page / 4]);
	ASSERT_EQ(0, munmap(p, len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Density prefetch: a fault brings along the largest aligned block around
 * it that is more than half resident or faulting, so a sequential fill of
 * untouched memory faults on few pages (22 per 2 MiB with the default 51%:
 * 0-8, 16, 32, 64-65, 128-130, 256-261) and GMEM moves the others with
 * them.  With
 * the threshold at 0 every page faults.
 */
TEST_F(npu, density_prefetch_widens_faults)
{
	size_t len = 2 * BLOCK;
	long long pages = len / self->page;
	struct gmem_npu_stats s, e;
	char *p, *q;

	if (!self->faultable)
		SKIP(return, "a prefaulting NPU raises no faults");
	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "prefetch_threshold", 51));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_block_aligned(len);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], p, len, 3));
	ASSERT_EQ(0, npu_stats(self->fd[0], &e));
	ASSERT_EQ(44, (long long)(e.faults - s.faults));
	ASSERT_EQ(pages - 44, (long long)(e.prefetched_pages - s.prefetched_pages));
	ASSERT_EQ(pages, (long long)(e.zero_fills - s.zero_fills));
	ASSERT_EQ(-1, check_words(p, len, 0, 3));

	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "prefetch_threshold", 0));
	q = mmap_block_aligned(len);
	ASSERT_NE(MAP_FAILED, q);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], q, len, 4));
	ASSERT_EQ(0, npu_stats(self->fd[0], &e));
	ASSERT_EQ(pages, (long long)(e.faults - s.faults));
	ASSERT_EQ(0, e.prefetched_pages - s.prefetched_pages);
	ASSERT_EQ(-1, check_words(q, len, 0, 4));
	ASSERT_EQ(-1, check_words(p, len, 0, 3));
	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(0, munmap(q, len));
	expect_resident(_metadata, self->fd, self->start);
}

/* Bad thresholds are refused and leave the old one. */
TEST_F(npu, prefetch_threshold_einval)
{
	unsigned int hnid = self->info[0].hnid;

	ASSERT_EQ(0, gm_node_write(hnid, "prefetch_threshold", 100));
	ASSERT_EQ(100, gm_node_read(hnid, "prefetch_threshold"));
	ASSERT_NE(0, gm_node_write(hnid, "prefetch_threshold", 101));
	ASSERT_EQ(EINVAL, errno);
	ASSERT_EQ(100, gm_node_read(hnid, "prefetch_threshold"));
}

/*
 * Prefetch stays in the faulting page's VMA: the first 300 pages of a 2 MiB
 * block are one VMA, the rest (read-only) another.  At page 261 the whole
 * block is more than 51% populated; only the rest of the first VMA comes.
 */
TEST_F(npu, prefetch_stops_at_the_vma)
{
	size_t first = 300 * self->page;
	struct npu_delta d;
	struct gmem_npu_stats s;
	char *p;

	if (!self->faultable)
		SKIP(return, "a prefaulting NPU raises no faults");
	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "prefetch_threshold", 51));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_block_aligned(BLOCK);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, mprotect(p + first, BLOCK - first, PROT_READ));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_fill(self->fd[0], p, first, 5));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(300, d.resident);
	ASSERT_EQ(-1, check_words(p, first, 0, 5));
	ASSERT_EQ(-1, check_words(p + first, BLOCK - first, 0, 0));
	ASSERT_EQ(0, munmap(p, BLOCK));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Prefetch never evicts: with room for 400 pages (16 of them the free
 * reserve), a fill of 300 pages of a 2 MiB block would bring the whole block
 * at page 261; it brings only what fits, and nothing is evicted.
 */
TEST_F(npu, prefetch_stops_at_free_memory)
{
	size_t len = 300 * self->page;
	struct gmem_npu_stats s, e;
	unsigned long long limit;
	char *p;
	int ret;

	if (!self->faultable)
		SKIP(return, "a prefaulting NPU raises no faults");
	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "prefetch_threshold", 51));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_block_aligned(BLOCK);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	limit = (s.resident_pages + 400) * self->page;
	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "limit", limit));
	ret = npu_fill(self->fd[0], p, len, 6);
	ASSERT_EQ(0, npu_stats(self->fd[0], &e));
	ASSERT_EQ(0, gm_node_write(self->info[0].hnid, "limit",
				   self->info[0].dram_size));
	ASSERT_EQ(0, ret);
	ASSERT_EQ(0, e.evictions - s.evictions);
	ASSERT_LE(300, (long long)(e.resident_pages - s.resident_pages));
	ASSERT_GE(400 - 16, (long long)(e.resident_pages - s.resident_pages));
	ASSERT_LT(0, e.prefetched_pages - s.prefetched_pages);
	ASSERT_EQ(-1, check_words(p, len, 0, 6));
	ASSERT_EQ(0, munmap(p, BLOCK));
	expect_resident(_metadata, self->fd, self->start);
}

/* RUN on a file that is not attached. */
TEST_F(npu, run_before_attach)
{
	struct gmem_npu_stats s;
	struct npu_delta d;
	__u64 sum;
	void *p;

	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len, 1, 0);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(EINVAL, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(EINVAL, npu_fill(self->fd[0], p, self->len, 0));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(-1, check_words(p, self->len, 1, 0));
	/* Attached, the same job works. */
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 1, 0), sum);
	ASSERT_EQ(0, munmap(p, self->len));
}

/* One attach per file; the process may attach to several NPUs. */
TEST_F(npu, attach_twice)
{
	__u64 sum;
	void *p;

	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len, 1, 0);
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	ASSERT_EQ(EBUSY, npu_attach(self->fd[0]));
	if (self->fd[1] >= 0)
		ASSERT_EQ(0, npu_attach(self->fd[1]));
	/* Still attached, once. */
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 1, 0), sum);
	ASSERT_EQ(EBUSY, npu_attach(self->fd[0]));
	ASSERT_EQ(0, munmap(p, self->len));
}

/*
 * Malformed jobs, with addresses as offsets into a buffer of NPAGES pages
 * (every field a valid address, so that only the flaw shown is wrong).
 */
static const struct bad_job {
	__u32 op;
	__u32 flags;
	unsigned long dst;
	unsigned long src0;
	unsigned long src1;
	__u64 len;
} bad_jobs[] = {
	/* length zero, or not a multiple of 4 */
	{ .op = GMEM_NPU_OP_SUM32, .len = 0 },
	{ .op = GMEM_NPU_OP_SUM32, .len = 2 },
	{ .op = GMEM_NPU_OP_SUM32, .len = NPAGES * NPU_PAGE_SIZE - 1 },
	{ .op = GMEM_NPU_OP_FILL32, .len = 0 },
	{ .op = GMEM_NPU_OP_FILL32, .len = 5 },
	{ .op = GMEM_NPU_OP_COPY, .src0 = NPU_PAGE_SIZE, .len = 6 },
	{ .op = GMEM_NPU_OP_ADD32, .len = 3 },
	/* an address that is not 4-byte aligned */
	{ .op = GMEM_NPU_OP_SUM32, .src0 = 1, .len = 4 },
	{ .op = GMEM_NPU_OP_SUM32, .src0 = 2, .len = 8 },
	{ .op = GMEM_NPU_OP_FILL32, .dst = 2, .len = 4 },
	{ .op = GMEM_NPU_OP_COPY, .dst = 3, .src0 = NPU_PAGE_SIZE, .len = 4 },
	{ .op = GMEM_NPU_OP_COPY, .src0 = NPU_PAGE_SIZE + 1, .len = 4 },
	{ .op = GMEM_NPU_OP_ADD32, .dst = 1, .len = 4 },
	{ .op = GMEM_NPU_OP_ADD32, .src0 = 2, .len = 4 },
	{ .op = GMEM_NPU_OP_ADD32, .src1 = 3, .len = 4 },
	/* an unknown operation */
	{ .op = 0, .len = 4 },
	{ .op = GMEM_NPU_OP_SUM32 + 1, .len = 4 },
	{ .op = 0xffffffff, .len = 4 },
	/* flags */
	{ .op = GMEM_NPU_OP_SUM32, .flags = GMEM_NPU_JOB_ENGINES_MASK + 1, .len = 4 },
	{ .op = GMEM_NPU_OP_FILL32, .flags = 0x80000000, .len = 4 },
};

/* Malformed jobs are refused before anything moves. */
TEST_F(npu, bad_jobs_einval)
{
	struct gmem_npu_job job;
	struct gmem_npu_stats s;
	struct npu_delta d;
	unsigned long a;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len, 1, 0);
	a = (unsigned long)p;

	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	for (size_t i = 0; i < ARRAY_SIZE(bad_jobs); i++) {
		const struct bad_job *bad = &bad_jobs[i];

		memset(&job, 0, sizeof(job));
		job.op = bad->op;
		job.flags = bad->flags;
		job.dst = a + bad->dst;
		job.src0 = a + bad->src0;
		job.src1 = a + bad->src1;
		job.len = bad->len;
		EXPECT_EQ(EINVAL, npu_run(self->fd[0], &job)) TH_LOG("bad job %zu", i);
	}
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	ASSERT_EQ(0, d.resident);
	ASSERT_EQ(-1, check_words(p, self->len, 1, 0));
	/* The NPU still works. */
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 1, 0), sum);
	ASSERT_EQ(0, munmap(p, self->len));
}

/*
 * Addresses outside MAP_PEER_SHARED memory: EFAULT, no write there, and the
 * NPU goes on working.
 */
TEST_F(npu, bad_addresses_efault)
{
	size_t last_word = self->len / 4 - 1;
	struct gmem_npu_job job;
	char *g, *hole, *plain;
	__u32 *last;
	__u64 sum;
	int ret;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	/* g, then one unmapped page. */
	g = mmap_peer_shared(NULL, self->len + self->page, 0);
	ASSERT_NE(MAP_FAILED, g);
	hole = g + self->len;
	ASSERT_EQ(0, munmap(hole, self->page));
	fill_words(g, self->len, 5, 1);
	plain = mmap(NULL, self->len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, plain);
	fill_words(plain, self->len, 0, 0x77);

	/* Ordinary memory. */
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], plain, self->len, &sum));
	EXPECT_EQ(EFAULT, npu_fill(self->fd[0], plain, self->len, 0));
	EXPECT_EQ(EFAULT, npu_copy(self->fd[0], plain, g, self->len));
	EXPECT_EQ(EFAULT, npu_add(self->fd[0], plain, g, g, self->len));
	EXPECT_EQ(EFAULT, npu_add(self->fd[0], g, g, plain, 4));
	ASSERT_EQ(-1, check_words(plain, self->len, 0, 0x77));
	/* Nothing mapped. */
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], hole, 4, &sum));
	EXPECT_EQ(EFAULT, npu_fill(self->fd[0], hole, self->page, 0));
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], NULL, 4, &sum));
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], (void *)0xffff888000000000UL, 4, &sum));
	/*
	 * The last page of the address space, whose end does not fit in a
	 * long; an operand that wraps past it is refused before the job runs.
	 */
	EXPECT_EQ(EFAULT, npu_fill(self->fd[0], (void *)-4096UL, 8, 0));
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], (void *)-32UL, 16, &sum));
	EXPECT_EQ(EINVAL, npu_sum(self->fd[0], (void *)-16UL, 16, &sum));
	/* A job that runs off the end of g, into the hole... */
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], hole - self->page, 2 * self->page, &sum));
	/* ... or into ordinary memory. */
	ASSERT_EQ(hole, mmap(hole, self->page, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
	EXPECT_EQ(EFAULT, npu_sum(self->fd[0], hole - self->page, 2 * self->page, &sum));
	EXPECT_EQ(EFAULT, npu_fill(self->fd[0], hole - 4, 8, 0));
	/* That one may have written g's last word before it stopped. */
	last = (__u32 *)hole - 1;
	ASSERT_TRUE(*last == 0 || *last == (__u32)(last_word * 5 + 1));
	*last = last_word * 5 + 1;
	/* An end beyond the address space. */
	memset(&job, 0, sizeof(job));
	job.op = GMEM_NPU_OP_SUM32;
	job.src0 = (unsigned long)g;
	job.len = -4ULL;
	ret = npu_run(self->fd[0], &job);
	EXPECT_TRUE(ret == EINVAL || ret == EFAULT) TH_LOG("errno %d", ret);
	/*
	 * Nearly the whole address space, split over eight engines: the
	 * split must not overflow (the fuzzer found that it did).
	 */
	EXPECT_EQ(EFAULT, npu_do_on(self->fd[0], GMEM_NPU_OP_SUM32, NULL,
				    (void *)4, NULL, -8UL, &sum, 8));
	EXPECT_EQ(EFAULT, npu_do_on(self->fd[0], GMEM_NPU_OP_SUM32, NULL,
				    (void *)4, NULL, -8UL, &sum, 1));

	/* g is intact and the NPU still works on it. */
	ASSERT_EQ(0, npu_sum(self->fd[0], g, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 5, 1), sum);
	ASSERT_EQ(-1, check_words(g, self->len, 5, 1));
	ASSERT_EQ(0, npu_fill(self->fd[0], g, self->len, 42));
	ASSERT_EQ(-1, check_words(g, self->len, 0, 42));
	ASSERT_EQ(-1, check_words(plain, self->len, 0, 0x77));
	ASSERT_EQ(0, munmap(g, self->len + self->page));
	ASSERT_EQ(0, munmap(plain, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* Oversubscription: buffers larger than what the NPU may use. */

#define OVERSUB_LIMIT	(4UL * 1024 * 1024)	/* the NPU's memory, lowered */
#define OVERSUB_CHUNK	(1UL * 1024 * 1024)	/* one job; fits a prefaulting NPU */

static int limit_path(const struct gmem_npu_info *info, char *path, size_t n)
{
	return snprintf(path, n, "/sys/kernel/mm/gmem/node%u/limit", info->hnid);
}

/*
 * A buffer of @len bytes on NPU @fd with room for OVERSUB_LIMIT: the NPU
 * fills it, the CPU checks it, the CPU rewrites it, the NPU doubles it in
 * place, the CPU checks that, and the NPU sums it.  Returns 0 if every byte
 * was right, the step that failed otherwise.
 */
static int oversubscribe(int fd, size_t len, __u32 seed)
{
	__u64 sum, total = 0;
	__u32 *w;

	w = mmap_peer_shared(NULL, len, 0);
	if (w == MAP_FAILED)
		return 1;
	for (size_t off = 0; off < len; off += OVERSUB_CHUNK)
		if (npu_fill(fd, (char *)w + off, OVERSUB_CHUNK,
			     seed + off / OVERSUB_CHUNK))
			return 2;
	for (size_t i = 0; i < len / 4; i++)
		if (w[i] != seed + i * 4 / OVERSUB_CHUNK)
			return 3;
	fill_words(w, len, 1, seed);
	for (size_t off = 0; off < len; off += OVERSUB_CHUNK) {
		void *p = (char *)w + off;

		if (npu_add(fd, p, p, p, OVERSUB_CHUNK))
			return 4;
	}
	if (check_words(w, len, 2, 2 * seed) != -1)
		return 5;
	for (size_t off = 0; off < len; off += OVERSUB_CHUNK) {
		if (npu_sum(fd, (char *)w + off, OVERSUB_CHUNK, &sum))
			return 6;
		total += sum;
	}
	if (total != sum_words(len, 2, 2 * seed))
		return 7;
	return munmap(w, len) ? 8 : 0;
}

/* A buffer three times the NPU's memory, from the NPU and the CPU. */
TEST_F_TIMEOUT(npu, oversubscribed_buffer, 300)
{
	size_t len = 3 * OVERSUB_LIMIT;
	unsigned long long limit;
	struct gmem_npu_stats s;
	struct npu_delta d;
	struct timespec t0, t1;
	char path[128];
	int ret;

	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(self->info[0].dram_size, limit);
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = oversubscribe(self->fd[0], len, 0x1000);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ASSERT_EQ(0, write_ull(path, limit));
	ASSERT_EQ(0, ret);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_LT(self->start[0].evictions, s.evictions);
	TH_LOG("%zu MiB through %lu MiB of NPU memory: %llu evictions, %.2f s",
	       len >> 20, OVERSUB_LIMIT >> 20,
	       s.evictions - self->start[0].evictions,
	       (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	expect_resident(_metadata, self->fd, self->start);
}

/* Reads /sys/kernel/mm/gmem/node<hnid>/@file. */
static int read_node(const struct gmem_npu_info *info, const char *file,
		     unsigned long long *v)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/%s",
		 info->hnid, file);
	return read_ull(path, v);
}

struct streamer {
	int fd;
	void *p;
	size_t len;
	atomic_int done;
	int ret;
};

/*
 * Streams fills through an NPU at its limit: the NPU evicts all the time.
 * A job of 1 MiB at most: a prefaulting NPU holds all of a job's pages.
 */
static void *stream_fills(void *arg)
{
	struct streamer *st = arg;
	size_t step = 1UL << 20;

	for (int round = 0; round < 4 && !st->ret; round++)
		for (size_t off = 0; off < st->len && !st->ret; off += step)
			st->ret = npu_fill(st->fd, (char *)st->p + off, step, round);
	atomic_store(&st->done, 1);
	return NULL;
}

/*
 * mremap() of a buffer whose pages the NPU is evicting meanwhile: the move
 * of the logical page table entries used to drop an eviction's claim, and
 * the page then read zeros at its new address.
 */
TEST_F_TIMEOUT(npu, mremap_while_evicting, 300)
{
	size_t blen = OVERSUB_LIMIT / 2;
	struct streamer st = { .fd = self->fd[0], .len = 2 * OVERSUB_LIMIT };
	unsigned long long limit;
	char path[128], *b, *other;
	pthread_t t;
	int moves = 0;

	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	b = mmap_peer_shared(NULL, blen, 0);
	ASSERT_NE(MAP_FAILED, b);
	/* Where the buffer moves to and fro. */
	other = mmap(NULL, blen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, other);
	st.p = mmap_peer_shared(NULL, st.len, 0);
	ASSERT_NE(MAP_FAILED, st.p);
	ASSERT_EQ(0, npu_fill(self->fd[0], b, blen, 0x600dd00d));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	ASSERT_EQ(0, pthread_create(&t, NULL, stream_fills, &st));
	/*
	 * A bounded number of moves: every mremap() is an invalidation, which
	 * sends device faults in flight back to retry, and on a debug kernel a
	 * move takes long enough that an unbounded loop starves the streamer.
	 */
	while (!atomic_load(&st.done) && moves < 200) {
		char *to = mremap(b, blen, blen, MREMAP_MAYMOVE | MREMAP_FIXED,
				  other);

		if (to == MAP_FAILED)
			break;
		other = b;
		b = to;
		moves++;
		/* Room for the streamer's faults, which need the mmap lock. */
		usleep(1000);
	}
	pthread_join(t, NULL);
	ASSERT_EQ(0, write_ull(path, limit));
	ASSERT_EQ(0, st.ret);
	ASSERT_LT(10, moves);
	ASSERT_EQ(-1, check_words(b, blen, 0, 0x600dd00d));
	ASSERT_EQ(0, munmap(b, blen));
	ASSERT_EQ(0, munmap(st.p, st.len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Under oversubscription GMEM keeps a free reserve: once an allocation
 * leaves less than reserve_low free, a worker evicts in the background
 * until reserve_high is free, so at rest at least reserve_low is free.
 * Evicting only when an allocation finds the device full would leave less
 * than one eviction batch (16 pages, reserve_low here) free.
 */
TEST_F_TIMEOUT(npu, oversubscription_refills_the_reserve, 300)
{
	unsigned long long limit, low, high, free = 0;
	char path[128];
	void *p;
	int i;

	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	ASSERT_EQ(0, read_node(&self->info[0], "reserve_low", &low));
	ASSERT_EQ(0, read_node(&self->info[0], "reserve_high", &high));
	/* max(limit / 64, 16) pages, and twice that. */
	ASSERT_EQ(16 * self->page, low);
	ASSERT_EQ(2 * low, high);
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, 2 * OVERSUB_LIMIT, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (size_t off = 0; off < 2 * OVERSUB_LIMIT; off += OVERSUB_CHUNK)
		ASSERT_EQ(0, npu_fill(self->fd[0], (char *)p + off,
				      OVERSUB_CHUNK, 1));
	/* The worker runs after the last allocation: give it time. */
	for (i = 0; i < 200; i++) {
		ASSERT_EQ(0, read_node(&self->info[0], "free", &free));
		if (free >= low)
			break;
		usleep(10000);
	}
	ASSERT_EQ(0, write_ull(path, limit));
	ASSERT_LE(low, free);
	ASSERT_EQ(-1, check_words(p, 2 * OVERSUB_LIMIT, 0, 1));
	ASSERT_EQ(0, munmap(p, 2 * OVERSUB_LIMIT));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Eviction asks the NPU's accessed bits (pmap_clear_young): pages a job
 * uses between two passes of the clock stay on the NPU while a stream of
 * other pages four times the NPU's memory goes through it.  Without the
 * bits they would go on the clock's second pass, like any page that was
 * only mapped once, and come back on the next job (migrations to the NPU).
 */
TEST_F_TIMEOUT(npu, eviction_keeps_pages_the_npu_uses, 300)
{
	size_t hot_len = 16 * self->page, cold_len = 4 * OVERSUB_LIMIT;
	size_t step = OVERSUB_CHUNK / 4;
	unsigned long long limit;
	struct gmem_npu_stats s;
	struct npu_delta d;
	long long back = 0;
	char path[128];
	char *hot, *cold;
	__u64 sum;

	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	hot = mmap_peer_shared(NULL, hot_len, 0);
	ASSERT_NE(MAP_FAILED, hot);
	cold = mmap_peer_shared(NULL, cold_len, 0);
	ASSERT_NE(MAP_FAILED, cold);
	ASSERT_EQ(0, npu_fill(self->fd[0], hot, hot_len, 7));
	for (size_t off = 0; off < cold_len; off += step) {
		ASSERT_EQ(0, npu_fill(self->fd[0], cold + off, step, off));
		ASSERT_EQ(0, npu_stats(self->fd[0], &s));
		ASSERT_EQ(0, npu_sum(self->fd[0], hot, hot_len, &sum));
		ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
		ASSERT_EQ(7 * (hot_len / 4), sum);
		back += d.to_dev;
	}
	ASSERT_EQ(0, write_ull(path, limit));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	/* The stream went through: the clock turned three times at least. */
	ASSERT_LE(self->start[0].evictions +
		  (cold_len - OVERSUB_LIMIT) / self->page, s.evictions);
	ASSERT_EQ(0, back);
	ASSERT_EQ(0, munmap(hot, hot_len));
	ASSERT_EQ(0, munmap(cold, cold_len));
	expect_resident(_metadata, self->fd, self->start);
}

/* The 64-bit word @index of the /proc file @path, or 0. */
static __u64 proc_word(const char *path, __u64 index)
{
	__u64 w = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (pread(fd, &w, sizeof(w), index * sizeof(w)) != sizeof(w))
		w = 0;
	close(fd);
	return w;
}

/* RssAnon of this process in KiB, from /proc/self/status, or -1. */
static long long rss_anon_kib(void)
{
	char line[128];
	long long v = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "RssAnon: %lld", &v) == 1)
			break;
	fclose(f);
	return v;
}

#define PM_PRESENT	0x8000000000000000ULL	/* bit 63 */
#define PM_PFN_MASK	0x007fffffffffffffULL	/* bits 0-54 */
#define KPF_LRU		0x20ULL			/* bit 5 */
#define KPF_ANON	0x1000ULL		/* bit 12 */

/*
 * A page evicted from an NPU becomes an ordinary anonymous page of its
 * process: mapped in the CPU page table before the CPU touches it (pagemap
 * sees it present), on the LRU (so reclaim can swap it out), counted in
 * RSS.  Nearly all of them: an eviction that cannot take the owner's mmap
 * lock keeps the copy aside instead.
 */
TEST_F_TIMEOUT(npu, evicted_pages_are_anonymous_memory, 300)
{
	size_t len = 4 * OVERSUB_LIMIT, pages = len / self->page;
	size_t present = 0, anon = 0, lru = 0;
	long long rss_before, rss_after;
	unsigned long long limit;
	struct gmem_npu_stats s0, s1;
	unsigned long long evictions;
	char path[128];
	__u32 *w;

	if (access("/proc/kpageflags", R_OK))
		SKIP(return, "no /proc/kpageflags (CONFIG_PROC_PAGE_MONITOR, root)");
	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	w = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, w);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	rss_before = rss_anon_kib();
	for (size_t off = 0; off < len; off += OVERSUB_CHUNK)
		ASSERT_EQ(0, npu_fill(self->fd[0], (char *)w + off,
				      OVERSUB_CHUNK, 0xe0000000 + off / OVERSUB_CHUNK));
	rss_after = rss_anon_kib();
	ASSERT_EQ(0, npu_stats(self->fd[0], &s1));
	evictions = s1.evictions - s0.evictions;
	ASSERT_EQ(0, write_ull(path, limit));
	/* The CPU has not touched the buffer: what is present came from the NPU. */
	for (size_t i = 0; i < pages; i++) {
		__u64 e = proc_word("/proc/self/pagemap",
				    ((uintptr_t)w + i * self->page) / self->page);
		__u64 flags;

		if (!(e & PM_PRESENT))
			continue;
		present++;
		flags = proc_word("/proc/kpageflags", e & PM_PFN_MASK);
		anon += !!(flags & KPF_ANON);
		lru += !!(flags & KPF_LRU);
	}
	TH_LOG("%llu evictions; %zu of %zu pages present, %zu anonymous, %zu on the LRU",
	       evictions, present, pages, anon, lru);
	TH_LOG("RssAnon %lld -> %lld KiB", rss_before, rss_after);
	ASSERT_LE((len - OVERSUB_LIMIT) / self->page, evictions);
	EXPECT_LE((len - OVERSUB_LIMIT) / self->page * 9 / 10, present);
	EXPECT_EQ(present, anon);
	/* But for the last few, in the CPUs' LRU batches (31 pages each). */
	EXPECT_LE(present - 32 * sysconf(_SC_NPROCESSORS_ONLN), lru);
	EXPECT_LE((long long)((len - OVERSUB_LIMIT) * 9 / 10 / 1024), rss_after - rss_before);
	/* And the data is right, wherever each page is. */
	for (size_t i = 0; i < len / 4; i++) {
		ASSERT_EQ(0xe0000000 + i * 4 / OVERSUB_CHUNK, w[i]) {
			TH_LOG("word %zu", i);
		}
	}
	ASSERT_EQ(0, munmap(w, len));
	expect_resident(_metadata, self->fd, self->start);
}

/* Two processes oversubscribing the same NPU at once, each with its data. */
TEST_F_TIMEOUT(npu, two_processes_oversubscribe, 300)
{
	unsigned long long limit;
	pid_t pid[2];
	char path[128];
	int status;

	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		ASSERT_LE(0, pid[i]);
		if (!pid[i]) {
			int fd = open(npu_dev_path[0], O_RDWR | O_CLOEXEC);

			if (fd < 0 || npu_attach(fd))
				_exit(20);
			_exit(oversubscribe(fd, 2 * OVERSUB_LIMIT,
					    0x100000 * (i + 1)));
		}
	}
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(pid[i], waitpid(pid[i], &status, 0));
		EXPECT_TRUE(WIFEXITED(status));
		EXPECT_EQ(0, WEXITSTATUS(status));
	}
	ASSERT_EQ(0, write_ull(path, limit));
	expect_resident(_metadata, self->fd, self->start);
}

/* hmadvise(MADV_PREFETCH) to the NPU: the next job takes no fault. */
TEST_F(npu, prefetch_to_npu)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len / 2, 3, 1);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, self->len,
			      MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	/* The half the CPU wrote moved; the other half was zero-filled there. */
	ASSERT_EQ(n / 2, d.to_dev);
	ASSERT_EQ(n - n / 2, d.zero_fills);
	ASSERT_EQ(n, d.resident);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len / 2, 3, 1), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, d.zero_fills);
	/* A prefaulting NPU still asks GMEM for each job's pages. */
	if (self->faultable)
		ASSERT_EQ(0, d.faults);
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Migrations move 2 MiB chunks: a prefetch of 4 MiB (two chunks, 2 MiB
 * aligned) back to the host unmaps each chunk from the NPU with one TLB
 * invalidation, and the data survives the round trip.  Moving page by page
 * would take one invalidation per page.
 */
TEST_F_TIMEOUT(npu, prefetch_moves_2mib_chunks, 300)
{
	size_t chunk = 2 << 20, len = 2 * chunk;
	long long n = len / self->page;
	struct gmem_npu_stats s;
	struct npu_delta d;
	char *map, *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	/* A 2 MiB aligned range inside a larger mapping. */
	map = mmap_peer_shared(NULL, len + chunk, 0);
	ASSERT_NE(MAP_FAILED, map);
	p = (char *)(((unsigned long)map + chunk - 1) & ~(chunk - 1));
	fill_words(p, len, 7, 3);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, len,
			      MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_dev);
	ASSERT_EQ(n, d.resident);
	/* Nothing was mapped on the NPU before: nothing to invalidate. */
	ASSERT_EQ(0, d.tlb_invalidations);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(0, (unsigned long)p, len, MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	ASSERT_EQ(-n, d.resident);
	ASSERT_EQ(2, d.tlb_invalidations);
	ASSERT_EQ(-1, check_words(p, len, 7, 3));
	/* Home already: the CPU reads took no fault back from the NPU. */
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_host);
	ASSERT_EQ(0, munmap(map, len + chunk));
	expect_resident(_metadata, self->fd, self->start);
}

#define THP_SYSFS	"/sys/kernel/mm/transparent_hugepage/"

/* Whether the THP setting @file (enabled, defrag, ...) is @mode now. */
static int thp_mode_is(const char *file, const char *mode)
{
	char path[128], buf[128], want[32];
	FILE *f;
	int ret;

	snprintf(path, sizeof(path), THP_SYSFS "%s", file);
	snprintf(want, sizeof(want), "[%s]", mode);
	f = fopen(path, "r");
	if (!f)
		return 0;
	ret = fgets(buf, sizeof(buf), f) && strstr(buf, want);
	fclose(f);
	return ret;
}

/*
 * Waits for khugepaged to go twice through every process it knows of
 * (this one's included: see the caller) with no sleep between its scans:
 * 0, or -1 (no khugepaged, or it did not within 20 s).
 */
static int khugepaged_scan_twice(void)
{
	const char *sleep = THP_SYSFS "khugepaged/scan_sleep_millisecs";
	const char *scans = THP_SYSFS "khugepaged/full_scans";
	unsigned long long slept, first, now = 0;
	int i, ret = -1;

	if (read_ull(sleep, &slept) || read_ull(scans, &first) ||
	    write_ull(sleep, 0))
		return -1;
	/* khugepaged exposes no event to wait for: its own selftest polls too. */
	for (i = 0; i < 2000 && !read_ull(scans, &now); i++) {
		if (now >= first + 2) {
			ret = 0;
			break;
		}
		usleep(10000);
	}
	write_ull(sleep, slept);
	return ret;
}

/*
 * No THP in a peer-shared range, whatever MADV_HUGEPAGE says: a collapse
 * (MADV_COLLAPSE, khugepaged) sees the empty PTEs of the pages that live on
 * the NPU as holes, and would fill them with zeros in a huge page that hides
 * the NPU's data from the CPU for good.  MADV_COLLAPSE is EINVAL there, and
 * khugepaged passes the range over: the NPU keeps its pages, the CPU's stay
 * where they were, and every word reads back.
 */
TEST_F_TIMEOUT(npu, collapse_leaves_npu_pages_alone, 120)
{
	size_t chunk = 2 << 20, half = chunk / 2;
	long long n = half / self->page;
	struct gmem_npu_stats s;
	struct npu_delta d;
	char *map, *p, *thp;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	map = mmap_peer_shared(NULL, 2 * chunk, 0);
	ASSERT_NE(MAP_FAILED, map);
	p = (char *)(((unsigned long)map + chunk - 1) & ~(chunk - 1));
	madvise(p, chunk, MADV_HUGEPAGE);
	fill_words(p, chunk, 13, 9);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	/* The second half moves to the NPU: the CPU's PTEs of it are empty. */
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p + half, half,
			      MADV_PREFETCH));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_dev);

	ASSERT_EQ(-1, madvise(p, chunk, MADV_COLLAPSE));
	ASSERT_EQ(EINVAL, errno);

	/*
	 * khugepaged scans only the processes that have a VMA it may
	 * collapse: give this one an ordinary MADV_HUGEPAGE range.
	 */
	thp = mmap(NULL, 2 * chunk, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, thp);
	if (thp_mode_is("enabled", "never")) {
		TH_LOG("THP disabled: khugepaged not tried");
	} else {
		ASSERT_EQ(0, madvise(thp, 2 * chunk, MADV_HUGEPAGE));
		thp[0] = 1;
		ASSERT_EQ(0, khugepaged_scan_twice());
	}
	ASSERT_EQ(0, munmap(thp, 2 * chunk));

	/* Nothing moved: the NPU half is still there, and reads back there. */
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(n, d.to_dev);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(n, d.resident);
	ASSERT_EQ(0, npu_sum(self->fd[0], p + half, half, &sum));
	ASSERT_EQ(sum_words(chunk, 13, 9) - sum_words(half, 13, 9), sum);
	/* And the CPU reads every word, the NPU half brought home. */
	ASSERT_EQ(-1, check_words(p, chunk, 13, 9));
	ASSERT_EQ(0, munmap(map, 2 * chunk));
	expect_resident(_metadata, self->fd, self->start);
}

/* hmadvise(MADV_DONTNEED) on the NPU's node: its pages go, zeros remain. */
TEST_F(npu, dontneed_on_npu_node)
{
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, self->len, 0x77));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, self->len,
			      MADV_DONTNEED));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(-n, d.resident);
	ASSERT_EQ(0, d.to_host);
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(0, sum);
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, self->len,
			      MADV_DONTNEED));
	ASSERT_EQ(-1, check_words(p, self->len, 0, 0));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* MADV_DONTNEED on a host node drops host pages and keeps the NPU's. */
TEST_F(npu, dontneed_on_host_keeps_npu_pages)
{
	size_t half = self->len / 2;
	long long n = self->npages;
	struct gmem_npu_stats s;
	struct npu_delta d;
	__u64 sum;
	char *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(self->fd[0], p, half, 5));
	fill_words(p + half, half, 1, 9);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, hmadvise(0, (unsigned long)p, self->len, MADV_DONTNEED));
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	ASSERT_EQ(0, d.resident);
	ASSERT_EQ(-1, check_words(p + half, half, 0, 0));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, half, &sum));
	ASSERT_EQ(5ULL * (n / 2) * (self->page / 4), sum);
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/* hmadvise on a device node the process is not attached to, or no device. */
TEST_F(npu, hmadvise_device_errors)
{
	void *p;

	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (int advice = 0; advice < 2; advice++) {
		int a = advice ? MADV_DONTNEED : MADV_PREFETCH;

		errno = 0;
		EXPECT_EQ(-1, hmadvise(self->info[0].hnid, (unsigned long)p,
				       self->len, a));
		EXPECT_EQ(EINVAL, errno);
		errno = 0;
		EXPECT_EQ(-1, hmadvise(self->info[0].hnid + 64, (unsigned long)p,
				       self->len, a));
		EXPECT_EQ(EINVAL, errno);
	}
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	EXPECT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, self->len,
			      MADV_PREFETCH));
	if (self->fd[1] >= 0) {
		errno = 0;
		EXPECT_EQ(-1, hmadvise(self->info[1].hnid, (unsigned long)p,
				       self->len, MADV_PREFETCH));
		EXPECT_EQ(EINVAL, errno);
	}
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

static void on_alarm(int sig)
{
}

/*
 * A long prefetch interrupted by signals (a handler without SA_RESTART:
 * EINTR) keeps the range consistent, and calling again finishes it: the
 * pages already moved stay moved.
 */
TEST_F(npu, prefetch_interrupted)
{
	struct itimerval every = { { 0, 10000 }, { 0, 10000 } }, off = { 0 };
	struct sigaction sa = { .sa_handler = on_alarm };
	size_t len = OVERSUB_CHUNK;
	int eintr = 0;
	long ret;
	__u64 sum;
	void *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, len, 7, 3);
	ASSERT_EQ(0, sigaction(SIGALRM, &sa, NULL));
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &every, NULL));
	do {
		ret = hmadvise(self->info[0].hnid, (unsigned long)p, len,
			       MADV_PREFETCH);
		eintr += ret == -1 && errno == EINTR;
	} while (ret == -1 && errno == EINTR && eintr < 100000);
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &off, NULL));
	ASSERT_EQ(0, ret);
	TH_LOG("prefetch of %zu KiB interrupted %d times", len >> 10, eintr);
	ASSERT_EQ(0, npu_sum(self->fd[0], p, len, &sum));
	ASSERT_EQ(sum_words(len, 7, 3), sum);
	ASSERT_EQ(-1, check_words(p, len, 7, 3));
	ASSERT_EQ(0, munmap(p, len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * A move to the NPU that the driver fails after the CPU mapping is gone
 * leaves the data where it was.  The NPU has 4 MiB of page-table pages: one
 * page in each of 1200 2 MiB regions needs more leaf tables than that, so
 * mapping them fails with ENOMEM part of the way.  Every page the CPU wrote
 * still reads back, moved or not.
 */
TEST_F_TIMEOUT(npu, failed_move_keeps_the_data, 300)
{
	const size_t region = 2UL << 20, regions = 1200;
	size_t len = region * regions, moved = 0;
	long ret = 0;
	char *p;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_PEER_SHARED,
		 -1, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (size_t i = 0; i < regions; i++)
		*(unsigned long *)(p + i * region) = i + 1;
	for (; moved < regions; moved++) {
		ret = hmadvise(self->info[0].hnid,
			       (unsigned long)(p + moved * region), self->page,
			       MADV_PREFETCH);
		if (ret)
			break;
	}
	TH_LOG("%zu of %zu pages moved before the NPU failed", moved, regions);
	ASSERT_EQ(-1, ret);
	ASSERT_EQ(ENOMEM, errno);
	/* The page that failed, and those after it, are where they were. */
	for (size_t i = 0; i < regions; i++) {
		ASSERT_EQ(i + 1, *(unsigned long *)(p + i * region))
			TH_LOG("page %zu of %zu (the move of page %zu failed)",
			       i, regions, moved);
	}
	ASSERT_EQ(0, munmap(p, len));
	expect_resident(_metadata, self->fd, self->start);
}

/* The value of @name in /proc/vmstat, or -1. */
static long long vmstat_value(const char *name)
{
	char line[256];
	size_t n = strlen(name);
	long long v = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, n) && line[n] == ' ')
			v = atoll(line + n + 1);
	fclose(f);
	return v;
}

#define NUMAB_DIR "/sys/kernel/debug/sched/numa_balancing/"

/*
 * NUMA balancing leaves peer-shared ranges alone: its scan makes PTEs
 * PROT_NONE, and the protection change would unmap every page of the range
 * from the NPU.  A prefaulting NPU (faultable=0) would then fail its next
 * job with EFAULT; a faulting one would fault every page again.  The test
 * scans until NUMA balancing has changed PTEs of an ordinary buffer (so the
 * scanner did pass over the process), then runs a job on the buffer the
 * NPU holds.
 */
TEST_F_TIMEOUT(npu, numa_balancing_leaves_npu_mappings, 120)
{
	static const char *const knobs[] = { "scan_delay_ms", "scan_period_min_ms" };
	unsigned long long old_knob[2], old_mode = 0;
	size_t other_len = 4UL << 20;
	struct gmem_npu_stats s;
	long long before, after = -1;
	struct npu_delta d;
	char *other, path[256];
	__u64 sum;
	void *p;

	if (access("/sys/devices/system/node/node1", F_OK))
		SKIP(return, "one host NUMA node: no NUMA balancing");
	if (read_ull("/proc/sys/kernel/numa_balancing", &old_mode) ||
	    write_ull("/proc/sys/kernel/numa_balancing", 1))
		SKIP(return, "no NUMA balancing (CONFIG_NUMA_BALANCING)");
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), NUMAB_DIR "%s", knobs[i]);
		old_knob[i] = ~0ULL;
		if (!read_ull(path, &old_knob[i]))
			write_ull(path, i ? 10 : 0);
	}
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	fill_words(p, self->len, 5, 2);
	ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p, self->len,
			      MADV_PREFETCH));
	other = mmap(NULL, other_len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, other);
	memset(other, 1, other_len);
	before = vmstat_value("numa_pte_updates");
	/* Run on the CPU until a scan passed (task_numa_work runs on return to user space). */
	for (int i = 0; i < 2000 && after <= before; i++) {
		for (size_t k = 0; k < other_len; k += self->page)
			other[k]++;
		usleep(5000);
		after = vmstat_value("numa_pte_updates");
	}
	write_ull("/proc/sys/kernel/numa_balancing", old_mode);
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), NUMAB_DIR "%s", knobs[i]);
		if (old_knob[i] != ~0ULL)
			write_ull(path, old_knob[i]);
	}
	if (after <= before)
		SKIP(return, "NUMA balancing never scanned (numa_pte_updates %lld)", after);
	TH_LOG("NUMA balancing updated %lld PTEs", after - before);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 5, 2), sum);
	ASSERT_EQ(0, npu_delta(self->fd[0], &s, &d));
	/* The NPU's mappings are all still there (a prefaulting NPU asks anyway). */
	if (self->faultable)
		ASSERT_EQ(0, d.faults);
	ASSERT_EQ(0, d.to_dev);
	ASSERT_EQ(0, munmap(other, other_len));
	ASSERT_EQ(0, munmap(p, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

struct storm {
	char *at;		/* where the storm maps and unmaps */
	atomic_int stop;
	atomic_long rounds;
};

/* mmap() and munmap() 64 KiB at @at until told to stop. */
static void *storm_thread(void *arg)
{
	struct storm *st = arg;

	while (!atomic_load(&st->stop)) {
		char *q = mmap(st->at, 64 << 10, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

		if (q == MAP_FAILED)
			break;
		q[0] = 1;
		munmap(q, 64 << 10);
		st->rounds++;
	}
	return NULL;
}

/*
 * A storm of munmap() elsewhere in the process does not send device faults
 * back to retry: each window of the address space has an MMU notifier of
 * its own, and the storm is in another window than the buffer the NPU
 * moves.  (With one notifier over the whole process, every munmap made
 * every device fault in flight start over, with no bound.)  The buffer has
 * its window to itself (the rest of it reserved, inaccessible): any other
 * mapping there, a thread's stack say, would share its notifier, and NUMA
 * balancing's scans of it would count as retries.
 */
TEST_F_TIMEOUT(npu, unrelated_munmaps_retry_no_device_fault, 300)
{
	const unsigned long window = 64UL << 20;
	struct timespec t0, t1;
	struct storm st = { 0 };
	long before, after;
	pthread_t thread;
	char *p, *reserve;

	before = gmem_stat("fault_retries");
	ASSERT_LE(0, before) TH_LOG("no " GMEM_DEBUGFS "fault_retries");
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	/* Two windows of a reserved range: the buffer's, then the storm's. */
	reserve = mmap(NULL, 3 * window, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(MAP_FAILED, reserve);
	p = (char *)(((unsigned long)reserve + window - 1) & ~(window - 1));
	ASSERT_EQ(p, mmap_peer_shared(p, self->len, MAP_FIXED));
	fill_words(p, self->len, 11, 4);
	st.at = p + window;
	ASSERT_EQ(0, pthread_create(&thread, NULL, storm_thread, &st));
	/*
	 * At least 20 round trips, and on until the storm made 500 munmaps
	 * (for two minutes at most: the storm may lose the race for the mmap
	 * lock to the prefetches more often than not).
	 */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 20 || atomic_load(&st.rounds) < 500; i++) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (t1.tv_sec - t0.tv_sec > 120)
			break;
		ASSERT_EQ(0, hmadvise(self->info[0].hnid, (unsigned long)p,
				      self->len, MADV_PREFETCH));
		ASSERT_EQ(0, hmadvise(0, (unsigned long)p, self->len,
				      MADV_PREFETCH));
	}
	atomic_store(&st.stop, 1);
	ASSERT_EQ(0, pthread_join(thread, NULL));
	after = gmem_stat("fault_retries");
	TH_LOG("%ld munmaps meanwhile, %ld device fault retries", atomic_load(&st.rounds),
	       after - before);
	ASSERT_LE(500, atomic_load(&st.rounds));
	ASSERT_EQ(before, after);
	ASSERT_EQ(-1, check_words(p, self->len, 11, 4));
	ASSERT_EQ(0, munmap(reserve, 3 * window));
	expect_resident(_metadata, self->fd, self->start);
}

/* A thread that moves a range to an NPU and home again until told to stop. */
struct mover {
	char *p;
	size_t len;
	unsigned int hnid;
	atomic_int stop;
	long moves;
	int err;
};

static void *mover_thread(void *arg)
{
	struct mover *m = arg;

	while (!atomic_load(&m->stop)) {
		if (hmadvise(m->hnid, (unsigned long)m->p, m->len, MADV_PREFETCH) ||
		    hmadvise(0, (unsigned long)m->p, m->len, MADV_PREFETCH)) {
			m->err = errno;
			break;
		}
		m->moves++;
	}
	return NULL;
}

/*
 * After madvise(MADV_DONTNEED) or hmadvise(GM_NODE_ALL, MADV_DONTNEED)
 * returns, the range reads zeros, however GMEM moves its pages meanwhile.
 * A move to a device takes a page's PTE before it copies it: one that
 * started after the drop of the device pages and before the zap used to
 * put the old data on the device after the call (found by stress.mixed,
 * whose NPU jobs prefetch the advisor's pages).
 */
TEST_F_TIMEOUT(npu, dontneed_beats_a_concurrent_move, 300)
{
	struct mover m = { .len = 8 * self->page, .hnid = self->info[0].hnid };
	struct timespec t0, t1;
	pthread_t thread;
	long bad = -1;
	int i;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	m.p = mmap_peer_shared(NULL, m.len, 0);
	ASSERT_NE(MAP_FAILED, m.p);
	ASSERT_EQ(0, pthread_create(&thread, NULL, mover_thread, &m));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < 4000; i++) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (t1.tv_sec - t0.tv_sec > 60)
			break;
		fill_words(m.p, m.len, 1, 2 * i + 1);
		if (i % 2) {
			ASSERT_EQ(0, hmadvise(GM_NODE_ALL, (unsigned long)m.p,
					      m.len, MADV_DONTNEED));
		} else {
			ASSERT_EQ(0, madvise(m.p, m.len, MADV_DONTNEED));
		}
		bad = check_words(m.p, m.len, 0, 0);
		if (bad >= 0)
			break;
	}
	atomic_store(&m.stop, 1);
	ASSERT_EQ(0, pthread_join(thread, NULL));
	TH_LOG("%d drops, %ld round trips meanwhile", i, m.moves);
	ASSERT_EQ(0, m.err);
	ASSERT_EQ(-1, bad)
		TH_LOG("after %s number %d, word %ld is %#x, not 0",
		       i % 2 ? "hmadvise(GM_NODE_ALL, MADV_DONTNEED)" : "madvise(MADV_DONTNEED)",
		       i, bad, ((__u32 *)m.p)[bad]);
	ASSERT_EQ(0, munmap(m.p, m.len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Tracepoints (<trace/events/gmem.h>, tracefs events/gmem/): what they
 * record is checked against what the NPU's counters and the test itself
 * know.  Device work runs on the NPU's engine threads, so the events are
 * picked by address range and node, not by task.
 */
#define TRACEFS		"/sys/kernel/tracing"

/* Writes @val to the tracefs file @name (truncating it): 0, or an errno. */
static int tracefs_write(const char *name, const char *val)
{
	char path[128];
	int fd, err = 0;

	snprintf(path, sizeof(path), TRACEFS "/%s", name);
	fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (write(fd, val, strlen(val)) < 0)
		err = errno;
	close(fd);
	return err;
}

/* Mounts tracefs if it is not, empties the buffer, turns GMEM's events on. */
static int trace_start(void)
{
	int err;

	if (access(TRACEFS "/events", F_OK) &&
	    mount("nodev", TRACEFS, "tracefs", 0, NULL) && errno != EBUSY)
		return errno;
	if (access(TRACEFS "/events/gmem", F_OK))
		return errno;
	err = tracefs_write("tracing_on", "0");
	err = err ?: tracefs_write("buffer_size_kb", "8192");
	err = err ?: tracefs_write("trace", "");
	err = err ?: tracefs_write("events/gmem/enable", "1");
	return err ?: tracefs_write("tracing_on", "1");
}

static void trace_stop(void)
{
	tracefs_write("events/gmem/enable", "0");
}

/*
 * GMEM's events in the trace buffer for device @hnid and addresses
 * [@lo, @hi), summed.  A host node is a node below @first_hnid.
 */
struct gm_trace {
	long long dev_faults;		/* gmem_dev_fault events */
	long long fault_pages;		/* their pages */
	long long fault_errors;		/* those with ret != 0 */
	long long to_dev;		/* gmem_migrate to @hnid: pages */
	long long to_dev_zeroed;	/* of which zero-filled */
	long long from_host;		/* of which from a host node */
	long long from_nowhere;		/* of which from -1 (all zero) */
	long long from_other;		/* from anything else */
	long long to_host;		/* gmem_migrate from @hnid to a host node */
	long long cpu_faults;		/* gmem_cpu_fault from @hnid, ret 0 */
	long long prefetches;		/* gmem_prefetch events */
	long long prefetched;		/* their pages */
	long long evictions;		/* gmem_evict events */
	long long evicted;		/* their pages */
	long long lost;			/* lines that did not parse */
};

/* What follows "@event: " in the trace line @line, or NULL. */
static const char *event_args(const char *line, const char *event)
{
	char tag[64];
	const char *at;

	snprintf(tag, sizeof(tag), " %s: ", event);
	at = strstr(line, tag);
	return at ? at + strlen(tag) : NULL;
}

/* Adds the GMEM event of the trace line @line to @t. */
static void trace_add(const char *line, int hnid, unsigned int first_hnid,
		      unsigned long lo, unsigned long hi, struct gm_trace *t)
{
	unsigned int a, b;
	unsigned long va;
	const char *e;
	int h, x, y;

	e = event_args(line, "gmem_dev_fault");
	if (e) {
		if (sscanf(e, "hnid=%d va=%lx faults=%u pages=%u prefetched=%*u ret=%d",
			   &h, &va, &a, &b, &x) != 5) {
			t->lost++;
		} else if (h == hnid && va >= lo && va < hi) {
			t->dev_faults++;
			t->fault_pages += b;
			t->fault_errors += x != 0;
		}
		return;
	}
	e = event_args(line, "gmem_migrate");
	if (e) {
		if (sscanf(e, "va=%lx pages=%u zeroed=%u from=%d to=%d",
			   &va, &a, &b, &x, &y) != 5) {
			t->lost++;
		} else if (va < lo || va >= hi) {
			return;
		} else if (y == hnid) {
			t->to_dev += a;
			t->to_dev_zeroed += b;
			if (x == -1 && a == b)
				t->from_nowhere += a;
			else if (x >= 0 && (unsigned int)x < first_hnid)
				t->from_host += a;
			else
				t->from_other += a;
		} else if (x == hnid && y >= 0 && (unsigned int)y < first_hnid) {
			t->to_host += a;
		}
		return;
	}
	e = event_args(line, "gmem_cpu_fault");
	if (e) {
		if (sscanf(e, "va=%lx from=%d ret=%d", &va, &x, &y) != 3)
			t->lost++;
		else if (va >= lo && va < hi && x == hnid && !y)
			t->cpu_faults++;
		return;
	}
	e = event_args(line, "gmem_prefetch");
	if (e) {
		if (sscanf(e, "hnid=%d va=%lx faulted=%u pages=%u",
			   &h, &va, &a, &b) != 4) {
			t->lost++;
		} else if (h == hnid && va >= (lo & ~(BLOCK - 1)) && va < hi) {
			t->prefetches++;
			t->prefetched += b;
		}
		return;
	}
	e = event_args(line, "gmem_evict");
	if (e) {
		if (sscanf(e, "hnid=%d wanted=%u evicted=%u ret=%d",
			   &h, &a, &b, &x) != 4) {
			t->lost++;
		} else if (h == hnid) {
			t->evictions++;
			t->evicted += b;
		}
	}
}

static int trace_read(int hnid, unsigned int first_hnid, unsigned long lo,
		      unsigned long hi, struct gm_trace *t)
{
	FILE *f = fopen(TRACEFS "/trace", "r");
	char line[512];

	if (!f)
		return errno;
	memset(t, 0, sizeof(*t));
	while (fgets(line, sizeof(line), f))
		if (line[0] != '#')
			trace_add(line, hnid, first_hnid, lo, hi, t);
	fclose(f);
	return 0;
}

/* Waits until NPU @fd's evictions stop (the reserve's worker is done). */
static int evictions_settle(int fd, struct gmem_npu_stats *s)
{
	__u64 last = ~0ULL;
	int same = 0;

	for (int i = 0; i < 500 && same < 3; i++) {
		if (npu_stats(fd, s))
			return errno;
		same = s->evictions == last ? same + 1 : 0;
		last = s->evictions;
		usleep(20000);
	}
	return same < 3 ? ETIMEDOUT : 0;
}

/* The lowest hnid: every NUMA node of host memory is below it. */
static unsigned int first_hnid(const struct gmem_npu_info info[2], int fd1)
{
	return fd1 >= 0 && info[1].hnid < info[0].hnid ? info[1].hnid : info[0].hnid;
}

/* The six events exist, with the fields Documentation/mm/gmem.rst names. */
TEST(tracepoint_formats)
{
	static const char *const want[][7] = {
		{ "gmem_dev_fault", "hnid", "va", "faults", "pages", "prefetched", "ret" },
		{ "gmem_cpu_fault", "va", "from", "ret" },
		{ "gmem_migrate", "va", "pages", "zeroed", "from", "to" },
		{ "gmem_prefetch", "hnid", "va", "faulted", "pages" },
		{ "gmem_evict", "hnid", "wanted", "evicted", "ret" },
		{ "gmem_thrashing", "hnid", "va", "pages", "in_place" },
	};
	char path[128], buf[4096], field[64];
	ssize_t n;
	int fd;

	if (access(TRACEFS "/events", F_OK) &&
	    mount("nodev", TRACEFS, "tracefs", 0, NULL) && errno != EBUSY)
		SKIP(return, "no tracefs: %s", strerror(errno));
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		snprintf(path, sizeof(path), TRACEFS "/events/gmem/%s/format",
			 want[i][0]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		ASSERT_LE(0, fd) TH_LOG("%s: %s", path, strerror(errno));
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		ASSERT_LT(0, n);
		buf[n] = 0;
		for (int j = 1; j < 7 && want[i][j]; j++) {
			snprintf(field, sizeof(field), " %s;", want[i][j]);
			EXPECT_NE(NULL, strstr(buf, field))
				TH_LOG("%s has no field %s", want[i][0], want[i][j]);
		}
	}
}

/*
 * A round trip shows in the trace: the NPU reads pages the CPU wrote (one
 * migration per page to the NPU, from a host node, after device faults
 * that name each page once), the CPU reads them back (one CPU fault per
 * page, from the NPU, and the migrations home), and the NPU fills
 * untouched memory (zero fills, from no node).
 */
TEST_F(npu, tracepoints_show_a_round_trip)
{
	unsigned int low = first_hnid(self->info, self->fd[1]);
	int hnid = self->info[0].hnid, err;
	struct gm_trace t;
	char *p, *q;
	__u64 sum;

	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, p);
	q = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, q);
	fill_words(p, self->len, 3, 1);
	err = trace_start();
	if (err)
		SKIP(return, "no GMEM events in tracefs: %s", strerror(err));
	ASSERT_EQ(0, npu_sum(self->fd[0], p, self->len, &sum));
	ASSERT_EQ(sum_words(self->len, 3, 1), sum);
	ASSERT_EQ(-1, check_words(p, self->len, 3, 1));
	ASSERT_EQ(0, npu_fill(self->fd[0], q, self->len, 9));
	trace_stop();

	ASSERT_EQ(0, trace_read(hnid, low, (unsigned long)p,
				(unsigned long)p + self->len, &t));
	EXPECT_EQ(0, t.lost);
	EXPECT_EQ((long long)self->npages, t.to_dev);
	EXPECT_EQ(0, t.to_dev_zeroed);
	EXPECT_EQ((long long)self->npages, t.from_host);
	EXPECT_EQ(0, t.from_other);
	EXPECT_EQ((long long)self->npages, t.cpu_faults);
	EXPECT_EQ((long long)self->npages, t.to_host);
	if (self->faultable) {
		EXPECT_LE(1, t.dev_faults);
		EXPECT_EQ((long long)self->npages, t.fault_pages);
	} else {
		/* A prefaulting NPU's jobs make ranges resident: no fault. */
		EXPECT_EQ(0, t.dev_faults);
	}
	EXPECT_EQ(0, t.fault_errors);

	ASSERT_EQ(0, trace_read(hnid, low, (unsigned long)q,
				(unsigned long)q + self->len, &t));
	EXPECT_EQ((long long)self->npages, t.to_dev);
	EXPECT_EQ((long long)self->npages, t.to_dev_zeroed);
	EXPECT_EQ((long long)self->npages, t.from_nowhere);
	EXPECT_EQ(0, t.cpu_faults);
	EXPECT_EQ(0, t.to_host);
	ASSERT_EQ(-1, check_words(q, self->len, 0, 9));
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(0, munmap(q, self->len));
	expect_resident(_metadata, self->fd, self->start);
}

/*
 * Density prefetch and eviction show in the trace as the NPU's counters
 * count them: the pages prefetched, and the evictions of a stream through
 * an NPU whose limit is lowered (counted between two readings of the
 * counters, since eviction may go on in the background).
 */
TEST_F_TIMEOUT(npu, tracepoints_count_prefetch_and_eviction, 300)
{
	unsigned int low = first_hnid(self->info, self->fd[1]);
	size_t len = 2 * BLOCK, stream = 2 * OVERSUB_LIMIT;
	int hnid = self->info[0].hnid, err;
	struct gmem_npu_stats s0, s1, a, b;
	unsigned long long limit;
	struct gm_trace t;
	char path[128];
	char *p, *q;

	if (!self->faultable)
		SKIP(return, "a prefaulting NPU raises no faults to widen");
	ASSERT_EQ(0, gm_node_write(hnid, "prefetch_threshold", 51));
	ASSERT_EQ(0, npu_attach(self->fd[0]));
	p = mmap_block_aligned(len);
	ASSERT_NE(MAP_FAILED, p);
	err = trace_start();
	if (err)
		SKIP(return, "no GMEM events in tracefs: %s", strerror(err));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	ASSERT_EQ(0, npu_fill(self->fd[0], p, len, 3));
	ASSERT_EQ(0, npu_stats(self->fd[0], &s1));
	trace_stop();
	ASSERT_EQ(0, trace_read(hnid, low, (unsigned long)p,
				(unsigned long)p + len, &t));
	EXPECT_EQ(0, t.lost);
	ASSERT_LT(0, s1.prefetched_pages - s0.prefetched_pages);
	EXPECT_LE(1, t.prefetches);
	EXPECT_EQ((long long)(s1.prefetched_pages - s0.prefetched_pages), t.prefetched);
	EXPECT_EQ((long long)(s1.faults - s0.faults), t.fault_pages);
	EXPECT_EQ((long long)(len / self->page), t.to_dev);
	ASSERT_EQ(-1, check_words(p, len, 0, 3));
	ASSERT_EQ(0, munmap(p, len));

	ASSERT_EQ(0, gm_node_write(hnid, "prefetch_threshold", 0));
	limit_path(&self->info[0], path, sizeof(path));
	ASSERT_EQ(0, read_ull(path, &limit));
	ASSERT_EQ(0, write_ull(path, OVERSUB_LIMIT));
	q = mmap_peer_shared(NULL, stream, 0);
	ASSERT_NE(MAP_FAILED, q);
	ASSERT_EQ(0, npu_stats(self->fd[0], &s0));
	ASSERT_EQ(0, trace_start());
	ASSERT_EQ(0, npu_stats(self->fd[0], &s1));
	for (size_t off = 0; off < stream; off += OVERSUB_CHUNK)
		ASSERT_EQ(0, npu_fill(self->fd[0], q + off, OVERSUB_CHUNK, 5));
	ASSERT_EQ(0, evictions_settle(self->fd[0], &a));
	trace_stop();
	ASSERT_EQ(0, npu_stats(self->fd[0], &b));
	ASSERT_EQ(0, write_ull(path, limit));
	ASSERT_EQ(0, trace_read(hnid, low, (unsigned long)q,
				(unsigned long)q + stream, &t));
	EXPECT_EQ(0, t.lost);
	ASSERT_LE((stream - OVERSUB_LIMIT) / self->page,
		  a.evictions - s1.evictions);
	EXPECT_LE(1, t.evictions);
	EXPECT_LE((long long)(a.evictions - s1.evictions), t.evicted);
	EXPECT_GE((long long)(b.evictions - s0.evictions), t.evicted);
	ASSERT_EQ(-1, check_words(q, stream, 0, 5));
	ASSERT_EQ(0, munmap(q, stream));
	expect_resident(_metadata, self->fd, self->start);
}

TEST_HARNESS_MAIN
