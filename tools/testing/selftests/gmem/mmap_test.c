// SPDX-License-Identifier: GPL-2.0
/*
 * mmap(MAP_PEER_SHARED): which requests are accepted, how the VMA is
 * marked, and that a refused request leaves the address space intact;
 * userfaultfd and guard regions refuse peer-shared ranges.
 */
#include <fcntl.h>
#include <linux/mman.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include "../kselftest_harness.h"
#include "gmem_util.h"

FIXTURE(mmap)
{
	size_t page;
};

FIXTURE_SETUP(mmap)
{
	self->page = sysconf(_SC_PAGESIZE);
}

FIXTURE_TEARDOWN(mmap)
{
}

/* A private anonymous peer-shared range works like ordinary memory. */
TEST_F(mmap, private_anonymous)
{
	size_t len = 16 * self->page;
	char *p;

	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	/* Untouched memory reads as zeros. */
	for (size_t i = 0; i < len; i += self->page)
		ASSERT_EQ(0, p[i]);
	fill_pattern(p, len, 1);
	ASSERT_EQ(-1, check_pattern(p, len, 1));
	ASSERT_EQ(0, munmap(p, len));
}

/* The VMA carries VM_PEER_SHARED, shown as "ps" in smaps; others do not. */
TEST_F(mmap, smaps_flag)
{
	size_t len = 4 * self->page;
	void *p, *q;

	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	q = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, q);
	EXPECT_EQ(1, vma_has_flag(p, "ps"));
	EXPECT_EQ(0, vma_has_flag(q, "ps"));
	ASSERT_EQ(0, munmap(p, len));
	ASSERT_EQ(0, munmap(q, len));
}

/* The flag survives a VMA split (mprotect) and stays only where it was. */
TEST_F(mmap, split_keeps_flag)
{
	size_t len = 4 * self->page;
	char *p;

	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, mprotect(p + self->page, self->page, PROT_READ));
	EXPECT_EQ(1, vma_has_flag(p, "ps"));
	EXPECT_EQ(1, vma_has_flag(p + self->page, "ps"));
	EXPECT_EQ(1, vma_has_flag(p + 2 * self->page, "ps"));
	ASSERT_EQ(0, munmap(p, len));
}

/*
 * @len bytes of ordinary anonymous memory with @len peer-shared bytes right
 * above them; returns the start of the ordinary part, or MAP_FAILED.
 */
static char *map_below_peer_shared(size_t len)
{
	char *q;

	q = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (q == MAP_FAILED)
		return q;
	if (mmap_peer_shared(q + len, len, MAP_FIXED) != q + len) {
		munmap(q, 2 * len);
		return MAP_FAILED;
	}
	return q;
}

/* A peer-shared range next to an ordinary one is never merged into it. */
TEST_F(mmap, no_merge_with_ordinary_memory)
{
	size_t len = 2 * self->page;
	char *p;

	p = map_below_peer_shared(len);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_EQ(0, vma_has_flag(p, "ps"));
	EXPECT_EQ(1, vma_has_flag(p + len, "ps"));
	ASSERT_EQ(0, munmap(p, 2 * len));
}

/* UFFDIO_REGISTER of @len bytes at @p in @mode; 0 or the errno. */
static int uffd_register(int uffd, void *p, size_t len, __u64 mode)
{
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)p, .len = len },
		.mode = mode,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &reg) ? errno : 0;
}

/*
 * userfaultfd refuses a peer-shared range (a page on a device has no PTE
 * but is not missing) with EINVAL, also as part of a larger range, and
 * registers nothing then; the same calls on ordinary memory succeed.
 */
TEST_F(mmap, userfaultfd_refused)
{
	struct uffdio_api api = { .api = UFFD_API };
	size_t len = 2 * self->page;
	int uffd, wp;
	char *q, *p;

	uffd = syscall(__NR_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	if (uffd < 0 && errno == ENOSYS)
		SKIP(return, "no userfaultfd (CONFIG_USERFAULTFD=n)");
	ASSERT_LE(0, uffd);
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_API, &api));
	/* Write protection of anonymous memory, where the arch has it. */
	wp = !!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP);

	/* q: ordinary memory; p: peer-shared, right above it. */
	q = map_below_peer_shared(len);
	ASSERT_NE(MAP_FAILED, q);
	p = q + len;
	fill_pattern(p, len, 7);

	/* Both modes, alone and spanning q: EINVAL, nothing registered. */
	EXPECT_EQ(EINVAL, uffd_register(uffd, p, len, UFFDIO_REGISTER_MODE_MISSING));
	EXPECT_EQ(EINVAL, uffd_register(uffd, q, 2 * len, UFFDIO_REGISTER_MODE_MISSING));
	if (wp)
		EXPECT_EQ(EINVAL, uffd_register(uffd, p, len, UFFDIO_REGISTER_MODE_WP));
	EXPECT_EQ(0, vma_has_flag(q, "um"));
	EXPECT_EQ(0, vma_has_flag(p, "um"));
	EXPECT_EQ(1, vma_has_flag(p, "ps"));
	EXPECT_EQ(-1, check_pattern(p, len, 7));

	/* The ordinary half registers, and smaps shows it: the checks above can fail. */
	EXPECT_EQ(0, uffd_register(uffd, q, len, UFFDIO_REGISTER_MODE_MISSING |
				   (wp ? UFFDIO_REGISTER_MODE_WP : 0)));
	EXPECT_EQ(1, vma_has_flag(q, "um"));
	EXPECT_EQ(wp, vma_has_flag(q, "uw"));
	close(uffd);
	ASSERT_EQ(0, munmap(q, 2 * len));
}

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

/* Does a read of @p kill a child with SIGSEGV (a guard marker)? -1: no child. */
static int read_faults(const char *p)
{
	pid_t pid;
	int rc;

	pid = fork();
	if (pid < 0)
		return -1;
	if (!pid) {
		(void)__atomic_load_n(p, __ATOMIC_RELAXED);
		_exit(0);
	}
	rc = wait_child(pid);
	return rc < 0 ? -1 : rc == 128 + SIGSEGV;
}

/*
 * Guard regions: MADV_GUARD_INSTALL and MADV_GUARD_REMOVE fail with EINVAL
 * on a peer-shared VMA and leave its pages readable with their data; on
 * ordinary memory (also below a peer-shared VMA, in one call with it, as
 * madvise() does for any VMA it refuses) the guard is installed.
 */
TEST_F(mmap, guard_regions_refused)
{
	size_t len = 2 * self->page;
	char *q, *p;

	/* q: ordinary memory; p: peer-shared, right above it. */
	q = map_below_peer_shared(len);
	ASSERT_NE(MAP_FAILED, q);
	p = q + len;
	fill_pattern(p, len, 9);

	errno = 0;
	if (madvise(q, len, MADV_GUARD_INSTALL) && errno == EINVAL)
		SKIP(goto out, "no guard regions in this kernel");
	EXPECT_EQ(1, read_faults(q));
	EXPECT_EQ(0, madvise(q, len, MADV_GUARD_REMOVE));
	EXPECT_EQ(0, read_faults(q));

	errno = 0;
	EXPECT_EQ(-1, madvise(p, len, MADV_GUARD_INSTALL));
	EXPECT_EQ(EINVAL, errno);
	errno = 0;
	EXPECT_EQ(-1, madvise(q, 2 * len, MADV_GUARD_INSTALL));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(1, read_faults(q));
	EXPECT_EQ(0, read_faults(p));
	EXPECT_EQ(0, read_faults(p + len - 1));
	errno = 0;
	EXPECT_EQ(-1, madvise(p, len, MADV_GUARD_REMOVE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-1, check_pattern(p, len, 9));
	EXPECT_EQ(1, vma_has_flag(p, "ps"));
out:
	ASSERT_EQ(0, munmap(q, 2 * len));
}

FIXTURE(mmap_invalid)
{
	size_t page;
	char *keep;	/* an existing mapping a refused mmap must not touch */
};

FIXTURE_SETUP(mmap_invalid)
{
	self->page = sysconf(_SC_PAGESIZE);
	self->keep = mmap(NULL, self->page, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->keep);
	fill_pattern(self->keep, self->page, 42);
}

FIXTURE_TEARDOWN(mmap_invalid)
{
	munmap(self->keep, self->page);
}

/* Try MAP_FIXED over @keep with @flags and @fd: must fail with EINVAL. */
static void expect_einval(struct __test_metadata *_metadata, char *keep,
			  size_t page, int flags, int fd)
{
	void *p;

	errno = 0;
	p = mmap(keep, page, PROT_READ | PROT_WRITE,
		 flags | MAP_PEER_SHARED | MAP_FIXED, fd, 0);
	ASSERT_EQ(MAP_FAILED, p);
	ASSERT_EQ(EINVAL, errno);
	/* The mapping that was there is untouched. */
	ASSERT_EQ(-1, check_pattern(keep, page, 42));
	ASSERT_EQ(0, vma_has_flag(keep, "ps"));
}

TEST_F(mmap_invalid, shared_anonymous)
{
	expect_einval(_metadata, self->keep, self->page, MAP_SHARED | MAP_ANONYMOUS, -1);
}

TEST_F(mmap_invalid, shared_validate_anonymous)
{
	expect_einval(_metadata, self->keep, self->page, MAP_SHARED_VALIDATE | MAP_ANONYMOUS, -1);
}

TEST_F(mmap_invalid, droppable)
{
	expect_einval(_metadata, self->keep, self->page, MAP_DROPPABLE | MAP_ANONYMOUS, -1);
}

TEST_F(mmap_invalid, private_file)
{
	int fd = open("/dev/zero", O_RDWR);

	ASSERT_LE(0, fd);
	expect_einval(_metadata, self->keep, self->page, MAP_PRIVATE, fd);
	close(fd);
}

TEST_F(mmap_invalid, shared_file)
{
	int fd = open("/dev/zero", O_RDWR);

	ASSERT_LE(0, fd);
	expect_einval(_metadata, self->keep, self->page, MAP_SHARED, fd);
	close(fd);
}

TEST_F(mmap_invalid, hugetlb)
{
	expect_einval(_metadata, self->keep, self->page,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1);
}

/*
 * With MAP_HUGETLB, the bits of MAP_PEER_SHARED are part of the hugetlb page
 * size (MAP_HUGE_1GB, MAP_HUGE_16KB, ...): every size code behaves as on a
 * kernel without GMEM.  A size the kernel has no huge page pool for fails
 * with EINVAL; one it has maps, or fails with ENOMEM when the pool is empty,
 * and the mapping is not peer-shared.
 */
TEST(hugetlb_size_codes)
{
	static const int shifts[] = {
		14, 16, 19, 20, 21, 23, 24, 25, 28, 29, 30, 31, 34,
	};
	int pools_with_bit = 0;

	for (size_t i = 0; i < ARRAY_SIZE(shifts); i++) {
		int shift = shifts[i];
		unsigned long size = 1UL << shift;
		int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
			    (shift << MAP_HUGE_SHIFT);
		char pool[128];
		int exists;
		void *p;

		snprintf(pool, sizeof(pool),
			 "/sys/kernel/mm/hugepages/hugepages-%lukB", size >> 10);
		exists = !access(pool, F_OK);
		if (exists && (flags & MAP_PEER_SHARED))
			pools_with_bit++;
		errno = 0;
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (!exists) {
			ASSERT_EQ(MAP_FAILED, p) TH_LOG("2^%d bytes", shift);
			ASSERT_EQ(EINVAL, errno) TH_LOG("2^%d bytes", shift);
			continue;
		}
		if (p == MAP_FAILED) {
			/* No page reserved in the pool. */
			ASSERT_EQ(ENOMEM, errno) TH_LOG("2^%d bytes", shift);
			continue;
		}
		ASSERT_EQ(0, vma_has_flag(p, "ps")) TH_LOG("2^%d bytes", shift);
		ASSERT_EQ(0, munmap(p, size));
	}
	TH_LOG("%d huge page pools whose size code has bit 27", pools_with_bit);
}

/* A huge page from the 2 MiB pool maps and holds data; it is not peer-shared. */
TEST(hugetlb_2mib_page)
{
	const char *nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
	size_t size = 2UL << 20;
	char old[32] = "0";
	int fd, n;
	char *p;

	fd = open(nr, O_RDWR);
	if (fd < 0)
		SKIP(return, "no 2 MiB huge page pool");
	n = read(fd, old, sizeof(old) - 1);
	old[n > 0 ? n : 0] = '\0';
	if (pwrite(fd, "1", 1, 0) != 1) {
		close(fd);
		SKIP(return, "cannot reserve a 2 MiB huge page");
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
	if (p == MAP_FAILED && errno == ENOMEM) {
		pwrite(fd, old, strlen(old), 0);
		close(fd);
		SKIP(return, "no free 2 MiB page");
	}
	ASSERT_NE(MAP_FAILED, p);
	fill_pattern(p, size, 7);
	ASSERT_EQ(-1, check_pattern(p, size, 7));
	ASSERT_EQ(0, vma_has_flag(p, "ps"));
	ASSERT_EQ(0, munmap(p, size));
	pwrite(fd, old, strlen(old), 0);
	close(fd);
}

TEST_HARNESS_MAIN
