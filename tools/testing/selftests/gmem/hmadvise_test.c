// SPDX-License-Identifier: GPL-2.0
/*
 * hmadvise(2): what it does, its argument checks and their errors.  Every refused call must
 * leave the range and its data as they were.
 */
#include "../kselftest_harness.h"
#include "gmem_util.h"

#define NPAGES 8

FIXTURE(hmadvise)
{
	size_t page;
	size_t len;
	char *buf;	/* NPAGES peer-shared pages, filled with a pattern */
};

FIXTURE_SETUP(hmadvise)
{
	self->page = sysconf(_SC_PAGESIZE);
	self->len = NPAGES * self->page;
	self->buf = mmap_peer_shared(NULL, self->len, 0);
	ASSERT_NE(MAP_FAILED, self->buf);
	fill_pattern(self->buf, self->len, 7);
}

FIXTURE_TEARDOWN(hmadvise)
{
	/* Whatever the test did, the data must have survived. */
	EXPECT_EQ(-1, check_pattern(self->buf, self->len, 7));
	munmap(self->buf, self->len);
}

static void expect_err(struct __test_metadata *_metadata, int err, int hnid,
		       unsigned long start, size_t len, int advice)
{
	errno = 0;
	ASSERT_EQ(-1, hmadvise(hnid, start, len, advice));
	ASSERT_EQ(err, errno);
}

/* Prefetch to host node 0 of the whole range, of one page, of a byte. */
TEST_F(hmadvise, prefetch_to_host_node)
{
	unsigned long start = (unsigned long)self->buf;

	ASSERT_EQ(0, hmadvise(0, start, self->len, MADV_PREFETCH));
	ASSERT_EQ(0, hmadvise(0, start + self->page, self->page, MADV_PREFETCH));
	/* A length that is not a multiple of the page size is rounded up. */
	ASSERT_EQ(0, hmadvise(0, start, 1, MADV_PREFETCH));
	ASSERT_EQ(0, hmadvise(0, start, self->len - 1, MADV_PREFETCH));
	/* Any online host node will do (the test VM has a node 1). */
	if (access("/sys/devices/system/node/node1", F_OK) == 0)
		ASSERT_EQ(0, hmadvise(1, start, self->len, MADV_PREFETCH));
}

/*
 * MADV_DONTNEED drops the pages of the range on every node (GM_NODE_ALL) or
 * on one node: the next read sees zeros, pages outside the range keep
 * their data.
 */
TEST_F(hmadvise, dontneed_zeroes_the_range)
{
	unsigned long start = (unsigned long)self->buf;
	size_t page = self->page;
	char *copy = malloc(self->len);

	ASSERT_NE(NULL, copy);
	memcpy(copy, self->buf, self->len);
	ASSERT_EQ(0, hmadvise(GM_NODE_ALL, start + page, 2 * page,
			      MADV_DONTNEED));
	ASSERT_EQ(0, hmadvise(0, start + 5 * page, page, MADV_DONTNEED));
	for (size_t i = 0; i < NPAGES; i++) {
		char *p = self->buf + i * page;
		int dropped = i == 1 || i == 2 || i == 5;

		for (size_t off = 0; off < page; off++) {
			ASSERT_EQ(dropped ? 0 : copy[i * page + off], p[off])
				TH_LOG("page %zu offset %zu", i, off);
		}
	}
	free(copy);
	/* The range is usable as before; refill it for the teardown. */
	fill_pattern(self->buf, self->len, 7);
}

/*
 * hnid GM_NODE_ALL is valid for MADV_DONTNEED, and for MADV_PREFETCH: each
 * page to its preferred location, of which these pages have none (0, and
 * nothing moves).  Not for an advice that names one node (policy_test has
 * the advices of range attributes).
 */
TEST_F(hmadvise, all_nodes)
{
	unsigned long start = (unsigned long)self->buf;

	ASSERT_EQ(0, hmadvise(GM_NODE_ALL, start, self->len, MADV_PREFETCH));
	expect_err(_metadata, EINVAL, GM_NODE_ALL, start, self->len,
		   MADV_PREFERRED_LOCATION);
	ASSERT_EQ(0, hmadvise(GM_NODE_ALL, start, 0, MADV_DONTNEED));
}

TEST_F(hmadvise, empty_range)
{
	unsigned long start = (unsigned long)self->buf;

	ASSERT_EQ(0, hmadvise(0, start, 0, MADV_PREFETCH));
	/* Nothing is mapped at 0, but an empty range touches nothing. */
	ASSERT_EQ(0, hmadvise(0, 0, 0, MADV_PREFETCH));
	/* The other arguments are still checked. */
	expect_err(_metadata, EINVAL, 0, start + 1, 0, MADV_PREFETCH);
	expect_err(_metadata, EINVAL, 0, start, 0, -1);
	expect_err(_metadata, EINVAL, 1 << 20, start, 0, MADV_PREFETCH);
}

TEST_F(hmadvise, unaligned_start)
{
	unsigned long start = (unsigned long)self->buf;

	expect_err(_metadata, EINVAL, 0, start + 1, self->page, MADV_PREFETCH);
	expect_err(_metadata, EINVAL, 0, start + self->page / 2, self->page,
		   MADV_PREFETCH);
}

TEST_F(hmadvise, unknown_advice)
{
	unsigned long start = (unsigned long)self->buf;
	int bad[] = { -1, MADV_NORMAL, MADV_WILLNEED, MADV_FREE, MADV_COLD,
		      MADV_PAGEOUT, MADV_PREFETCH - 1, MADV_NO_ACCESSED_BY + 1,
		      0x7fffffff };

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		expect_err(_metadata, EINVAL, 0, start, self->len, bad[i]);
}

TEST_F(hmadvise, invalid_node)
{
	unsigned long start = (unsigned long)self->buf;
	int bad[] = { -2, -1000, 1 << 20, 0x7fffffff };

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		expect_err(_metadata, EINVAL, bad[i], start, self->len,
			   MADV_PREFETCH);
	/* A node id that is possible but not online. */
	expect_err(_metadata, EINVAL, 63, start, self->len, MADV_PREFETCH);
}

TEST_F(hmadvise, overflow)
{
	unsigned long start = (unsigned long)self->buf;

	expect_err(_metadata, EINVAL, 0, start, -1UL, MADV_PREFETCH);
	expect_err(_metadata, EINVAL, 0, start, -start, MADV_PREFETCH);
	expect_err(_metadata, EINVAL, 0, -self->page, 2 * self->page,
		   MADV_PREFETCH);
}

TEST_F(hmadvise, unmapped)
{
	size_t len = 2 * self->page;
	char *p;

	/* A range that runs past the end of its mapping into a hole. */
	p = mmap_peer_shared(NULL, 2 * len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, munmap(p + len, len));
	expect_err(_metadata, ENOMEM, 0, (unsigned long)p, 2 * len,
		   MADV_PREFETCH);
	expect_err(_metadata, ENOMEM, 0, (unsigned long)p + len, len,
		   MADV_DONTNEED);
	ASSERT_EQ(0, munmap(p, len));
	/* Nothing mapped at all (the first page of the address space). */
	expect_err(_metadata, ENOMEM, 0, 0, self->page, MADV_PREFETCH);
}

TEST_F(hmadvise, hole)
{
	unsigned long start = (unsigned long)self->buf;
	char *hole = self->buf + 3 * self->page;

	ASSERT_EQ(0, munmap(hole, self->page));
	expect_err(_metadata, ENOMEM, 0, start, self->len, MADV_PREFETCH);
	/* Either side of the hole still works. */
	ASSERT_EQ(0, hmadvise(0, start, 3 * self->page, MADV_PREFETCH));
	/* Put the page back (with the pattern) for the teardown check. */
	ASSERT_EQ(hole, mmap_peer_shared(hole, self->page, MAP_FIXED));
	fill_pattern(self->buf, self->len, 7);
	ASSERT_EQ(0, hmadvise(0, start, self->len, MADV_PREFETCH));
}

TEST_F(hmadvise, not_peer_shared)
{
	size_t len = 2 * self->page;
	char *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, p);
	p[0] = 1;
	expect_err(_metadata, EINVAL, 0, (unsigned long)p, len, MADV_PREFETCH);
	expect_err(_metadata, EINVAL, 0, (unsigned long)p, len, MADV_DONTNEED);
	ASSERT_EQ(1, p[0]);
	ASSERT_EQ(0, munmap(p, len));
}

/* A range that is partly peer-shared is refused as a whole. */
TEST_F(hmadvise, partly_peer_shared)
{
	size_t len = 2 * self->page;
	char *p;

	p = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(p + len, mmap_peer_shared(p + len, len, MAP_FIXED));
	fill_pattern(p, 2 * len, 3);
	expect_err(_metadata, EINVAL, 0, (unsigned long)p, 2 * len,
		   MADV_PREFETCH);
	ASSERT_EQ(0, hmadvise(0, (unsigned long)p + len, len, MADV_PREFETCH));
	ASSERT_EQ(-1, check_pattern(p, 2 * len, 3));
	ASSERT_EQ(0, munmap(p, 2 * len));
}

/* madvise() does not know MADV_PREFETCH. */
TEST_F(hmadvise, madvise_rejects_prefetch)
{
	errno = 0;
	ASSERT_EQ(-1, madvise(self->buf, self->len, MADV_PREFETCH));
	ASSERT_EQ(EINVAL, errno);
}

TEST_HARNESS_MAIN
