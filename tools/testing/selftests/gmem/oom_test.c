// SPDX-License-Identifier: GPL-2.0
/*
 * GMEM when host memory runs out: a GMEM process with pages on an NPU, in
 * host memory and parked (evicted) can be OOM-killed and leaves nothing
 * behind; a prefetch home or an eviction that finds no host memory fails
 * with ENOMEM (Documentation/mm/gmem.rst, hmadvise() and "When") or the
 * OOM killer makes room, and nobody's data is corrupted.
 *
 * Memory is exhausted for one child only: in a cgroup v2 memory.max where
 * the kernel has the memory controller, else for the whole machine with
 * the child the OOM killer's first choice (oom_score_adj 1000) and the
 * test process out of its reach (-1000).
 *
 * Device memory and host memory are global: run nothing else meanwhile.
 */
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define PATTERN_SEED	0x6f6f6d5eedUL
#define OOM_LIMIT	(4UL << 20)	/* npu0's limit: the child parks pages */
#define CGROUP_ROOT	"/sys/fs/cgroup"

static int write_str(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	int ret;

	if (!f)
		return -1;
	ret = fputs(s, f) < 0;
	return fclose(f) || ret ? -1 : 0;
}

static int set_oom_score_adj(int adj)
{
	char s[16];

	snprintf(s, sizeof(s), "%d\n", adj);
	return write_str("/proc/self/oom_score_adj", s);
}

/* MemAvailable of /proc/meminfo, in bytes, or -1. */
static long long mem_available(void)
{
	long long kib = -1;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1)
			break;
	fclose(f);
	return kib < 0 ? -1 : kib << 10;
}

/*
 * Takes ordinary memory, 2 MiB (a huge page where THP allows, which is
 * quick under emulation) at a time, until less than @leave bytes are
 * available, or for ever if @leave is negative.  Returns only once the
 * target is reached.
 */
static void hog(long long leave)
{
	const size_t chunk = 32UL << 20;

	for (;;) {
		char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		if (p == MAP_FAILED)
			continue;
		madvise(p, chunk, MADV_HUGEPAGE);
		for (size_t off = 0; off < chunk; off += 4096) {
			p[off] = 1;
			if (leave >= 0 && !(off & ((2UL << 20) - 1)) &&
			    mem_available() < leave)
				return;
		}
	}
}

/*
 * A GMEM process's memory in every place GMEM keeps it: 2 * @len bytes
 * with a pattern, of which the first @len were prefetched to the NPU (fd
 * attached, node @hnid) and, beyond the NPU's limit, parked; the rest in
 * host memory.  Returns the buffer, or NULL.
 */
static char *spread_gmem(int hnid, size_t len)
{
	char *p = mmap_peer_shared(NULL, 2 * len, 0);

	if (p == MAP_FAILED)
		return NULL;
	fill_pattern(p, 2 * len, PATTERN_SEED);
	if (hmadvise(hnid, (unsigned long)p, len, MADV_PREFETCH))
		return NULL;
	return p;
}

FIXTURE(oom)
{
	struct gm_baseline base;
	struct gmem_npu_info info;
	unsigned long long limit;	/* npu0's, restored at teardown */
	int limit_changed;
	char *mine;			/* the test process's own buffer */
	size_t mine_len;
	int fd;				/* the NPU that holds it */
	char cgroup[128];		/* the child cgroup, "" if none */
	int subtree_memory;		/* we enabled +memory in the root */
};

FIXTURE_SETUP(oom)
{
	struct gmem_npu_info info;
	int npu = 1;

	/*
	 * Every case may wake the OOM killer, whose report has a stack
	 * ("Call Trace:"): harness/report.py knows it for no splat.
	 */
	if (access(npu_dev_path[0], F_OK))
		SKIP(return, "no %s (gmem_npu_sim not loaded, or no ivshmem device)",
		     npu_dev_path[0]);
	ASSERT_EQ(0, gm_baseline_take(&self->base));
	self->fd = npu_open_attached(0);
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, npu_get_info(self->fd, &self->info));
	close(self->fd);
	ASSERT_EQ(0, gm_limit_reset(self->info.hnid, self->info.dram_size));
	/* The test process's data lives on the other NPU, if there is one. */
	if (self->base.nnpu < 2)
		npu = 0;
	self->fd = npu_open_attached(npu);
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, npu_get_info(self->fd, &info));
	self->mine_len = 2UL << 20;
	self->mine = mmap_peer_shared(NULL, self->mine_len, 0);
	ASSERT_NE(MAP_FAILED, self->mine);
	fill_pattern(self->mine, self->mine_len, ~PATTERN_SEED);
	ASSERT_EQ(0, hmadvise(info.hnid, (unsigned long)self->mine,
			      self->mine_len, MADV_PREFETCH));
	/* Only the children may be chosen by the OOM killer. */
	ASSERT_EQ(0, set_oom_score_adj(-1000));
	self->limit = gm_node_read(self->info.hnid, "limit");
	ASSERT_EQ(self->info.dram_size, self->limit);
	self->limit_changed = 1;
	ASSERT_EQ(0, gm_node_write(self->info.hnid, "limit", OOM_LIMIT));
}

FIXTURE_TEARDOWN(oom)
{
	char why[512];
	__u64 sum;

	if (self->cgroup[0])
		EXPECT_EQ(0, rmdir(self->cgroup)) TH_LOG("rmdir %s", self->cgroup);
	if (self->subtree_memory)
		EXPECT_EQ(0, write_str(CGROUP_ROOT "/cgroup.subtree_control",
				       "-memory"));
	if (self->limit_changed)
		EXPECT_EQ(0, gm_node_write(self->info.hnid, "limit", self->limit));
	if (self->mine && self->mine != MAP_FAILED) {
		/* The test process's data survived the children's OOM. */
		EXPECT_EQ(0, npu_sum(self->fd, self->mine, self->mine_len, &sum));
		EXPECT_EQ(sum32(self->mine, self->mine_len), sum);
		EXPECT_EQ(-1, check_pattern(self->mine, self->mine_len,
					    ~PATTERN_SEED));
		EXPECT_EQ(0, munmap(self->mine, self->mine_len));
	}
	close(self->fd);
	EXPECT_EQ(0, gm_baseline_wait(&self->base, 20, why, sizeof(why)))
		TH_LOG("%s", why);
}

/*
 * A child cgroup with the memory controller and memory.max = @max, or a
 * skip if the kernel has no memory controller (CONFIG_MEMCG).
 */
static int make_memcg(char *cgroup, size_t size, int *subtree_memory,
		      const char *max)
{
	char path[192], buf[256] = "";
	FILE *f;

	if (access(CGROUP_ROOT "/cgroup.controllers", F_OK))
		mount("cgroup2", CGROUP_ROOT, "cgroup2", 0, NULL);
	f = fopen(CGROUP_ROOT "/cgroup.controllers", "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	if (!strstr(buf, "memory"))
		return -1;
	f = fopen(CGROUP_ROOT "/cgroup.subtree_control", "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	if (!strstr(buf, "memory")) {
		if (write_str(CGROUP_ROOT "/cgroup.subtree_control", "+memory"))
			return -1;
		*subtree_memory = 1;
	}
	snprintf(cgroup, size, CGROUP_ROOT "/gmem_oom_test.%d", getpid());
	if (mkdir(cgroup, 0755)) {
		cgroup[0] = '\0';
		return -1;
	}
	snprintf(path, sizeof(path), "%s/memory.max", cgroup);
	if (write_str(path, max))
		return -1;
	/* No swap to escape to, where there is swap accounting. */
	snprintf(path, sizeof(path), "%s/memory.swap.max", cgroup);
	write_str(path, "0");
	return 0;
}

/* Moves the calling process into the cgroup: 0, or -1. */
static int join_memcg(const char *cgroup)
{
	char path[192], pid[32];

	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	snprintf(pid, sizeof(pid), "%d\n", getpid());
	return write_str(path, pid);
}

/*
 * The victim: attached to npu0, with pages on the NPU, parked and in host
 * memory, then taking memory until the OOM killer ends it.
 */
static int gmem_then_hog(int hnid, const char *cgroup)
{
	int fd;

	/* The OOM killer's choice, in the cgroup too (the test process is -1000). */
	if ((cgroup && join_memcg(cgroup)) || set_oom_score_adj(1000))
		return 1;
	fd = npu_open_attached(0);
	if (fd < 0 || !spread_gmem(hnid, 4 * OOM_LIMIT))
		return 2;
	hog(-1);
	return 3;
}

/*
 * A process with GMEM memory everywhere is OOM-killed (SIGKILL) for the
 * whole machine's memory; the OOM reaper and exit free its NPU pages,
 * parked pages and tracking.
 */
TEST_F_TIMEOUT(oom, global_oom_kills_gmem_process, 300)
{
	pid_t pid = fork();
	int ret;

	ASSERT_LE(0, pid);
	if (!pid)
		_exit(gmem_then_hog(self->info.hnid, NULL));
	ret = wait_child(pid);
	ASSERT_EQ(128 + SIGKILL, ret) TH_LOG("the child ended with %d", ret);
}

/* The same inside a memory cgroup: the memcg OOM killer ends it. */
TEST_F_TIMEOUT(oom, memcg_oom_kills_gmem_process, 300)
{
	pid_t pid;
	int ret;

	if (make_memcg(self->cgroup, sizeof(self->cgroup),
		       &self->subtree_memory, "64M"))
		SKIP(return, "no cgroup v2 memory controller (CONFIG_MEMCG)");
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(gmem_then_hog(self->info.hnid, self->cgroup));
	ret = wait_child(pid);
	ASSERT_EQ(128 + SIGKILL, ret) TH_LOG("the child ended with %d", ret);
}

/*
 * Starts a hog (the OOM killer's first choice) that leaves less than
 * @leave bytes available and then waits to be killed; returns its pid once
 * the target is reached.
 */
static pid_t start_hog(long long leave)
{
	int pipefd[2];
	pid_t pid;
	char c;

	if (pipe(pipefd))
		return -1;
	pid = fork();
	if (!pid) {
		set_oom_score_adj(1000);
		hog(leave);
		write(pipefd[1], "h", 1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	if (pid > 0 && read(pipefd[0], &c, 1) != 1) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		pid = -1;
	}
	close(pipefd[0]);
	return pid;
}

/*
 * The process under test, with @len bytes on the NPU, parked beyond its
 * limit: what it does once host memory is short (@prefetch: bring them home
 * at once; otherwise run them through the NPU again, which evicts), then
 * every byte checked.  ENOMEM is allowed and retried; any other error is
 * not.
 */
static int gmem_under_pressure(int hnid, size_t len, int prefetch,
			       int ready, int go)
{
	int fd = npu_open_attached(0);
	int enomem = 0;
	char *p, c;
	__u64 sum;

	p = fd < 0 ? NULL : spread_gmem(hnid, len);
	if (!p)
		return 10;
	if (write(ready, "r", 1) != 1 || read(go, &c, 1) != 1)
		return 11;
	for (int tries = 0; tries < 100; tries++) {
		long ret;

		if (prefetch) {
			ret = hmadvise(0, (unsigned long)p, 2 * len, MADV_PREFETCH);
		} else {
			ret = 0;
			for (size_t off = 0; off < 2 * len && !ret; off += OOM_LIMIT / 4)
				ret = npu_sum(fd, p + off, OOM_LIMIT / 4, &sum) ? -1 : 0;
		}
		if (!ret)
			break;
		if (errno != ENOMEM)
			return 12;
		enomem++;
		usleep(10000);
	}
	if (check_pattern(p, 2 * len, PATTERN_SEED) != -1)
		return 13;
	return munmap(p, 2 * len) ? 14 : 0;
}

static void under_pressure(struct __test_metadata *_metadata, int hnid,
			   int prefetch)
{
	int ready[2], go[2], ret;
	pid_t pid, hogger;
	char c;

	ASSERT_EQ(0, pipe(ready));
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(gmem_under_pressure(hnid, 8 * OOM_LIMIT,
					  prefetch, ready[1], go[0]));
	ASSERT_EQ(1, read(ready[0], &c, 1));
	/* Less host memory left than the process's parked pages need. */
	hogger = start_hog(8 * OOM_LIMIT);
	ASSERT_LT(0, hogger);
	ASSERT_EQ(1, write(go[1], "g", 1));
	ret = wait_child(pid);
	kill(hogger, SIGKILL);
	waitpid(hogger, NULL, 0);
	ASSERT_EQ(0, ret) TH_LOG("the GMEM process's step %d failed", ret);
	close(ready[0]);
	close(ready[1]);
	close(go[0]);
	close(go[1]);
}

/*
 * hmadvise(MADV_PREFETCH) to a host node of 32 MiB of NPU-resident and
 * parked pages with less host memory available than that: ENOMEM, or the
 * OOM killer takes the hog and it succeeds; the data is intact.
 */
TEST_F_TIMEOUT(oom, prefetch_home_without_memory, 300)
{
	under_pressure(_metadata, self->info.hnid, 1);
}

/* The NPU evicting to host memory that is short: the same. */
TEST_F_TIMEOUT(oom, eviction_without_memory, 300)
{
	under_pressure(_metadata, self->info.hnid, 0);
}

/* A number from @file of @cgroup (the first if there are several), or -1. */
static long long cg_read(const char *cgroup, const char *file)
{
	char path[256];
	long long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", cgroup, file);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* The value for @region in a dmem file of @cgroup ("<region> <value>" lines), or -1. */
static long long dmem_read(const char *cgroup, const char *file, const char *region)
{
	char path[256], name[128];
	long long v = -1, x;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", cgroup, file);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fscanf(f, "%127s %lld", name, &x) == 2)
		if (!strcmp(name, region))
			v = x;
	fclose(f);
	return v;
}

#define CG_EVICT_LEN	(16UL << 20)	/* four times npu0's limit */
#define CG_DMEM_MAX	(1024UL * 1024)	/* the child cgroup's share of npu0 */

/*
 * In the child cgroup, whose dmem.max lets it hold 1 MiB of npu0: the NPU
 * fills a buffer sixteen times that, so that the child's own pages are
 * evicted into host pages, which are charged to the cgroup's memory (they
 * are the child's data) while its device memory stays under dmem.max.
 * The child does not run the NPU's faults itself (the driver's worker
 * does): GMEM charges the cgroup of the task that attached the device.
 * Every byte is checked.  Returns 0, or the step that failed.
 */
static int cgroup_child(const char *cgroup, const char *region)
{
	long long before, after, dmem;
	__u32 *p;
	int fd;

	if (join_memcg(cgroup))
		return 1;
	fd = npu_open_attached(0);
	if (fd < 0)
		return 2;
	p = mmap_peer_shared(NULL, CG_EVICT_LEN, 0);
	if (p == MAP_FAILED)
		return 3;
	before = cg_read(cgroup, "memory.current");
	if (npu_fill(fd, p, CG_EVICT_LEN, 0x5a5a0001))
		return 4;
	after = cg_read(cgroup, "memory.current");
	dmem = dmem_read(cgroup, "dmem.current", region);
	fprintf(stderr, "# memory.current %lld -> %lld, dmem.current %lld (max %lu)\n",
		before, after, dmem, CG_DMEM_MAX);
	/* The NPU holds some of the child's pages, charged to it, within its limit. */
	if (dmem <= 0 || dmem > (long long)CG_DMEM_MAX)
		return 5;
	/* The evicted pages are charged to the child (some slack for its NPU's jobs). */
	if (after - before < (long long)(CG_EVICT_LEN - CG_DMEM_MAX) * 9 / 10)
		return 6;
	for (size_t i = 0; i < CG_EVICT_LEN / 4; i++)
		if (p[i] != 0x5a5a0001)
			return 7;
	if (munmap(p, CG_EVICT_LEN))
		return 8;
	/* Unmapped: its device memory is uncharged. */
	if (dmem_read(cgroup, "dmem.current", region) != 0)
		return 9;
	return 0;
}

/*
 * A cgroup's limits hold for what GMEM keeps: the host pages that hold
 * pages evicted from a device are charged to the memory cgroup of the
 * process they belong to, and device memory to its dmem cgroup (each NPU's
 * memory is the region gmem/<name>), whose dmem.max holds.
 */
TEST_F_TIMEOUT(oom, cgroup_limits_hold_for_evicted_and_device_memory, 300)
{
	char name[64] = "", region[96], path[256], buf[512] = "";
	int dmem_enabled = 0, ret;
	FILE *f;
	pid_t pid;

	if (make_memcg(self->cgroup, sizeof(self->cgroup),
		       &self->subtree_memory, "max"))
		SKIP(return, "no cgroup v2 memory controller (CONFIG_MEMCG)");
	f = fopen(CGROUP_ROOT "/cgroup.controllers", "r");
	ASSERT_NE(NULL, f);
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	if (!strstr(buf, "dmem"))
		SKIP(return, "no dmem cgroup controller (CONFIG_CGROUP_DMEM)");
	snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/name", self->info.hnid);
	f = fopen(path, "r");
	ASSERT_NE(NULL, f);
	ASSERT_EQ(1, fscanf(f, "%63s", name));
	fclose(f);
	snprintf(region, sizeof(region), "gmem/%s", name);
	/* GMEM registered the NPU's memory with the dmem controller. */
	ASSERT_LT(0, dmem_read(CGROUP_ROOT, "dmem.capacity", region))
		TH_LOG("no region %s in dmem.capacity", region);
	/* The child cgroup gets the dmem controller (memory is on already). */
	f = fopen(CGROUP_ROOT "/cgroup.subtree_control", "r");
	ASSERT_NE(NULL, f);
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	if (!strstr(buf, "dmem")) {
		ASSERT_EQ(0, write_str(CGROUP_ROOT "/cgroup.subtree_control", "+dmem"));
		dmem_enabled = 1;
	}
	snprintf(path, sizeof(path), "%s/dmem.max", self->cgroup);
	snprintf(buf, sizeof(buf), "%s %lu", region, CG_DMEM_MAX);
	ASSERT_EQ(0, write_str(path, buf));
	ASSERT_EQ((long long)CG_DMEM_MAX, dmem_read(self->cgroup, "dmem.max", region));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(cgroup_child(self->cgroup, region));
	ret = wait_child(pid);
	if (dmem_enabled)
		EXPECT_EQ(0, write_str(CGROUP_ROOT "/cgroup.subtree_control", "-dmem"));
	ASSERT_EQ(0, ret) TH_LOG("the child failed at step %d", ret);
}

TEST_HARNESS_MAIN
