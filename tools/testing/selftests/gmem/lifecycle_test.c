// SPDX-License-Identifier: GPL-2.0
/*
 * The life of a MAP_PEER_SHARED range: GMEM's logical page table follows
 * faults, munmap, mremap, mprotect, fork, exit and kill exactly, and its
 * tracked-page count (debugfs) returns to where it started.
 */
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "gmem_util.h"

#define NPAGES 16

FIXTURE(lifecycle)
{
	size_t page;
	size_t len;
	long base;	/* tracked pages when the test started */
	long spaces;	/* GMEM address spaces when the test started */
};

FIXTURE_SETUP(lifecycle)
{
	self->page = sysconf(_SC_PAGESIZE);
	self->len = NPAGES * self->page;
	if (tracked_pages() < 0)
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	self->base = tracked_pages();
	ASSERT_LE(0, self->base) TH_LOG("no " GMEM_DEBUGFS "tracked_pages");
	self->spaces = gmem_stat("address_spaces");
}

FIXTURE_TEARDOWN(lifecycle)
{
}

/* Every first touch, read or write, is tracked; munmap forgets them all. */
TEST_F(lifecycle, faults_are_tracked)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);

	ASSERT_NE(MAP_FAILED, p);
	/* mmap alone tracks nothing. */
	ASSERT_EQ(self->base, tracked_pages());
	touch_pages(p, 10 * self->page, self->page);
	ASSERT_EQ(self->base + 10, tracked_pages());
	/* A read fault gets a real page too (never the zero page). */
	ASSERT_EQ(0, p[12 * self->page]);
	ASSERT_EQ(self->base + 11, tracked_pages());
	/* A second touch of a tracked page adds nothing. */
	touch_pages(p, 10 * self->page, self->page);
	ASSERT_EQ(self->base + 11, tracked_pages());
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* Ordinary anonymous memory is not GMEM's business. */
TEST_F(lifecycle, ordinary_memory_untracked)
{
	char *p = mmap(NULL, self->len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(MAP_FAILED, p);
	touch_pages(p, self->len, self->page);
	ASSERT_EQ(self->base, tracked_pages());
	ASSERT_EQ(0, munmap(p, self->len));
}

/* munmap of parts: exactly the unmapped pages are forgotten. */
TEST_F(lifecycle, partial_munmap)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len, 5);
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(0, munmap(p + 4 * self->page, 3 * self->page));
	ASSERT_EQ(self->base + NPAGES - 3, tracked_pages());
	ASSERT_EQ(0, munmap(p, self->page));
	ASSERT_EQ(self->base + NPAGES - 4, tracked_pages());
	/* What is left is intact. */
	ASSERT_EQ(-1, check_pattern_at(p, self->page, 3 * self->page, 5));
	ASSERT_EQ(-1, check_pattern_at(p, 7 * self->page, 9 * self->page, 5));
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* mremap moving a range: the entries move with it, the data too. */
TEST_F(lifecycle, mremap_move)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);
	char *q, *target;

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len, 9);
	/* A free spot to move to. */
	target = mmap(NULL, self->len, PROT_NONE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, target);
	q = mremap(p, self->len, self->len, MREMAP_MAYMOVE | MREMAP_FIXED,
		   target);
	ASSERT_EQ(target, q);
	/* Still tracked (now at the new address), nothing re-faulted. */
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(-1, check_pattern(q, self->len, 9));
	ASSERT_EQ(1, vma_has_flag(q, "ps"));
	ASSERT_EQ(0, munmap(q, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* mremap growing a range (in place or moved): old pages keep their data. */
TEST_F(lifecycle, mremap_grow)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);
	char *q;

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len, 11);
	q = mremap(p, self->len, 4 * self->len, MREMAP_MAYMOVE);
	ASSERT_NE(MAP_FAILED, q);
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(-1, check_pattern(q, self->len, 11));
	touch_pages(q + self->len, 3 * self->len, self->page);
	ASSERT_EQ(self->base + 4 * NPAGES, tracked_pages());
	ASSERT_EQ(0, munmap(q, 4 * self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* mremap shrinking: the cut-off pages are forgotten. */
TEST_F(lifecycle, mremap_shrink)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);

	ASSERT_NE(MAP_FAILED, p);
	touch_pages(p, self->len, self->page);
	ASSERT_EQ(p, mremap(p, self->len, self->len / 2, 0));
	ASSERT_EQ(self->base + NPAGES / 2, tracked_pages());
	ASSERT_EQ(0, munmap(p, self->len / 2));
	ASSERT_EQ(self->base, tracked_pages());
}

/* mprotect splits and merges the VMA; the table does not care. */
TEST_F(lifecycle, mprotect_split_and_merge)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len, 13);
	ASSERT_EQ(0, mprotect(p + 2 * self->page, 4 * self->page, PROT_READ));
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(-1, check_pattern(p, self->len, 13));
	ASSERT_EQ(0, mprotect(p + 2 * self->page, 4 * self->page,
			      PROT_READ | PROT_WRITE));
	fill_pattern(p, self->len, 14);
	ASSERT_EQ(-1, check_pattern(p, self->len, 14));
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* madvise(MADV_DONTNEED) on a peer-shared range reads zeros after. */
TEST_F(lifecycle, madvise_dontneed)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len, 15);
	ASSERT_EQ(0, madvise(p, self->len, MADV_DONTNEED));
	for (size_t i = 0; i < self->len; i++)
		ASSERT_EQ(0, p[i]);
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* No huge pages in a peer-shared range, even when asked for. */
TEST_F(lifecycle, no_thp)
{
	size_t len = 8 << 20;
	char *p = mmap_peer_shared(NULL, len, 0);
	char *aligned;

	ASSERT_NE(MAP_FAILED, p);
	aligned = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
	madvise(aligned, 4 << 20, MADV_HUGEPAGE);
	touch_pages(aligned, 4 << 20, self->page);
	ASSERT_EQ(self->base + (4 << 20) / (long)self->page, tracked_pages());
	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* fork: the child sees the parent's data; both go their own way after. */
TEST_F(lifecycle, fork_copies_data)
{
	char *p = mmap_peer_shared(NULL, self->len, 0);
	int status;
	pid_t pid;

	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, self->len / 2, 17);
	ASSERT_EQ(self->base + NPAGES / 2, tracked_pages());
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		/* The child has its own (empty) address space. */
		if (check_pattern(p, self->len / 2, 17) != -1)
			_exit(1);
		if (vma_has_flag(p, "ps") != 1)
			_exit(2);
		fill_pattern(p, self->len, 18);
		if (check_pattern(p, self->len, 18) != -1)
			_exit(3);
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	/* The child's writes did not reach the parent. */
	ASSERT_EQ(-1, check_pattern(p, self->len / 2, 17));
	for (size_t i = self->len / 2; i < self->len; i++)
		ASSERT_EQ(0, p[i]);
	/* Whatever the child tracked went with it. */
	ASSERT_EQ(self->base + NPAGES, tracked_pages());
	ASSERT_EQ(self->spaces + 1, gmem_stat("address_spaces"));
	ASSERT_EQ(0, munmap(p, self->len));
	ASSERT_EQ(self->base, tracked_pages());
}

/* A process that exits with pages tracked leaves nothing behind. */
TEST_F(lifecycle, exit_frees_everything)
{
	int status;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		char *p = mmap_peer_shared(NULL, 64 * self->page, 0);

		if (p == MAP_FAILED)
			_exit(1);
		touch_pages(p, 64 * self->page, self->page);
		_exit(tracked_pages() == self->base + 64 ? 0 : 2);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(self->base, tracked_pages());
	ASSERT_EQ(self->spaces, gmem_stat("address_spaces"));
}

/* SIGKILL in the middle of faulting pages in: nothing leaks. */
TEST_F(lifecycle, kill_while_faulting)
{
	int status, pipefd[2];
	pid_t pid;
	char c;

	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		size_t len = 64 << 20;
		char *p = mmap_peer_shared(NULL, len, 0);

		if (p == MAP_FAILED)
			_exit(1);
		p[0] = 1;
		if (write(pipefd[1], "x", 1) != 1)
			_exit(2);
		for (;;) {
			touch_pages(p, len, self->page);
			madvise(p, len, MADV_DONTNEED);
		}
	}
	ASSERT_EQ(1, read(pipefd[0], &c, 1));
	usleep(20000);
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	ASSERT_EQ(self->base, tracked_pages());
	ASSERT_EQ(self->spaces, gmem_stat("address_spaces"));
	close(pipefd[0]);
	close(pipefd[1]);
}

TEST_HARNESS_MAIN
