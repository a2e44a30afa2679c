// SPDX-License-Identifier: GPL-2.0
/*
 * Range attributes (Documentation/mm/gmem.rst, "Range attributes"):
 * hmadvise()'s MADV_PREFERRED_LOCATION, MADV_NO_PREFERRED_LOCATION,
 * MADV_PIN and MADV_UNPIN, MADV_ACCESSED_BY, MADV_READ_MOSTLY (read-only
 * copies on the devices), MADV_PREFETCH to each page's preferred
 * location, and /proc/<pid>/gmem_maps, which shows the attributes and
 * where the pages are.  The tests check the errors (a refused call changes
 * nothing), the file's format and who may read it, the attributes' life
 * through munmap, mremap, mprotect, fork and a detach, and what preferred
 * and pinned pages do under eviction; every test checks the data, and the
 * pin tests the NPU's pinned count in sysfs.
 *
 * The tests that use only host nodes run without the simulated NPU, the
 * others skip without it.  Device memory and its counters are global:
 * nothing else may use the NPUs while this runs.
 */
#include <signal.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define NPAGES		16	/* pages of most test ranges */
#define FENCE_PAGES	4	/* ordinary PROT_NONE pages either side of them */
#define MAPS_LINES	64

/* The eviction tests: npu0's limit lowered, and jobs that stream through it. */
#define SMALL_LIMIT	128	/* pages */
#define STREAM_JOB	16	/* pages a job */

#define NO_NPU		"no %s (gmem_npu_sim not loaded, or no ivshmem device)"

static const int attr_advices[] = {
	MADV_PREFERRED_LOCATION, MADV_NO_PREFERRED_LOCATION, MADV_PIN,
	MADV_UNPIN, MADV_ACCESSED_BY, MADV_NO_ACCESSED_BY, MADV_READ_MOSTLY,
	MADV_NO_READ_MOSTLY,
};

/* This process's gmem_maps, as text and parsed. */
struct maps {
	char text[16384];
	struct gm_maps_line l[MAPS_LINES];
	int n;
};

/* Reads and parses this process's gmem_maps: 0, or -1 (errno, or a bad line). */
static int maps_load(struct maps *m)
{
	m->n = 0;
	if (gm_maps_text(0, m->text, sizeof(m->text)) < 0)
		return -1;
	m->n = gm_maps_parse(m->text, m->l, MAPS_LINES, sysconf(_SC_PAGESIZE));
	return m->n < 0 || m->n > MAPS_LINES ? -1 : 0;
}

static void read_maps(struct __test_metadata *_metadata, struct maps *m)
{
	ASSERT_EQ(0, maps_load(m))
		TH_LOG("gmem_maps: %s; line %d wrong (of %d at most):\n%s",
		       strerror(errno), -1 - m->n, MAPS_LINES, m->text);
}

/* Pages of a line on @node, or on every host node for HOST. */
#define HOST	(-2)

static long line_pages(const struct gm_maps_line *l, int node)
{
	static int host_nodes;
	long pages = 0;

	if (!host_nodes)
		host_nodes = online_host_nodes();
	for (int i = 0; i < l->nnodes; i++)
		if (node == HOST ? l->node[i] < host_nodes : l->node[i] == node)
			pages += l->pages[i];
	return pages;
}

/*
 * What a test expects of a run of pages with the same attributes: its
 * length, its attributes (-1: none) and how many of its pages are on
 * npu0 and in host memory (ANY: not checked).
 */
#define ANY	(-1)

struct run {
	size_t pages;
	int preferred;
	int pinned;
	long on_npu;
	long at_home;
};

/*
 * Whether gmem_maps shows the runs @want from @p on, back to back: -1 if
 * it does, else the index of the first run that differs.  Each run is
 * one line, or with @split several (where VMA boundaries may cut it), and
 * nothing else is there.  @hnid is npu0's node.
 */
static int runs_differ(const struct maps *m, const void *p,
		       const struct run *want, int n, int split, int hnid)
{
	unsigned long at = (unsigned long)p, page = sysconf(_SC_PAGESIZE);
	int i = 0;

	while (i < m->n && m->l[i].end <= at)
		i++;
	for (int k = 0; k < n; k++) {
		unsigned long end = at + want[k].pages * page;
		long on_npu = 0, at_home = 0;
		int lines = 0;

		for (; i < m->n && m->l[i].start < end; i++, lines++) {
			const struct gm_maps_line *l = &m->l[i];

			if (l->start != at || l->end > end ||
			    l->preferred != want[k].preferred ||
			    l->pinned != want[k].pinned)
				return k;
			on_npu += hnid >= 0 ? line_pages(l, hnid) : 0;
			at_home += line_pages(l, HOST);
			at = l->end;
		}
		if (at != end || (!split && lines != 1) ||
		    (want[k].on_npu != ANY && want[k].on_npu != on_npu) ||
		    (want[k].at_home != ANY && want[k].at_home != at_home))
			return k;
	}
	return -1;
}

/* A run that is not there (too long for a line with the call). */
#define RUN_MISSING_FMT \
	"from %p, run %d (%zu pages, preferred %d, pinned %d, %ld on the NPU, %ld at home) is not there:\n%s"

static void expect_runs(struct __test_metadata *_metadata, const void *p,
			const struct run *want, int n, int split, int hnid)
{
	static struct maps m;
	int k;

	read_maps(_metadata, &m);
	k = runs_differ(&m, p, want, n, split, hnid);
	ASSERT_EQ(-1, k) TH_LOG(RUN_MISSING_FMT, p, k, want[k].pages,
				want[k].preferred, want[k].pinned,
				want[k].on_npu, want[k].at_home, m.text);
}

/* No line of gmem_maps covers any of [p, p + len). */
static void expect_absent(struct __test_metadata *_metadata, const void *p,
			  size_t len)
{
	unsigned long lo = (unsigned long)p, hi = lo + len;
	static struct maps m;

	read_maps(_metadata, &m);
	for (int i = 0; i < m.n; i++) {
		ASSERT_TRUE(m.l[i].end <= lo || m.l[i].start >= hi)
			TH_LOG("%p-%#lx is gone, yet:\n%s", p, hi, m.text);
	}
}

/* The line of gmem_maps that starts at @p, or NULL; valid until the next. */
static const struct gm_maps_line *line_at(struct __test_metadata *_metadata,
					  const void *p)
{
	static struct maps m;

	read_maps(_metadata, &m);
	for (int i = 0; i < m.n; i++)
		if (m.l[i].start == (unsigned long)p)
			return &m.l[i];
	return NULL;
}

/* Pages on @node of the line of gmem_maps that starts at @p, or -1. */
static long pages_at(struct __test_metadata *_metadata, const void *p,
		     int node)
{
	const struct gm_maps_line *l = line_at(_metadata, p);

	return l ? line_pages(l, node) : -1;
}

FIXTURE(policy)
{
	size_t page;
	size_t len;		/* NPAGES pages */
	int fd;			/* npu0, attached; -1: no NPU */
	int hnid;		/* npu0's node; -1: no NPU */
	unsigned long long dram_size;
	long long threshold;	/* npu0's prefetch_threshold, restored after */
	int limit_changed;	/* npu0's limit is lowered, restored after */
};

FIXTURE_SETUP(policy)
{
	struct gmem_npu_info info;

	self->page = sysconf(_SC_PAGESIZE);
	self->len = NPAGES * self->page;
	self->fd = -1;
	self->hnid = -1;
	self->threshold = -1;
	if (access(npu_dev_path[0], F_OK))
		return;		/* the tests that need it skip */
	self->fd = npu_open_attached(0);
	ASSERT_LE(0, self->fd) TH_LOG("%s: %s", npu_dev_path[0], strerror(errno));
	ASSERT_EQ(0, npu_get_info(self->fd, &info));
	self->hnid = info.hnid;
	self->dram_size = info.dram_size;
	ASSERT_EQ(0, gm_limit_reset(self->hnid, self->dram_size));
	/*
	 * The tests count pages moved one by one: density prefetch, which
	 * would take neighbours along on a device fault, is off.
	 */
	self->threshold = gm_node_read(self->hnid, "prefetch_threshold");
	ASSERT_LE(0, self->threshold);
	ASSERT_EQ(0, gm_node_write(self->hnid, "prefetch_threshold", 0));
}

FIXTURE_TEARDOWN(policy)
{
	if (self->limit_changed)
		gm_node_write(self->hnid, "limit", self->dram_size);
	if (self->threshold >= 0)
		gm_node_write(self->hnid, "prefetch_threshold", self->threshold);
	if (self->fd >= 0)
		close(self->fd);
}

/* @pages fresh peer-shared pages, fenced, filled by the CPU from @seed (not 0). */
static char *map_range(struct __test_metadata *_metadata, size_t pages,
		       unsigned long seed)
{
	size_t page = sysconf(_SC_PAGESIZE);
	char *p = mmap_fenced(pages * page, FENCE_PAGES * page, 1);

	ASSERT_NE(NULL, p) TH_LOG("mmap: %s", strerror(errno));
	if (seed)
		fill_pattern(p, pages * page, seed);
	return p;
}

static void unmap_range(struct __test_metadata *_metadata, char *p,
			size_t pages)
{
	size_t page = sysconf(_SC_PAGESIZE);

	ASSERT_EQ(0, munmap_fenced(p, pages * page, FENCE_PAGES * page));
}

/* hmadvise(@hnid) on pages [first, first + n) of @p, which must succeed. */
static void advise(struct __test_metadata *_metadata, int hnid, char *p,
		   size_t first, size_t n, int advice)
{
	size_t page = sysconf(_SC_PAGESIZE);
	int err = hmadvise_err(hnid, p + first * page, n * page, advice);

	ASSERT_EQ(0, err) TH_LOG("hmadvise(%d, pages %zu-%zu, %d): %s", hnid,
				 first, first + n - 1, advice, strerror(err));
}

static long long npu_pinned(int hnid)
{
	return gm_node_read(hnid, GM_NODE_PINNED);
}

/*
 * hmadvise() fails with @err and leaves gmem_maps (the attributes and
 * where every page is) and the pinned count of @npu (npu0's node, -1 if
 * there is none) as they were.
 */
static void expect_refused(struct __test_metadata *_metadata, int npu,
			   int err, int hnid, const void *p, size_t len,
			   int advice)
{
	long long pinned = npu >= 0 ? npu_pinned(npu) : 0;
	static struct maps before, after;

	read_maps(_metadata, &before);
	ASSERT_EQ(err, hmadvise_err(hnid, p, len, advice))
		TH_LOG("hmadvise(%d, %p, %#zx, %d)", hnid, p, len, advice);
	read_maps(_metadata, &after);
	ASSERT_STREQ(before.text, after.text)
		TH_LOG("the refused hmadvise(%d, %p, %#zx, %d) changed gmem_maps",
		       hnid, p, len, advice);
	ASSERT_EQ(pinned, npu >= 0 ? npu_pinned(npu) : 0);
}

/*
 * Attributes for pages [0, NPAGES) of @p that a call changing anything
 * would show: pages 0-7 prefer host node 0 and, with an NPU (@npu its
 * node, or -1), 8-11 are pinned on it and 12-15 prefer it.
 */
static void decorate(struct __test_metadata *_metadata, int npu, char *p)
{
	advise(_metadata, 0, p, 0, 8, MADV_PREFERRED_LOCATION);
	if (npu < 0)
		return;
	advise(_metadata, npu, p, 8, 4, MADV_PIN);
	advise(_metadata, npu, p, 12, 4, MADV_PREFERRED_LOCATION);
}

/*
 * The node an attribute advice is tried with where its node does not
 * matter: a host node for a preferred location, the NPU (@npu) for a pin
 * (-1 without one: then not tried), every node to undo either.
 */
static int node_for(int npu, int advice)
{
	switch (advice) {
	case MADV_PREFERRED_LOCATION:
		return 0;
	case MADV_PIN:
	case MADV_ACCESSED_BY:
		return npu;
	default:
		return GM_NODE_ALL;
	}
}

/* npu1's node (it need not be attached), or -1 if there is no npu1. */
static int npu1_hnid(void)
{
	struct gmem_npu_info info;
	int fd = open(npu_dev_path[1], O_RDWR | O_CLOEXEC);
	int ret;

	if (fd < 0)
		return -1;
	ret = npu_get_info(fd, &info);
	close(fd);
	return ret ? -1 : (int)info.hnid;
}

/* npu1, attached; the test fails if it cannot be. */
static int open_npu1(struct __test_metadata *_metadata)
{
	int fd = npu_open_attached(1);

	ASSERT_LE(0, fd) TH_LOG("%s: %s", npu_dev_path[1], strerror(errno));
	return fd;
}

/* Errors: EINVAL or ENOMEM as for every advice, and nothing changes. */

/* A node that is no node: negative, never online, past any device. */
TEST_F(policy, bad_node_einval)
{
	int bad[] = { -2, -1000, 63, 1 << 20, 0x7fffffff, self->hnid + 64 };
	char *p = map_range(_metadata, NPAGES, 1);

	decorate(_metadata, self->hnid, p);
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++)
		for (size_t b = 0; b < ARRAY_SIZE(bad); b++)
			expect_refused(_metadata, self->hnid, EINVAL, bad[b], p,
				       self->len, attr_advices[a]);
	ASSERT_EQ(-1, check_pattern(p, self->len, 1));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * GM_NODE_ALL: refused by the advices that name one node (a preferred
 * location, a pin); "every node" for those that undo them, and for
 * MADV_PREFETCH (to each page's preferred location).
 */
TEST_F(policy, all_nodes)
{
	const struct run none = { NPAGES, -1, -1, ANY, NPAGES };
	char *p = map_range(_metadata, NPAGES, 2);

	decorate(_metadata, self->hnid, p);
	expect_refused(_metadata, self->hnid, EINVAL, GM_NODE_ALL, p, self->len,
		       MADV_PREFERRED_LOCATION);
	expect_refused(_metadata, self->hnid, EINVAL, GM_NODE_ALL, p, self->len,
		       MADV_PIN);
	expect_refused(_metadata, self->hnid, EINVAL, GM_NODE_ALL, p, self->len,
		       MADV_ACCESSED_BY);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_ACCESSED_BY);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_PREFETCH);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_UNPIN);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_PREFERRED_LOCATION);
	/* Nothing left: one line without attributes. */
	ASSERT_EQ(-1, check_pattern(p, self->len, 2));
	expect_runs(_metadata, p, &none, 1, 0, self->hnid);
	unmap_range(_metadata, p, NPAGES);
}

/* A pin names a device: a host node is refused, NPU or not. */
TEST_F(policy, pin_to_host_node_einval)
{
	char *p = map_range(_metadata, NPAGES, 3);

	decorate(_metadata, self->hnid, p);
	for (int node = 0; node < online_host_nodes(); node++)
		expect_refused(_metadata, self->hnid, EINVAL, node, p, self->len,
			       MADV_PIN);
	ASSERT_EQ(-1, check_pattern(p, self->len, 3));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A device node the process is not attached to: npu0 in a forked child
 * (a child is attached to no device), npu1 here.
 */
TEST_F(policy, device_not_attached_einval)
{
	int hnid1 = npu1_hnid();
	char *p;
	pid_t pid;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 4);
	decorate(_metadata, self->hnid, p);
	if (hnid1 >= 0) {
		expect_refused(_metadata, self->hnid, EINVAL, hnid1, p, self->len,
			       MADV_PREFERRED_LOCATION);
		expect_refused(_metadata, self->hnid, EINVAL, hnid1, p, self->len,
			       MADV_PIN);
		expect_refused(_metadata, self->hnid, EINVAL, hnid1, p, self->len,
			       MADV_ACCESSED_BY);
	}
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		static struct maps before, after;

		if (maps_load(&before))
			_exit(1);
		if (hmadvise_err(self->hnid, p, self->len,
				 MADV_PREFERRED_LOCATION) != EINVAL)
			_exit(2);
		if (hmadvise_err(self->hnid, p, self->len, MADV_PIN) != EINVAL)
			_exit(3);
		if (hmadvise_err(self->hnid, p, self->len,
				 MADV_ACCESSED_BY) != EINVAL)
			_exit(5);
		if (maps_load(&after) || strcmp(before.text, after.text))
			_exit(4);
		_exit(0);
	}
	ASSERT_EQ(0, wait_child(pid));
	ASSERT_EQ(-1, check_pattern(p, self->len, 4));
	unmap_range(_metadata, p, NPAGES);
}

TEST_F(policy, unaligned_start_einval)
{
	char *p = map_range(_metadata, NPAGES, 5);

	decorate(_metadata, self->hnid, p);
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++) {
		int node = node_for(self->hnid, attr_advices[a]);

		if (node == -1)
			continue;
		expect_refused(_metadata, self->hnid, EINVAL, node, p + 1,
			       self->len - self->page, attr_advices[a]);
		expect_refused(_metadata, self->hnid, EINVAL, node,
			       p + self->page / 2, self->page, attr_advices[a]);
	}
	ASSERT_EQ(-1, check_pattern(p, self->len, 5));
	unmap_range(_metadata, p, NPAGES);
}

/* start + len wraps around. */
TEST_F(policy, overflow_einval)
{
	char *p = map_range(_metadata, NPAGES, 6);
	unsigned long start = (unsigned long)p;

	decorate(_metadata, self->hnid, p);
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++) {
		int advice = attr_advices[a], node = node_for(self->hnid, advice);

		if (node == -1)
			continue;
		expect_refused(_metadata, self->hnid, EINVAL, node, p, -1UL, advice);
		expect_refused(_metadata, self->hnid, EINVAL, node, p, -start, advice);
		expect_refused(_metadata, self->hnid, EINVAL, node,
			       (void *)-self->page, 2 * self->page, advice);
	}
	ASSERT_EQ(-1, check_pattern(p, self->len, 6));
	unmap_range(_metadata, p, NPAGES);
}

/* A hole in the range: ENOMEM, and the pages either side keep everything. */
TEST_F(policy, hole_enomem)
{
	char *p = map_range(_metadata, NPAGES, 7);
	char *hole = p + 5 * self->page;

	decorate(_metadata, self->hnid, p);
	ASSERT_EQ(0, munmap(hole, self->page));
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++) {
		int node = node_for(self->hnid, attr_advices[a]);

		if (node == -1)
			continue;
		expect_refused(_metadata, self->hnid, ENOMEM, node, p, self->len,
			       attr_advices[a]);
		expect_refused(_metadata, self->hnid, ENOMEM, node, hole,
			       self->page, attr_advices[a]);
	}
	/* Either side of the hole still takes them. */
	advise(_metadata, GM_NODE_ALL, p, 0, 5, MADV_NO_PREFERRED_LOCATION);
	advise(_metadata, 0, p, 6, 10, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(-1, check_pattern_at(p, 0, 5 * self->page, 7));
	ASSERT_EQ(-1, check_pattern_at(p, 6 * self->page, 10 * self->page, 7));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * Ordinary memory: refused (EINVAL), alone or after a peer-shared part,
 * which keeps its attributes: nothing is done unless the whole range
 * passes.
 */
TEST_F(policy, not_peer_shared_einval)
{
	char *plain = mmap_fenced(self->len, FENCE_PAGES * self->page, 0);
	char *both = mmap_fenced(self->len, FENCE_PAGES * self->page, 0);

	ASSERT_NE(NULL, plain);
	ASSERT_NE(NULL, both);
	plain[0] = 1;
	/* Peer-shared pages 0-7 (preferring host node 0), ordinary 8-15. */
	ASSERT_EQ(both, mmap_peer_shared(both, self->len / 2, MAP_FIXED));
	fill_pattern(both, self->len, 8);
	advise(_metadata, 0, both, 0, 8, MADV_PREFERRED_LOCATION);
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++) {
		int node = node_for(self->hnid, attr_advices[a]);

		if (node == -1)
			continue;
		expect_refused(_metadata, self->hnid, EINVAL, node, plain, self->len,
			       attr_advices[a]);
		expect_refused(_metadata, self->hnid, EINVAL, node, both, self->len,
			       attr_advices[a]);
	}
	ASSERT_EQ(1, plain[0]);
	ASSERT_EQ(-1, check_pattern(both, self->len, 8));
	ASSERT_EQ(0, munmap_fenced(plain, self->len, FENCE_PAGES * self->page));
	ASSERT_EQ(0, munmap_fenced(both, self->len, FENCE_PAGES * self->page));
}

/* Past the last advice: unknown.  madvise() knows none of them. */
TEST_F(policy, unknown_advice_einval)
{
	char *p = map_range(_metadata, NPAGES, 9);

	decorate(_metadata, self->hnid, p);
	expect_refused(_metadata, self->hnid, EINVAL, 0, p, self->len,
		       MADV_NO_READ_MOSTLY + 1);
	expect_refused(_metadata, self->hnid, EINVAL, GM_NODE_ALL, p, self->len,
		       MADV_NO_READ_MOSTLY + 1);
	for (size_t a = 0; a < ARRAY_SIZE(attr_advices); a++) {
		errno = 0;
		ASSERT_EQ(-1, madvise(p, self->len, attr_advices[a]));
		ASSERT_EQ(EINVAL, errno);
	}
	ASSERT_EQ(-1, check_pattern(p, self->len, 9));
	unmap_range(_metadata, p, NPAGES);
}

/* gmem_maps */

/* No peer-shared memory, no line: ordinary memory and an NPU show nothing. */
TEST_F(policy, maps_empty_without_peer_shared)
{
	char text[4096], *plain, *p;

	ASSERT_EQ(0, gm_maps_text(0, text, sizeof(text))) TH_LOG("%s", text);
	plain = mmap(NULL, self->len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, plain);
	memset(plain, 1, self->len);
	ASSERT_EQ(0, gm_maps_text(0, text, sizeof(text))) TH_LOG("%s", text);
	p = map_range(_metadata, NPAGES, 10);
	ASSERT_LT(0, gm_maps_text(0, text, sizeof(text)));
	unmap_range(_metadata, p, NPAGES);
	ASSERT_EQ(0, gm_maps_text(0, text, sizeof(text))) TH_LOG("%s", text);
	ASSERT_EQ(0, munmap(plain, self->len));
}

/* A range nobody touched: one line, no attributes, no node holds a page. */
TEST_F(policy, maps_untouched_range)
{
	char *p = map_range(_metadata, NPAGES, 0);
	char text[4096], want[256];

	snprintf(want, sizeof(want),
		 "%08lx-%08lx preferred=none accessed_by=none read_mostly=0 pinned=none\n",
		 (unsigned long)p, (unsigned long)p + self->len);
	ASSERT_LT(0, gm_maps_text(0, text, sizeof(text)));
	ASSERT_STREQ(want, text);
	unmap_range(_metadata, p, NPAGES);
}

/* The CPU wrote every page: one line, every page on a host node. */
TEST_F(policy, maps_cpu_pages)
{
	const struct run touched = { NPAGES, -1, -1, 0, NPAGES };
	char *p = map_range(_metadata, NPAGES, 11);
	struct maps m;

	expect_runs(_metadata, p, &touched, 1, 0, self->hnid);
	read_maps(_metadata, &m);
	ASSERT_EQ(1, m.n) TH_LOG("%s", m.text);
	ASSERT_EQ(-1, check_pattern(p, self->len, 11));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A preferred location on part of a range cuts it into pieces; clearing
 * it (all of it, or where it is one node) joins them again, and clearing
 * another node's changes nothing.  Host node 0, and the NPU if there is
 * one.
 */
TEST_F(policy, maps_preferred_pieces)
{
	const struct run middle[] = {
		{ 4, -1, -1, 0, 4 }, { 8, 0, -1, 0, 8 }, { 4, -1, -1, 0, 4 },
	};
	const struct run half[] = {
		{ 8, -1, -1, 0, 8 }, { 4, 0, -1, 0, 4 }, { 4, -1, -1, 0, 4 },
	};
	const struct run with_npu[] = {
		{ 8, -1, -1, 0, 8 }, { 4, 0, -1, 0, 4 },
		{ 4, self->hnid, -1, 0, 4 },
	};
	const struct run npu_only[] = {
		{ 12, -1, -1, 0, 12 }, { 4, self->hnid, -1, 0, 4 },
	};
	const struct run all0 = { NPAGES, 0, -1, 0, NPAGES };
	const struct run none = { NPAGES, -1, -1, 0, NPAGES };
	char *p = map_range(_metadata, NPAGES, 12);
	int others[2], nothers = 0;
	static struct maps before, after;

	advise(_metadata, 0, p, 4, 8, MADV_PREFERRED_LOCATION);
	expect_runs(_metadata, p, middle, 3, 0, self->hnid);

	/* Another node's preference is not there to clear. */
	if (online_host_nodes() > 1)
		others[nothers++] = 1;
	if (self->fd >= 0)
		others[nothers++] = self->hnid;
	if (!nothers)
		TH_LOG("no node but host node 0: clearing another node's preference not tried");
	for (int i = 0; i < nothers; i++) {
		read_maps(_metadata, &before);
		advise(_metadata, others[i], p, 0, NPAGES,
		       MADV_NO_PREFERRED_LOCATION);
		read_maps(_metadata, &after);
		ASSERT_STREQ(before.text, after.text) TH_LOG("node %d", others[i]);
	}

	/* Cleared on pages 4-7: they join the pages before them. */
	advise(_metadata, 0, p, 4, 4, MADV_NO_PREFERRED_LOCATION);
	expect_runs(_metadata, p, half, 3, 0, self->hnid);
	if (self->fd >= 0) {
		advise(_metadata, self->hnid, p, 12, 4, MADV_PREFERRED_LOCATION);
		expect_runs(_metadata, p, with_npu, 3, 0, self->hnid);
		/* Only node 0's go. */
		advise(_metadata, 0, p, 0, NPAGES, MADV_NO_PREFERRED_LOCATION);
		expect_runs(_metadata, p, npu_only, 2, 0, self->hnid);
	}
	/* A new preference replaces the old one. */
	advise(_metadata, 0, p, 0, NPAGES, MADV_PREFERRED_LOCATION);
	expect_runs(_metadata, p, &all0, 1, 0, self->hnid);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_PREFERRED_LOCATION);
	expect_runs(_metadata, p, &none, 1, 0, self->hnid);
	ASSERT_EQ(-1, check_pattern(p, self->len, 12));
	unmap_range(_metadata, p, NPAGES);
}

/* N<hnid>= follows the pages to the NPU and back, one by one. */
TEST_F(policy, maps_counts_npu_pages)
{
	const struct run four = { NPAGES, -1, -1, 4, NPAGES - 4 };
	const struct run six = { NPAGES, -1, -1, 6, NPAGES - 6 };
	const struct run five = { NPAGES, -1, -1, 5, NPAGES - 5 };
	const struct run all = { NPAGES, -1, -1, NPAGES, 0 };
	const struct run home = { NPAGES, -1, -1, 0, NPAGES };
	long long resident;
	char *p, *copy;
	__u64 sum;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 13);
	copy = malloc(self->len);
	ASSERT_NE(NULL, copy);
	memcpy(copy, p, self->len);
	resident = gm_node_read(self->hnid, "resident");
	advise(_metadata, self->hnid, p, 4, 4, MADV_PREFETCH);
	expect_runs(_metadata, p, &four, 1, 0, self->hnid);
	ASSERT_EQ(resident + 4 * (long long)self->page,
		  gm_node_read(self->hnid, "resident"));
	/* The NPU writes pages 8-9. */
	ASSERT_EQ(0, npu_fill(self->fd, p + 8 * self->page, 2 * self->page,
			      0x5a5a5a5a));
	memset(copy + 8 * self->page, 0x5a, 2 * self->page);
	expect_runs(_metadata, p, &six, 1, 0, self->hnid);
	/* The CPU reads page 4. */
	ASSERT_EQ(0, memcmp(copy + 4 * self->page, p + 4 * self->page,
			    self->page));
	expect_runs(_metadata, p, &five, 1, 0, self->hnid);
	/* The NPU reads all, then the CPU. */
	ASSERT_EQ(0, npu_sum(self->fd, p, self->len, &sum));
	ASSERT_EQ(sum32(copy, self->len), sum);
	expect_runs(_metadata, p, &all, 1, 0, self->hnid);
	ASSERT_EQ(0, memcmp(copy, p, self->len));
	expect_runs(_metadata, p, &home, 1, 0, self->hnid);
	ASSERT_EQ(resident, gm_node_read(self->hnid, "resident"));
	free(copy);
	unmap_range(_metadata, p, NPAGES);
}

/*
 * The file of another user's process: EACCES (at open, or at the latest
 * at read), as numa_maps; root, which may ptrace that user's process,
 * reads its file.
 */
TEST_F(policy, maps_of_another_user_eacces)
{
	pid_t parent = getpid(), pid;
	int ready[2], done[2];
	char text[4096];
	char *p;

	if (geteuid())
		SKIP(return, "not root: cannot become another user");
	p = map_range(_metadata, NPAGES, 14);
	ASSERT_LT(0, gm_maps_text(0, text, sizeof(text)));
	ASSERT_EQ(0, pipe(ready));
	ASSERT_EQ(0, pipe(done));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		static char mine[4096], theirs[4096];
		int ret = 0;

		if (become_nobody())
			_exit(1);
		/* Its own: the peer-shared range it inherited. */
		if (gm_maps_text(0, mine, sizeof(mine)) <= 0)
			ret = 2;
		else if (gm_maps_text(parent, theirs, sizeof(theirs)) >= 0)
			ret = 3;
		else if (errno != EACCES)
			ret = 4;
		if (sync_send(ready[1]) || sync_wait(done[0]))
			_exit(5);
		_exit(ret);
	}
	ASSERT_EQ(0, sync_wait(ready[0]));
	/* Root may read nobody's. */
	ASSERT_LT(0, gm_maps_text(pid, text, sizeof(text)))
		TH_LOG("/proc/%d/gmem_maps: %s", pid, strerror(errno));
	ASSERT_EQ(0, sync_send(done[1]));
	ASSERT_EQ(0, wait_child(pid))
		TH_LOG("steps: 2 own file, 3 the parent's is readable, 4 not EACCES");
	close(ready[0]);
	close(ready[1]);
	close(done[0]);
	close(done[1]);
	unmap_range(_metadata, p, NPAGES);
}

/* The attributes' life */

/*
 * munmap() drops the attributes, and a new mapping in the hole (or on top
 * with MAP_FIXED, or where mremap() shrank a mapping) has none.
 */
TEST_F(policy, munmap_drops_attributes)
{
	const struct run refilled[] = {
		{ 4, 0, -1, 0, 4 }, { 4, -1, -1, 0, 0 }, { 8, 0, -1, 0, 8 },
	};
	const struct run fresh = { NPAGES, -1, -1, 0, 0 };
	const struct run shrunk[] = {
		{ 8, 0, -1, 0, 0 }, { 8, -1, -1, 0, 0 },
	};
	const struct run left = { 4, 0, -1, 0, 4 };
	const struct run right = { 8, 0, -1, 0, 8 };
	char *p = map_range(_metadata, NPAGES, 15);
	size_t page = self->page;

	advise(_metadata, 0, p, 0, NPAGES, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(0, munmap(p + 4 * page, 4 * page));
	expect_runs(_metadata, p, &left, 1, 0, self->hnid);
	expect_absent(_metadata, p + 4 * page, 4 * page);
	expect_runs(_metadata, p + 8 * page, &right, 1, 0, self->hnid);
	ASSERT_EQ(p + 4 * page, mmap_peer_shared(p + 4 * page, 4 * page,
						 MAP_FIXED));
	expect_runs(_metadata, p, refilled, 3, 0, self->hnid);
	ASSERT_EQ(-1, check_pattern_at(p, 0, 4 * page, 15));
	ASSERT_EQ(-1, first_not(p + 4 * page, 4 * page, 0));
	ASSERT_EQ(-1, check_pattern_at(p, 8 * page, 8 * page, 15));

	/* A mapping on top. */
	ASSERT_EQ(p, mmap_peer_shared(p, self->len, MAP_FIXED));
	expect_runs(_metadata, p, &fresh, 1, 0, self->hnid);

	/* mremap() shrinking, then a mapping where the end was. */
	advise(_metadata, 0, p, 0, NPAGES, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(p, mremap(p, self->len, 8 * page, 0));
	expect_absent(_metadata, p + 8 * page, 8 * page);
	ASSERT_EQ(p + 8 * page, mmap_peer_shared(p + 8 * page, 8 * page,
						 MAP_FIXED));
	expect_runs(_metadata, p, shrunk, 2, 1, self->hnid);
	unmap_range(_metadata, p, NPAGES);
}

/* mremap() moves the attributes with the pages, and the data stays. */
TEST_F(policy, mremap_moves_attributes)
{
	const struct run moved[] = {
		{ 4, -1, -1, 0, 4 }, { 8, 0, -1, 0, 8 }, { 4, -1, -1, 0, 4 },
	};
	size_t fence = FENCE_PAGES * self->page;
	char *p = map_range(_metadata, NPAGES, 16);
	char *to = mmap_fenced(self->len, fence, 0);

	ASSERT_NE(NULL, to);
	advise(_metadata, 0, p, 4, 8, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(to, mremap(p, self->len, self->len,
			     MREMAP_MAYMOVE | MREMAP_FIXED, to));
	expect_absent(_metadata, p, self->len);
	expect_runs(_metadata, to, moved, 3, 0, self->hnid);
	ASSERT_EQ(-1, check_pattern(to, self->len, 16));
	ASSERT_EQ(0, munmap_fenced(to, self->len, fence));
	unmap_range(_metadata, p, NPAGES);
}

/* The same for pins and NPU pages: they move, the count stays. */
TEST_F(policy, mremap_moves_pins)
{
	const struct run moved[] = {
		{ 4, -1, -1, 0, 4 }, { 4, -1, self->hnid, 4, 0 },
		{ 4, self->hnid, -1, 0, 4 }, { 4, -1, -1, 0, 4 },
	};
	size_t fence = FENCE_PAGES * self->page;
	long long pinned;
	char *p, *to;
	__u64 want, sum;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 17);
	want = sum32(p + 4 * self->page, 4 * self->page);
	to = mmap_fenced(self->len, fence, 0);
	ASSERT_NE(NULL, to);
	pinned = npu_pinned(self->hnid);
	advise(_metadata, self->hnid, p, 4, 4, MADV_PIN);
	advise(_metadata, self->hnid, p, 8, 4, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(pinned + 4 * (long long)self->page, npu_pinned(self->hnid));
	ASSERT_EQ(to, mremap(p, self->len, self->len,
			     MREMAP_MAYMOVE | MREMAP_FIXED, to));
	expect_absent(_metadata, p, self->len);
	expect_runs(_metadata, to, moved, 4, 0, self->hnid);
	ASSERT_EQ(pinned + 4 * (long long)self->page, npu_pinned(self->hnid));
	/* The pinned pages, on the NPU at their new address. */
	ASSERT_EQ(0, npu_sum(self->fd, to + 4 * self->page, 4 * self->page,
			     &sum));
	ASSERT_EQ(want, sum);
	ASSERT_EQ(-1, check_pattern(to, self->len, 17));
	ASSERT_EQ(0, munmap_fenced(to, self->len, fence));
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A VMA split (mprotect() of the middle) keeps the attributes on every
 * side, one line per VMA; and the merge after.
 */
TEST_F(policy, mprotect_split_keeps_attributes)
{
	const struct run split[] = {
		{ 4, 0, -1, 0, 4 }, { 8, 0, -1, 0, 8 }, { 4, 0, -1, 0, 4 },
	};
	const struct run read_only_cleared[] = {
		{ 4, 0, -1, 0, 4 }, { 2, 0, -1, 0, 2 }, { 4, -1, -1, 0, 4 },
		{ 2, 0, -1, 0, 2 }, { 4, 0, -1, 0, 4 },
	};
	const struct run merged[] = {
		{ 6, 0, -1, 0, 6 }, { 4, -1, -1, 0, 4 }, { 6, 0, -1, 0, 6 },
	};
	char *p = map_range(_metadata, NPAGES, 18);
	size_t page = self->page;

	advise(_metadata, 0, p, 0, NPAGES, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(0, mprotect(p + 4 * page, 8 * page, PROT_READ));
	expect_runs(_metadata, p, split, 3, 0, self->hnid);
	/* Read-only pages take attributes too: they move no data. */
	advise(_metadata, GM_NODE_ALL, p, 6, 4, MADV_NO_PREFERRED_LOCATION);
	expect_runs(_metadata, p, read_only_cleared, 5, 0, self->hnid);
	ASSERT_EQ(0, mprotect(p + 4 * page, 8 * page, PROT_READ | PROT_WRITE));
	/* Whether the VMAs merge again is core MM's business. */
	expect_runs(_metadata, p, merged, 3, 1, self->hnid);
	ASSERT_EQ(-1, check_pattern(p, self->len, 18));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * fork(): the child has the parent's preferred locations (a device's
 * too) and none of its pins; the parent keeps its pins, and the count of
 * pinned pages does not change.
 */
TEST_F(policy, fork_keeps_preferred_drops_pins)
{
	const struct run parent_runs[] = {
		{ 4, 0, -1, ANY, ANY }, { 4, self->hnid, -1, ANY, ANY },
		{ 8, -1, self->hnid, ANY, ANY },
	};
	const struct run child_runs[] = {
		{ 4, 0, -1, 0, 4 }, { 4, self->hnid, -1, 0, 4 },
		{ 8, -1, -1, 0, 8 },
	};
	const struct run pinned_back = { 8, -1, self->hnid, 8, 0 };
	long long pinned;
	__u64 want, sum;
	char *p;
	pid_t pid;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 19);
	want = sum32(p + 8 * self->page, 8 * self->page);
	advise(_metadata, 0, p, 0, 4, MADV_PREFERRED_LOCATION);
	advise(_metadata, self->hnid, p, 4, 4, MADV_PREFERRED_LOCATION);
	advise(_metadata, self->hnid, p, 8, 8, MADV_PIN);
	pinned = npu_pinned(self->hnid);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		static struct maps m;

		if (check_pattern(p, self->len, 19) != -1)
			_exit(1);
		if (maps_load(&m))
			_exit(2);
		if (runs_differ(&m, p, child_runs, 3, 0, self->hnid) != -1)
			_exit(3);
		if (npu_pinned(self->hnid) != pinned)
			_exit(4);
		_exit(0);
	}
	ASSERT_EQ(0, wait_child(pid))
		TH_LOG("steps: 1 data, 2 gmem_maps, 3 its attributes, 4 pinned count");
	expect_runs(_metadata, p, parent_runs, 3, 0, self->hnid);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	/* fork brought the pinned pages home; the NPU's next access, back. */
	ASSERT_EQ(0, npu_sum(self->fd, p + 8 * self->page, 8 * self->page,
			     &sum));
	ASSERT_EQ(want, sum);
	expect_runs(_metadata, p + 8 * self->page, &pinned_back, 1, 0,
		    self->hnid);
	ASSERT_EQ(-1, check_pattern(p, self->len, 19));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A detach (the last file of the attached NPU closed): every attribute
 * naming the NPU goes, its pins with their count, and its pages come
 * home; the host node's stay.
 */
TEST_F(policy, detach_drops_device_attributes)
{
	const struct run after[] = {
		{ 8, -1, -1, 0, 8 }, { 4, 0, -1, 0, 4 }, { 4, -1, -1, 0, 4 },
	};
	long long pinned;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 20);
	pinned = npu_pinned(self->hnid);
	advise(_metadata, self->hnid, p, 0, 4, MADV_PREFERRED_LOCATION);
	advise(_metadata, self->hnid, p, 4, 4, MADV_PIN);
	advise(_metadata, 0, p, 8, 4, MADV_PREFERRED_LOCATION);
	ASSERT_EQ(pinned + 4 * (long long)self->page, npu_pinned(self->hnid));
	ASSERT_EQ(0, close(self->fd));
	self->fd = -1;
	expect_runs(_metadata, p, after, 3, 0, self->hnid);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	ASSERT_EQ(-1, check_pattern(p, self->len, 20));
	unmap_range(_metadata, p, NPAGES);
}

/* Prefetch to the preferred location */

/*
 * MADV_PREFETCH with GM_NODE_ALL: the pages that prefer the NPU go there,
 * those that prefer host node 0 come home, the others stay where they
 * are.  Setting the preferences moved nothing.
 */
TEST_F(policy, prefetch_to_preferred_location)
{
	const struct run set[] = {
		{ 8, self->hnid, -1, 0, 8 }, { 8, 0, -1, 8, 0 },
		{ 16, -1, -1, 8, 8 },
	};
	const struct run moved[] = {
		{ 8, self->hnid, -1, 8, 0 }, { 8, 0, -1, 0, 8 },
		{ 16, -1, -1, 8, 8 },
	};
	long long resident;
	__u64 want, sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, 2 * NPAGES, 21);
	want = sum32(p, 8 * self->page);
	/* Pages 8-23 on the NPU, the rest at home. */
	advise(_metadata, self->hnid, p, 8, 16, MADV_PREFETCH);
	resident = gm_node_read(self->hnid, "resident");
	advise(_metadata, self->hnid, p, 0, 8, MADV_PREFERRED_LOCATION);
	advise(_metadata, 0, p, 8, 8, MADV_PREFERRED_LOCATION);
	expect_runs(_metadata, p, set, 3, 0, self->hnid);
	ASSERT_EQ(resident, gm_node_read(self->hnid, "resident"));

	advise(_metadata, GM_NODE_ALL, p, 0, 2 * NPAGES, MADV_PREFETCH);
	expect_runs(_metadata, p, moved, 3, 0, self->hnid);
	/* 8 pages to the NPU, 8 home. */
	ASSERT_EQ(resident, gm_node_read(self->hnid, "resident"));
	/* Home is the preferred host node itself. */
	ASSERT_EQ(8, pages_at(_metadata, p + 8 * self->page, 0));
	ASSERT_EQ(0, npu_sum(self->fd, p, 8 * self->page, &sum));
	ASSERT_EQ(want, sum);
	ASSERT_EQ(-1, check_pattern(p, 2 * NPAGES * self->page, 21));
	unmap_range(_metadata, p, 2 * NPAGES);
}

/*
 * Density prefetch leaves the pages that prefer another node where they
 * are: an NPU job over the first 300 pages of a 2 MiB block that the CPU
 * wrote brings the rest of the block along (300 of 512 pages is more than
 * the 51% threshold), as the control block shows; where pages 256-511
 * prefer host node 0, only the pages the job touched go to the NPU.
 */
TEST_F(policy, prefetch_leaves_pages_preferring_elsewhere)
{
	size_t block = 512 * self->page;
	struct gmem_npu_info info;
	__u64 sum;
	char *p, *q;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	ASSERT_EQ(0, npu_get_info(self->fd, &info));
	if (!(info.flags & GMEM_NPU_INFO_FAULTABLE))
		SKIP(return, "a prefaulting NPU raises no faults");
	ASSERT_EQ(0, gm_node_write(self->hnid, "prefetch_threshold", 51));
	p = mmap_block_aligned(block);
	ASSERT_NE(MAP_FAILED, p);
	q = mmap_block_aligned(block);
	ASSERT_NE(MAP_FAILED, q);
	fill_pattern(p, block, 31);
	fill_pattern(q, block, 32);
	advise(_metadata, 0, p, 256, 256, MADV_PREFERRED_LOCATION);

	ASSERT_EQ(0, npu_sum(self->fd, q, 300 * self->page, &sum));
	ASSERT_EQ(512, pages_at(_metadata, q, self->hnid));

	ASSERT_EQ(0, npu_sum(self->fd, p, 300 * self->page, &sum));
	ASSERT_EQ(256, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(44, pages_at(_metadata, p + 256 * self->page, self->hnid));

	ASSERT_EQ(-1, check_pattern(p, block, 31));
	ASSERT_EQ(-1, check_pattern(q, block, 32));
	ASSERT_EQ(0, munmap(p, block));
	ASSERT_EQ(0, munmap(q, block));
}

/* Whether the line of gmem_maps that starts at @p names @hnid in accessed_by. */
static int accessed_at(struct __test_metadata *_metadata, const void *p,
		       int hnid)
{
	const struct gm_maps_line *l = line_at(_metadata, p);

	return l ? gm_maps_accessed_by(l, hnid) : -1;
}

/* MADV_ACCESSED_BY names one device: not a host node, not every node. */
TEST_F(policy, accessed_by_einval)
{
	char *p = map_range(_metadata, NPAGES, 0);

	expect_refused(_metadata, self->hnid, EINVAL, 0, p, self->len,
		       MADV_ACCESSED_BY);
	expect_refused(_metadata, self->hnid, EINVAL, GM_NODE_ALL, p,
		       self->len, MADV_ACCESSED_BY);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_ACCESSED_BY);
	advise(_metadata, 0, p, 0, NPAGES, MADV_NO_ACCESSED_BY);
	unmap_range(_metadata, p, NPAGES);
}

/*
 * With MADV_ACCESSED_BY, the NPU reads and writes host pages where they
 * are: nothing moves, the data is the CPU's at every job, and the CPU sees
 * the NPU's writes at once.  MADV_NO_ACCESSED_BY moves them again.  The
 * same whether the NPU faults or its driver prefaults each job.
 */
TEST_F(policy, accessed_by_maps_in_place)
{
	size_t len = self->len;
	struct gmem_npu_stats s, e;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 41);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	ASSERT_EQ(1, accessed_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, npu_stats(self->fd, &s));

	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	/* A CPU write is seen by the next job, with the page where it was. */
	((__u32 *)p)[5] += 7;
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	/* And the NPU's writes by the CPU. */
	ASSERT_EQ(0, npu_fill(self->fd, p, len, 0x5a5a5a5a));
	ASSERT_EQ(-1, first_not(p, len, 0x5a5a5a5a));
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.migrations_to_dev, e.migrations_to_dev);
	ASSERT_EQ(s.zero_fills, e.zero_fills);
	ASSERT_EQ(s.resident_pages, e.resident_pages);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(0, pages_at(_metadata, p, self->hnid));

	/* Without the advice, the next job moves the pages. */
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_ACCESSED_BY);
	ASSERT_EQ(0, accessed_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ((__u64)NPAGES * (self->page / 4) * 0x5a5a5a5a, sum);
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.migrations_to_dev + NPAGES, e.migrations_to_dev);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * An NPU SUM32 job over @p (@len bytes) on @fd, checked against the CPU's
 * sum: how many faults the NPU took.  No page may move to the NPU.
 */
static long long sum_faults(struct __test_metadata *_metadata, int fd,
			    const char *p, size_t len)
{
	struct gmem_npu_stats s, e;
	__u64 sum;

	ASSERT_EQ(0, npu_stats(fd, &s));
	ASSERT_EQ(0, npu_sum(fd, p, len, &sum));
	ASSERT_EQ(0, npu_stats(fd, &e));
	EXPECT_EQ(sum32(p, len), sum);
	EXPECT_EQ(s.migrations_to_dev, e.migrations_to_dev);
	return e.faults - s.faults;
}

/*
 * Density prefetch maps in place as it moves: the first fault of a job on
 * CPU-written pages maps every page of the range the CPU maps (one 2 MiB
 * block at most), not just the one that faulted.  Nothing moves.  With
 * prefetch off, each page faults.
 */
TEST_F(policy, accessed_by_maps_a_block_per_fault)
{
	struct gmem_npu_info info;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	ASSERT_EQ(0, npu_get_info(self->fd, &info));
	if (!(info.flags & GMEM_NPU_INFO_FAULTABLE))
		SKIP(return, "a prefaulting NPU raises no faults");
	p = map_range(_metadata, NPAGES, 43);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	EXPECT_EQ(NPAGES, sum_faults(_metadata, self->fd, p, self->len));
	unmap_range(_metadata, p, NPAGES);

	ASSERT_EQ(0, gm_node_write(self->hnid, "prefetch_threshold", 51));
	p = map_range(_metadata, NPAGES, 43);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	/* The range may straddle two 2 MiB blocks: a fault in each. */
	EXPECT_GE(2, sum_faults(_metadata, self->fd, p, self->len));
	EXPECT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	/*
	 * A page dropped on the CPU leaves the NPU too: the next job faults
	 * on it alone, and reads the new zero page.
	 */
	ASSERT_EQ(0, madvise(p + 3 * self->page, self->page, MADV_DONTNEED));
	EXPECT_EQ(1, sum_faults(_metadata, self->fd, p, self->len));
	EXPECT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * Pages nobody touched yet are faulted in on the host, not zero-filled on
 * the NPU; the NPU's writes land there.
 */
TEST_F(policy, accessed_by_fills_on_the_host)
{
	struct gmem_npu_stats s, e;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 0);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	ASSERT_EQ(0, npu_stats(self->fd, &s));
	ASSERT_EQ(0, npu_fill(self->fd, p, self->len, 3));
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.zero_fills, e.zero_fills);
	ASSERT_EQ(s.resident_pages, e.resident_pages);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(-1, first_not(p, self->len, 3));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * @p (@len bytes, CPU-written from @seed) across a fork: the parent's
 * write (from @seed + 1) copies each page, an NPU job on @fd then reads
 * the parent's new data, and the child still has @seed.
 */
static void expect_cow_followed(struct __test_metadata *_metadata, int fd,
				char *p, size_t len, unsigned long seed)
{
	int status;
	__u64 sum;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		usleep(200000);
		_exit(check_pattern(p, len, seed) == -1 ? 0 : 1);
	}
	fill_pattern(p, len, seed + 1);
	ASSERT_EQ(0, npu_sum(fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status));
}

/*
 * The NPU's mapping follows the CPU's: after MADV_DONTNEED it reads
 * zeros, after a new mapping at the same address the new data, after a
 * copy-on-write break (fork) the parent's own page, never a stale one.
 */
TEST_F(policy, accessed_by_follows_the_cpu)
{
	size_t len = self->len;
	__u64 sum;
	char *p, *q;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 43);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);

	ASSERT_EQ(0, madvise(p, len, MADV_DONTNEED));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(0, sum);

	/* A new mapping in its place (which has no attributes). */
	q = mmap_peer_shared(p, len, MAP_FIXED);
	ASSERT_EQ(p, q);
	fill_pattern(p, len, 44);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);

	/* After fork, the parent's write copies the page; the NPU follows. */
	expect_cow_followed(_metadata, self->fd, p, len, 44);
	unmap_range(_metadata, p, NPAGES);
}

#define THRASHING	"/sys/kernel/mm/gmem/thrashing/"

/*
 * The CPU and the NPU take turns on the same pages for @rounds rounds: the
 * CPU writes them, an NPU job sums them.  Returns the pages that migrated
 * to the NPU; the data is right at every turn.
 */
static long long ping_pong(struct __test_metadata *_metadata, int fd,
			   char *p, size_t len, int rounds)
{
	struct gmem_npu_stats s, e;
	__u64 sum;

	ASSERT_EQ(0, npu_stats(fd, &s));
	for (int r = 0; r < rounds; r++) {
		fill_pattern(p, len, 100 + r);
		ASSERT_EQ(0, npu_sum(fd, p, len, &sum));
		ASSERT_EQ(sum32(p, len), sum) TH_LOG("round %d", r);
	}
	ASSERT_EQ(-1, check_pattern(p, len, 100 + rounds - 1));
	ASSERT_EQ(0, npu_stats(fd, &e));
	return e.migrations_to_dev - s.migrations_to_dev;
}

/*
 * Thrashing control.  Off, every turn of a CPU/NPU ping-pong moves every
 * page.  On (threshold 2, a window of an hour), a page the CPU took back
 * twice stays in host memory and the NPU maps it in place: after the
 * first two turns nothing moves.  (A window that ends during the test
 * starts the counts again: two more turns move.)
 */
TEST_F(policy, thrashing_pages_stay_home)
{
	unsigned long long threshold, window, in_place, in_place_after;
	const int rounds = 10;
	long long moved;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	ASSERT_EQ(0, read_ull(THRASHING "threshold", &threshold));
	ASSERT_EQ(0, read_ull(THRASHING "window_ms", &window));
	/* Bad values are refused and leave the old ones. */
	ASSERT_EQ(-1, write_ull(THRASHING "threshold", 8));
	ASSERT_EQ(EINVAL, errno);
	ASSERT_EQ(-1, write_ull(THRASHING "window_ms", 0));
	ASSERT_EQ(EINVAL, errno);

	ASSERT_EQ(0, write_ull(THRASHING "threshold", 0));
	p = map_range(_metadata, NPAGES, 0);
	moved = ping_pong(_metadata, self->fd, p, self->len, rounds);
	unmap_range(_metadata, p, NPAGES);
	EXPECT_EQ(rounds * NPAGES, moved);

	ASSERT_EQ(0, write_ull(THRASHING "threshold", 2));
	ASSERT_EQ(0, write_ull(THRASHING "window_ms", 3600000));
	ASSERT_EQ(0, read_ull(THRASHING "in_place", &in_place));
	p = map_range(_metadata, NPAGES, 0);
	moved = ping_pong(_metadata, self->fd, p, self->len, rounds);
	ASSERT_EQ(0, read_ull(THRASHING "in_place", &in_place_after));
	EXPECT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	unmap_range(_metadata, p, NPAGES);
	write_ull(THRASHING "threshold", threshold);
	write_ull(THRASHING "window_ms", window);
	EXPECT_GE(moved, 2 * NPAGES);
	EXPECT_LE(moved, 4 * NPAGES);
	EXPECT_GE(in_place_after - in_place, NPAGES);
}

/* No page has a preferred location: 0, and nothing moves. */
TEST_F(policy, prefetch_all_without_preference)
{
	static struct maps before, after;
	char *p = map_range(_metadata, NPAGES, 22);

	if (self->fd >= 0)
		advise(_metadata, self->hnid, p, 4, 8, MADV_PREFETCH);
	read_maps(_metadata, &before);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_PREFETCH);
	read_maps(_metadata, &after);
	ASSERT_STREQ(before.text, after.text);
	ASSERT_EQ(-1, check_pattern(p, self->len, 22));
	unmap_range(_metadata, p, NPAGES);
}

/* Under eviction */

/*
 * Lower the limit of device @hnid to @pages pages, and say so in *@changed
 * (the teardown puts it back).
 */
static void set_limit(struct __test_metadata *_metadata, int hnid,
		      unsigned long long pages, int *changed)
{
	*changed = 1;
	ASSERT_EQ(0, gm_node_write(hnid, "limit", pages * sysconf(_SC_PAGESIZE)))
		TH_LOG("limit %llu pages: %s", pages, strerror(errno));
}

/*
 * @npages pages at @p through the NPU, STREAM_JOB pages a job, each job
 * filling its pages with seed + its number; the jobs outgrow the NPU's
 * limit, so they evict one another (and whatever else may go).
 */
static void stream(struct __test_metadata *_metadata, int fd, char *p,
		   size_t npages, __u32 seed)
{
	size_t step = STREAM_JOB * sysconf(_SC_PAGESIZE);

	for (size_t i = 0; i < npages / STREAM_JOB; i++) {
		ASSERT_EQ(0, npu_fill(fd, p + i * step, step, seed + i))
			TH_LOG("job %zu", i);
	}
}

/* What stream() wrote is there (read by the CPU). */
static void check_stream(struct __test_metadata *_metadata, char *p,
			 size_t npages, __u32 seed)
{
	size_t step = STREAM_JOB * sysconf(_SC_PAGESIZE);

	for (size_t i = 0; i < npages / STREAM_JOB; i++) {
		ASSERT_EQ(-1, first_not(p + i * step, step, seed + i))
			TH_LOG("job %zu", i);
	}
}

/*
 * Pages that prefer the NPU are evicted last: 32 of them stay on an NPU
 * of 128 pages while four times that streams through it.  Without the
 * preference they would be the coldest pages there.
 */
TEST_F_TIMEOUT(policy, preferred_pages_stay_under_eviction, 300)
{
	const size_t hot = 32, cold = 4 * SMALL_LIMIT;
	const struct run stayed = { hot, self->hnid, -1, hot, 0 };
	long long evictions;
	char *p, *s;
	__u64 want, sum;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	set_limit(_metadata, self->hnid, SMALL_LIMIT, &self->limit_changed);
	p = map_range(_metadata, hot, 23);
	want = sum32(p, hot * self->page);
	s = map_range(_metadata, cold, 0);
	advise(_metadata, self->hnid, p, 0, hot, MADV_PREFERRED_LOCATION);
	advise(_metadata, GM_NODE_ALL, p, 0, hot, MADV_PREFETCH);
	expect_runs(_metadata, p, &stayed, 1, 0, self->hnid);
	evictions = gm_node_read(self->hnid, "evictions");

	stream(_metadata, self->fd, s, cold, 0x5000);
	/* The stream had to evict: only SMALL_LIMIT pages fit. */
	ASSERT_LE(evictions + (long long)(cold - SMALL_LIMIT),
		  gm_node_read(self->hnid, "evictions"));
	expect_runs(_metadata, p, &stayed, 1, 0, self->hnid);
	ASSERT_EQ(0, npu_sum(self->fd, p, hot * self->page, &sum));
	ASSERT_EQ(want, sum);
	check_stream(_metadata, s, cold, 0x5000);
	ASSERT_EQ(-1, check_pattern(p, hot * self->page, 23));
	unmap_range(_metadata, s, cold);
	unmap_range(_metadata, p, hot);
}

/*
 * Pinned pages are never evicted: 32 pinned pages stay on an NPU of 128
 * pages while three times that streams through it.  Unpinned, the same
 * stream takes them.
 */
TEST_F_TIMEOUT(policy, pinned_pages_stay_under_eviction, 300)
{
	const size_t hot = 32, cold = 3 * SMALL_LIMIT;
	const struct run stayed = { hot, -1, self->hnid, hot, 0 };
	long long evictions, pinned;
	char *p, *s;
	__u64 want, sum;
	long left;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	set_limit(_metadata, self->hnid, SMALL_LIMIT, &self->limit_changed);
	p = map_range(_metadata, hot, 24);
	want = sum32(p, hot * self->page);
	s = map_range(_metadata, cold, 0);
	pinned = npu_pinned(self->hnid);
	advise(_metadata, self->hnid, p, 0, hot, MADV_PIN);
	ASSERT_EQ(pinned + (long long)(hot * self->page), npu_pinned(self->hnid));
	expect_runs(_metadata, p, &stayed, 1, 0, self->hnid);
	evictions = gm_node_read(self->hnid, "evictions");

	stream(_metadata, self->fd, s, cold, 0x6000);
	ASSERT_LE(evictions + (long long)(cold - SMALL_LIMIT),
		  gm_node_read(self->hnid, "evictions"));
	expect_runs(_metadata, p, &stayed, 1, 0, self->hnid);
	ASSERT_EQ(0, npu_sum(self->fd, p, hot * self->page, &sum));
	ASSERT_EQ(want, sum);

	/* Unpinned, the pages stay where they are, evictable. */
	advise(_metadata, GM_NODE_ALL, p, 0, hot, MADV_UNPIN);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	stream(_metadata, self->fd, s, cold, 0x7000);
	left = pages_at(_metadata, p, self->hnid);
	TH_LOG("unpinned: %ld of %zu pages still on the NPU", left, hot);
	ASSERT_LE(0, left);
	ASSERT_GT((long)hot, left);
	check_stream(_metadata, s, cold, 0x7000);
	ASSERT_EQ(-1, check_pattern(p, hot * self->page, 24));
	unmap_range(_metadata, s, cold);
	unmap_range(_metadata, p, hot);
}

/* Pins */

/*
 * MADV_PIN moves the range to the NPU and counts it; pinning it again
 * costs nothing, a range that overlaps costs what is new.  Unpinned, the
 * pages stay where they are.  With npu1, unpinning its pins changes
 * nothing here.
 */
TEST_F(policy, pin_counts_and_moves)
{
	const struct run pinned_mid[] = {
		{ 4, -1, -1, 0, 4 }, { 8, -1, self->hnid, 8, 0 },
		{ 4, -1, -1, 0, 4 },
	};
	const struct run pinned_end[] = {
		{ 4, -1, -1, 0, 4 }, { 12, -1, self->hnid, 12, 0 },
	};
	const struct run unpinned = { NPAGES, -1, -1, 12, 4 };
	long long pinned, resident, page = self->page;
	static struct maps before, after;
	int hnid1 = npu1_hnid(), fd1 = -1;
	__u64 want, sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 25);
	want = sum32(p + 4 * page, 12 * page);
	pinned = npu_pinned(self->hnid);
	resident = gm_node_read(self->hnid, "resident");
	advise(_metadata, self->hnid, p, 4, 8, MADV_PIN);
	expect_runs(_metadata, p, pinned_mid, 3, 0, self->hnid);
	ASSERT_EQ(pinned + 8 * page, npu_pinned(self->hnid));
	ASSERT_EQ(resident + 8 * page, gm_node_read(self->hnid, "resident"));
	/* Again: nothing more. */
	advise(_metadata, self->hnid, p, 4, 8, MADV_PIN);
	ASSERT_EQ(pinned + 8 * page, npu_pinned(self->hnid));
	/* Overlapping: pages 12-15 more. */
	advise(_metadata, self->hnid, p, 8, 8, MADV_PIN);
	expect_runs(_metadata, p, pinned_end, 2, 0, self->hnid);
	ASSERT_EQ(pinned + 12 * page, npu_pinned(self->hnid));
	if (hnid1 >= 0) {
		fd1 = npu_open_attached(1);
		ASSERT_LE(0, fd1);
		read_maps(_metadata, &before);
		advise(_metadata, hnid1, p, 0, NPAGES, MADV_UNPIN);
		read_maps(_metadata, &after);
		ASSERT_STREQ(before.text, after.text);
		ASSERT_EQ(pinned + 12 * page, npu_pinned(self->hnid));
	}
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_UNPIN);
	expect_runs(_metadata, p, &unpinned, 1, 0, self->hnid);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	ASSERT_EQ(resident + 12 * page, gm_node_read(self->hnid, "resident"));
	ASSERT_EQ(0, npu_sum(self->fd, p + 4 * page, 12 * page, &sum));
	ASSERT_EQ(want, sum);
	ASSERT_EQ(-1, check_pattern(p, self->len, 25));
	if (fd1 >= 0)
		close(fd1);
	unmap_range(_metadata, p, NPAGES);
}

/*
 * The pins of a device may reach its limit, not go past it: a pin that
 * would is refused with ENOSPC and changes nothing; pinning what is
 * pinned already still works there.
 */
TEST_F(policy, pin_past_limit_enospc)
{
	const size_t na = 48, nb = 32;
	long long pinned, page = self->page;
	char *a, *b;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	a = map_range(_metadata, na, 26);
	b = map_range(_metadata, nb, 27);
	pinned = npu_pinned(self->hnid);
	ASSERT_LE(0, pinned);
	ASSERT_EQ(0, pinned % page);
	/* Room for 64 more pinned pages. */
	set_limit(_metadata, self->hnid, pinned / page + 64, &self->limit_changed);
	advise(_metadata, self->hnid, a, 0, na, MADV_PIN);
	ASSERT_EQ(pinned + (long long)na * page, npu_pinned(self->hnid));
	expect_refused(_metadata, self->hnid, ENOSPC, self->hnid, b, nb * page,
		       MADV_PIN);
	advise(_metadata, self->hnid, a, 0, na, MADV_PIN);
	/* Up to the limit exactly, then one page past it. */
	advise(_metadata, self->hnid, b, 0, 64 - na, MADV_PIN);
	ASSERT_EQ(pinned + 64 * page, npu_pinned(self->hnid));
	expect_refused(_metadata, self->hnid, ENOSPC, self->hnid,
		       b + (64 - na) * page, page, MADV_PIN);
	advise(_metadata, GM_NODE_ALL, a, 0, na, MADV_UNPIN);
	ASSERT_EQ(pinned + (64 - (long long)na) * page, npu_pinned(self->hnid));
	ASSERT_EQ(-1, check_pattern(a, na * page, 26));
	ASSERT_EQ(-1, check_pattern(b, nb * page, 27));
	unmap_range(_metadata, a, na);
	unmap_range(_metadata, b, nb);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
}

/* The limit cannot go below the pinned pages (EBUSY), down to them it can. */
TEST_F(policy, limit_below_pinned_ebusy)
{
	long long pinned, page = self->page;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, 2 * NPAGES, 28);
	advise(_metadata, self->hnid, p, 0, 2 * NPAGES, MADV_PIN);
	pinned = npu_pinned(self->hnid);
	ASSERT_LE(2 * NPAGES * page, pinned);
	self->limit_changed = 1;
	errno = 0;
	ASSERT_EQ(-1, gm_node_write(self->hnid, "limit", pinned - page));
	ASSERT_EQ(EBUSY, errno);
	ASSERT_EQ((long long)self->dram_size, gm_node_read(self->hnid, "limit"));
	ASSERT_EQ(0, gm_node_write(self->hnid, "limit", pinned));
	ASSERT_EQ(pinned, gm_node_read(self->hnid, "limit"));
	/* Unpinned, it may go lower. */
	advise(_metadata, GM_NODE_ALL, p, 0, 2 * NPAGES, MADV_UNPIN);
	ASSERT_EQ(0, gm_node_write(self->hnid, "limit", pinned - page));
	ASSERT_EQ(-1, check_pattern(p, 2 * NPAGES * page, 28));
	unmap_range(_metadata, p, 2 * NPAGES);
}

/* How a child lets go of its pins. */
static int pin_and_wait(int ready, int go, size_t len)
{
	int fd = npu_open_attached(0);
	char *p = mmap_peer_shared(NULL, len, 0);
	struct gmem_npu_info info;

	if (fd < 0 || p == MAP_FAILED || npu_get_info(fd, &info))
		return 1;
	if (hmadvise_err(info.hnid, p, len, MADV_PIN))
		return 2;
	if (sync_send(ready) || sync_wait(go))
		return 3;
	return 0;		/* exit: no munmap, no close */
}

/*
 * The pinned count goes back as pins go: munmap() of part and of the rest
 * (by a mapping on top), a child's exit and a child killed.
 */
TEST_F(policy, pins_released_by_unmap_and_exit)
{
	const struct run fresh = { 8, -1, -1, 0, 0 };
	long long pinned, page = self->page;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 29);
	pinned = npu_pinned(self->hnid);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_PIN);
	ASSERT_EQ(pinned + NPAGES * page, npu_pinned(self->hnid));
	ASSERT_EQ(0, munmap(p, 8 * page));
	ASSERT_EQ(pinned + 8 * page, npu_pinned(self->hnid));
	ASSERT_EQ(p + 8 * page, mmap_peer_shared(p + 8 * page, 8 * page,
						 MAP_FIXED));
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	expect_runs(_metadata, p + 8 * page, &fresh, 1, 0, self->hnid);

	for (int kill_it = 0; kill_it < 2; kill_it++) {
		int ready[2], go[2], ret = -1;
		pid_t pid;

		ASSERT_EQ(0, pipe(ready));
		ASSERT_EQ(0, pipe(go));
		pid = fork();
		ASSERT_LE(0, pid);
		if (!pid)
			_exit(pin_and_wait(ready[1], go[0], self->len));
		ASSERT_EQ(0, sync_wait(ready[0]));
		ASSERT_EQ(pinned + NPAGES * page, npu_pinned(self->hnid));
		ASSERT_EQ(0, kill_it ? kill(pid, SIGKILL) : sync_send(go[1]));
		ret = wait_child(pid);
		ASSERT_EQ(kill_it ? 128 + SIGKILL : 0, ret);
		/* The address space may outlive the exit a moment. */
		for (int i = 0; i < 500 && npu_pinned(self->hnid) != pinned; i++)
			usleep(10000);
		ASSERT_EQ(pinned, npu_pinned(self->hnid))
			TH_LOG("after the child's %s", kill_it ? "SIGKILL" : "exit");
		close(ready[0]);
		close(ready[1]);
		close(go[0]);
		close(go[1]);
	}
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A CPU write to a pinned page brings it home, and the NPU's next job sees
 * the write and brings it back; MADV_DONTNEED drops a pinned page, and the
 * NPU's next access finds zeros.  The pin stays through both.
 */
TEST_F(policy, pinned_page_cpu_write_and_dontneed)
{
	const struct run all = { NPAGES, -1, self->hnid, NPAGES, 0 };
	const struct run one_home = { NPAGES, -1, self->hnid, NPAGES - 1, 1 };
	const struct run one_gone = { NPAGES, -1, self->hnid, NPAGES - 1, 0 };
	long long pinned, page = self->page;
	char *p, *copy;
	__u64 sum;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 30);
	copy = malloc(self->len);
	ASSERT_NE(NULL, copy);
	memcpy(copy, p, self->len);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_PIN);
	pinned = npu_pinned(self->hnid);
	expect_runs(_metadata, p, &all, 1, 0, self->hnid);

	/* The CPU writes page 3. */
	fill_pattern(p + 3 * page, page, 31);
	fill_pattern(copy + 3 * page, page, 31);
	expect_runs(_metadata, p, &one_home, 1, 0, self->hnid);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	ASSERT_EQ(0, npu_sum(self->fd, p, self->len, &sum));
	ASSERT_EQ(sum32(copy, self->len), sum);
	expect_runs(_metadata, p, &all, 1, 0, self->hnid);

	/* Page 5 dropped. */
	advise(_metadata, GM_NODE_ALL, p, 5, 1, MADV_DONTNEED);
	memset(copy + 5 * page, 0, page);
	expect_runs(_metadata, p, &one_gone, 1, 0, self->hnid);
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	ASSERT_EQ(0, npu_sum(self->fd, p, self->len, &sum));
	ASSERT_EQ(sum32(copy, self->len), sum);
	expect_runs(_metadata, p, &all, 1, 0, self->hnid);
	ASSERT_EQ(0, memcmp(copy, p, self->len));
	ASSERT_EQ(pinned, npu_pinned(self->hnid));
	free(copy);
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A pin to npu1 of pages pinned to npu0 moves the pin (and the count);
 * unpinning npu0's pins leaves npu1's.
 */
TEST_F(policy, pin_moves_between_devices)
{
	int hnid1 = npu1_hnid(), fd1;
	const struct run split[] = {
		{ 4, -1, self->hnid, 4, 0 }, { 8, -1, hnid1, ANY, 0 },
		{ 4, -1, self->hnid, 4, 0 },
	};
	const struct run left[] = {
		{ 4, -1, -1, 4, 0 }, { 8, -1, hnid1, ANY, 0 },
		{ 4, -1, -1, 4, 0 },
	};
	long long pinned0, pinned1, page = self->page;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	if (hnid1 < 0)
		SKIP(return, NO_NPU, npu_dev_path[1]);
	fd1 = open_npu1(_metadata);
	p = map_range(_metadata, NPAGES, 32);
	pinned0 = npu_pinned(self->hnid);
	pinned1 = npu_pinned(hnid1);
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_PIN);
	advise(_metadata, hnid1, p, 4, 8, MADV_PIN);
	expect_runs(_metadata, p, split, 3, 0, self->hnid);
	ASSERT_EQ(pinned0 + 8 * page, npu_pinned(self->hnid));
	ASSERT_EQ(pinned1 + 8 * page, npu_pinned(hnid1));
	ASSERT_EQ(8, pages_at(_metadata, p + 4 * page, hnid1));
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_UNPIN);
	expect_runs(_metadata, p, left, 3, 0, self->hnid);
	ASSERT_EQ(pinned0, npu_pinned(self->hnid));
	ASSERT_EQ(pinned1 + 8 * page, npu_pinned(hnid1));
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_UNPIN);
	ASSERT_EQ(pinned1, npu_pinned(hnid1));
	ASSERT_EQ(-1, check_pattern(p, self->len, 32));
	unmap_range(_metadata, p, NPAGES);
	close(fd1);
}

/* Read duplication */

/* Whether the line of gmem_maps that starts at @p says read_mostly=1. */
static int read_mostly_at(struct __test_metadata *_metadata, const void *p)
{
	const struct gm_maps_line *l = line_at(_metadata, p);

	return l ? l->read_mostly : -1;
}

/* MADV_READ_MOSTLY is about every device at once: a node is refused. */
TEST_F(policy, read_mostly_einval)
{
	char *p = map_range(_metadata, NPAGES, 0);

	expect_refused(_metadata, self->hnid, EINVAL, 0, p, self->len,
		       MADV_READ_MOSTLY);
	expect_refused(_metadata, self->hnid, EINVAL, 0, p, self->len,
		       MADV_NO_READ_MOSTLY);
	if (self->hnid >= 0)
		expect_refused(_metadata, self->hnid, EINVAL, self->hnid, p,
			       self->len, MADV_READ_MOSTLY);
	ASSERT_EQ(0, read_mostly_at(_metadata, p));
	advise(_metadata, GM_NODE_ALL, p, 4, 8, MADV_READ_MOSTLY);
	ASSERT_EQ(0, read_mostly_at(_metadata, p));
	ASSERT_EQ(1, read_mostly_at(_metadata, p + 4 * self->page));
	ASSERT_EQ(0, read_mostly_at(_metadata, p + 12 * self->page));
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_READ_MOSTLY);
	ASSERT_EQ(0, read_mostly_at(_metadata, p));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * A read-mostly range read by an NPU: each page gets a read-only copy on
 * the NPU, the host keeps it, and the CPU reads it with no fault back.
 * The next jobs read the copies (nothing is copied again).  A CPU write
 * drops the copies of the page it writes, before it lands: the next job
 * reads the new data, and copies that page alone again.  An NPU write
 * takes the page for the NPU alone.
 */
TEST_F(policy, read_mostly_copies_stay_coherent)
{
	size_t len = self->len, page = self->page;
	struct gmem_npu_stats s, e;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 51);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_READ_MOSTLY);
	ASSERT_EQ(0, npu_stats(self->fd, &s));
	for (int r = 0; r < 3; r++) {
		ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
		ASSERT_EQ(sum32(p, len), sum) TH_LOG("round %d", r);
		ASSERT_EQ(-1, check_pattern(p, len, 51));
	}
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.migrations_to_dev + NPAGES, e.migrations_to_dev);
	ASSERT_EQ(s.migrations_to_host, e.migrations_to_host);
	ASSERT_EQ(s.resident_pages + NPAGES, e.resident_pages);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));

	/* A CPU write: the next job sees it, and page 3 alone is copied again. */
	s = e;
	((__u32 *)(p + 3 * page))[7] += 5;
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.migrations_to_dev + 1, e.migrations_to_dev);
	ASSERT_EQ(s.resident_pages, e.resident_pages);

	/* An NPU write: the pages move to the NPU, and the CPU reads the data. */
	ASSERT_EQ(0, npu_fill(self->fd, p, len, 0x77));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, pages_at(_metadata, p, HOST));
	ASSERT_EQ(-1, first_not(p, len, 0x77));
	/* Home again, read by the NPU: copied again. */
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ((__u64)NPAGES * (page / 4) * 0x77, sum);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));

	/* munmap frees the copies. */
	ASSERT_EQ(0, npu_stats(self->fd, &s));
	unmap_range(_metadata, p, NPAGES);
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.resident_pages - NPAGES, e.resident_pages);
}

/*
 * Two NPUs read the same read-mostly pages in turn: each holds a copy,
 * the host keeps the pages, nothing moves back and forth.  A CPU write
 * drops both copies of the page; an npu1 write takes the pages from npu0
 * and the host alike.  No stale read anywhere.
 */
TEST_F(policy, read_mostly_two_npus)
{
	size_t len = self->len;
	struct gmem_npu_stats s0, s1, e0, e1;
	int hnid1 = npu1_hnid(), fd1;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	if (hnid1 < 0)
		SKIP(return, NO_NPU, npu_dev_path[1]);
	fd1 = open_npu1(_metadata);
	p = map_range(_metadata, NPAGES, 52);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_READ_MOSTLY);
	ASSERT_EQ(0, npu_stats(self->fd, &s0));
	ASSERT_EQ(0, npu_stats(fd1, &s1));
	for (int r = 0; r < 4; r++) {
		ASSERT_EQ(0, npu_sum(r % 2 ? fd1 : self->fd, p, len, &sum));
		ASSERT_EQ(sum32(p, len), sum) TH_LOG("round %d", r);
	}
	ASSERT_EQ(-1, check_pattern(p, len, 52));
	ASSERT_EQ(0, npu_stats(self->fd, &e0));
	ASSERT_EQ(0, npu_stats(fd1, &e1));
	ASSERT_EQ(s0.migrations_to_dev + NPAGES, e0.migrations_to_dev);
	ASSERT_EQ(s1.migrations_to_dev + NPAGES, e1.migrations_to_dev);
	ASSERT_EQ(s0.migrations_to_host, e0.migrations_to_host);
	ASSERT_EQ(s1.migrations_to_host, e1.migrations_to_host);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, hnid1));

	/* The CPU writes every page: both NPUs read the new data. */
	fill_pattern(p, len, 53);
	ASSERT_EQ(0, npu_sum(fd1, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);

	/* npu1 writes: npu0's copies go, and so do the host's pages. */
	ASSERT_EQ(0, npu_fill(fd1, p, len, 0x99));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, hnid1));
	ASSERT_EQ(0, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, pages_at(_metadata, p, HOST));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ((__u64)NPAGES * (self->page / 4) * 0x99, sum);
	ASSERT_EQ(-1, first_not(p, len, 0x99));
	unmap_range(_metadata, p, NPAGES);
	close(fd1);
}

/*
 * The copies follow the CPU page table: after mprotect() makes the pages
 * writable again, after MADV_DONTNEED, after a copy-on-write break by
 * fork, an NPU job reads what the CPU sees, never a stale copy.
 */
TEST_F(policy, read_mostly_copies_follow_the_cpu)
{
	size_t len = self->len;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 54);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_READ_MOSTLY);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);

	/* Read-only, then writable again: written without a copy left. */
	ASSERT_EQ(0, mprotect(p, len, PROT_READ));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(0, mprotect(p, len, PROT_READ | PROT_WRITE));
	fill_pattern(p, len, 55);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);

	ASSERT_EQ(0, madvise(p, len, MADV_DONTNEED));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(0, sum);

	fill_pattern(p, len, 56);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	expect_cow_followed(_metadata, self->fd, p, len, 56);
	unmap_range(_metadata, p, NPAGES);
}

/*
 * In a read-only range, read-only copies the NPU has stay its way to read
 * those pages when the range is then accessed in place: a read fault maps
 * the other pages in place, read-only, and leaves the copies mapped, not
 * replaced by host pages behind the NPU's TLB (the simulated NPU WARNs if
 * a mapping its TLB caches is replaced).  Writable again, the range keeps
 * no copy, and the NPU reads the CPU's writes in place.
 */
TEST_F(policy, accessed_by_keeps_read_only_copies)
{
	size_t len = self->len, half = len / 2;
	struct gmem_npu_stats s, e;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 62);
	ASSERT_EQ(0, mprotect(p, len, PROT_READ));
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_READ_MOSTLY);
	ASSERT_EQ(0, npu_sum(self->fd, p, half, &sum));
	ASSERT_EQ(sum32(p, half), sum);
	ASSERT_EQ(NPAGES / 2, pages_at(_metadata, p, self->hnid));

	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_ACCESSED_BY);
	ASSERT_EQ(0, npu_stats(self->fd, &s));
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.migrations_to_dev, e.migrations_to_dev);
	ASSERT_EQ(s.resident_pages, e.resident_pages);
	ASSERT_EQ(NPAGES / 2, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));

	ASSERT_EQ(0, mprotect(p, len, PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, pages_at(_metadata, p, self->hnid));
	((__u32 *)p)[3] += 9;
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(sum32(p, len), sum);
	ASSERT_EQ(0, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(-1, check_pattern_at(p, self->page, len - self->page, 62));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * MADV_NO_READ_MOSTLY drops the copies at once; the next read moves the
 * pages as usual.  MADV_PREFETCH of a read-mostly range to the NPU makes
 * copies, and leaves the pages home.
 */
TEST_F(policy, read_mostly_off_and_prefetch)
{
	size_t len = self->len;
	struct gmem_npu_stats s, e;
	__u64 sum, want;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	p = map_range(_metadata, NPAGES, 58);
	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_READ_MOSTLY);
	ASSERT_EQ(0, npu_stats(self->fd, &s));
	advise(_metadata, self->hnid, p, 0, NPAGES, MADV_PREFETCH);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, HOST));
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.resident_pages + NPAGES, e.resident_pages);

	advise(_metadata, GM_NODE_ALL, p, 0, NPAGES, MADV_NO_READ_MOSTLY);
	ASSERT_EQ(0, read_mostly_at(_metadata, p));
	ASSERT_EQ(0, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, npu_stats(self->fd, &e));
	ASSERT_EQ(s.resident_pages, e.resident_pages);
	/* The CPU reads first: after the job it would bring the pages home. */
	want = sum32(p, len);
	ASSERT_EQ(0, npu_sum(self->fd, p, len, &sum));
	ASSERT_EQ(want, sum);
	ASSERT_EQ(NPAGES, pages_at(_metadata, p, self->hnid));
	ASSERT_EQ(0, pages_at(_metadata, p, HOST));
	ASSERT_EQ(-1, check_pattern(p, len, 58));
	unmap_range(_metadata, p, NPAGES);
}

/*
 * Copies are evictable, and cheap to evict (the host has the data): a
 * read-mostly range three times the NPU's limit is read through it again
 * and again, with the sums right and the host holding every page.
 */
TEST_F_TIMEOUT(policy, read_mostly_copies_under_eviction, 300)
{
	const size_t pages = 3 * SMALL_LIMIT;
	size_t step = STREAM_JOB * self->page;
	long long evictions;
	__u64 sum;
	char *p;

	if (self->fd < 0)
		SKIP(return, NO_NPU, npu_dev_path[0]);
	set_limit(_metadata, self->hnid, SMALL_LIMIT, &self->limit_changed);
	p = map_range(_metadata, pages, 59);
	advise(_metadata, GM_NODE_ALL, p, 0, pages, MADV_READ_MOSTLY);
	evictions = gm_node_read(self->hnid, "evictions");
	for (int r = 0; r < 2; r++) {
		for (size_t i = 0; i < pages / STREAM_JOB; i++) {
			ASSERT_EQ(0, npu_sum(self->fd, p + i * step, step, &sum))
				TH_LOG("round %d, job %zu", r, i);
			ASSERT_EQ(sum32(p + i * step, step), sum);
		}
	}
	/* The first round alone had to evict: only SMALL_LIMIT copies fit. */
	ASSERT_LE(evictions + (long long)(pages - SMALL_LIMIT),
		  gm_node_read(self->hnid, "evictions"));
	ASSERT_EQ((long)pages, pages_at(_metadata, p, HOST));
	ASSERT_GE((long)SMALL_LIMIT, pages_at(_metadata, p, self->hnid));
	/*
	 * The CPU still writes them, and the jobs read what it wrote, the
	 * last pages' copies (still there) dropped by the writes too.
	 */
	fill_pattern(p, pages * self->page, 60);
	for (size_t i = 0; i < pages / STREAM_JOB; i++) {
		ASSERT_EQ(0, npu_sum(self->fd, p + i * step, step, &sum))
			TH_LOG("job %zu", i);
		ASSERT_EQ(sum32(p + i * step, step), sum) TH_LOG("job %zu", i);
	}
	unmap_range(_metadata, p, pages);
}

TEST_HARNESS_MAIN
