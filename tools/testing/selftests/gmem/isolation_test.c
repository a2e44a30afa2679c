// SPDX-License-Identifier: GPL-2.0
/*
 * Isolation between processes that share the simulated NPUs: device pages
 * never carry one process's data to another (Documentation/mm/gmem.rst,
 * "Device memory": a page is filled with its data or with zeroes before it
 * is mapped), a process reaches another's memory neither with hmadvise()
 * nor with an NPU file of its own, a file another process attached acts on
 * that process's memory only as long as it lives, and an unprivileged user
 * can use neither the device node nor the sysfs limit.
 *
 * Device memory is global: nothing else may use the NPUs while this runs.
 */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define SECRET		0x5ec2e700U	/* what the first process leaves behind */

/*
 * The NPU memory the first process fills and the second then uses: with the
 * NPU's limit lowered to it, the second process gets the pages the first
 * one freed (the allocator fills partly used chunks first and hands freed
 * chunks out again), and the test stays short under TCG.
 */
#define REUSE_BYTES	(16UL << 20)

static int send_fd(int sock, int fd)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 }, c = 'f';
	struct iovec iov = { &c, 1 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = buf, .msg_controllen = sizeof(buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

/* The file descriptor another process sent over @sock, or -1. */
static int recv_fd(int sock)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 }, c;
	struct iovec iov = { &c, 1 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = buf, .msg_controllen = sizeof(buf),
	};
	struct cmsghdr *cm;
	int fd = -1;

	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

/* Skips without an NPU; the baseline and npu0's description otherwise. */
static void setup_common(struct __test_metadata *_metadata,
			 struct gm_baseline *base, struct gmem_npu_info *info)
{
	int fd;

	if (access(npu_dev_path[0], F_OK))
		SKIP(return, "no %s (gmem_npu_sim not loaded, or no ivshmem device)",
		     npu_dev_path[0]);
	ASSERT_EQ(0, gm_baseline_take(base))
		TH_LOG("cannot read the GMEM statistics (debugfs, sysfs)");
	fd = open(npu_dev_path[0], O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, npu_get_info(fd, info));
	close(fd);
	ASSERT_EQ(0, gm_limit_reset(info->hnid, info->dram_size));
}

FIXTURE(isolation)
{
	size_t page;
	struct gm_baseline base;
	struct gmem_npu_info info;
};

FIXTURE_SETUP(isolation)
{
	self->page = sysconf(_SC_PAGESIZE);
	setup_common(_metadata, &self->base, &self->info);
}

FIXTURE_TEARDOWN(isolation)
{
	char why[512];

	/* Whatever a test started is gone: nothing of it stays on the NPUs. */
	EXPECT_EQ(0, gm_baseline_wait(&self->base, 10, why, sizeof(why)))
		TH_LOG("%s", why);
}

/*
 * The device node: a character device of root's that no other user may
 * open.  The driver documents no mode; a misc device that lets any process
 * run jobs on, and take memory of, a device shared by every process would
 * have to say so, so the default (0600) is what a reviewer expects.  The
 * sysfs limit is writable by root only ("writable (by root)"), the other
 * sysfs files are read-only.
 */
TEST_F(isolation, device_node_permissions)
{
	static const char *const ro[] = {
		"name", "faultable", "size", "resident", "free", "evictions",
		"reserve_low", "reserve_high", GM_NODE_PINNED,
	};
	char path[128];
	struct stat st;

	for (int i = 0; i < self->base.nnpu; i++) {
		ASSERT_EQ(0, stat(npu_dev_path[i], &st));
		EXPECT_TRUE(S_ISCHR(st.st_mode));
		EXPECT_EQ(10, major(st.st_rdev));	/* MISC_MAJOR */
		EXPECT_EQ(0, st.st_uid);
		EXPECT_EQ(0, st.st_mode & 0077)
			TH_LOG("%s has mode %o", npu_dev_path[i],
			       st.st_mode & 07777);
		EXPECT_EQ(0, st.st_mode & (S_ISUID | S_ISGID | S_ISVTX));

		snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/limit",
			 self->base.hnid[i]);
		ASSERT_EQ(0, stat(path, &st));
		EXPECT_EQ(0, st.st_uid);
		EXPECT_EQ(0644, st.st_mode & 07777);
		for (int f = 0; f < ARRAY_SIZE(ro); f++) {
			snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/%s",
				 self->base.hnid[i], ro[f]);
			ASSERT_EQ(0, stat(path, &st)) TH_LOG("%s", path);
			EXPECT_EQ(0444, st.st_mode & 07777) TH_LOG("%s", path);
		}
	}
}

/*
 * A user without privileges: the device node and the limit refuse it
 * (EACCES), its own peer-shared memory works, and an NPU node names
 * nothing for it (EINVAL: not attached, Documentation/mm/gmem.rst).
 */
TEST_F(isolation, unprivileged_user)
{
	size_t len = 16 * self->page;
	int hnid = self->info.hnid;
	char path[128];
	pid_t pid;
	int ret;

	snprintf(path, sizeof(path), "/sys/kernel/mm/gmem/node%u/limit", hnid);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		char *p;

		if (become_nobody())
			_exit(1);
		for (int i = 0; i < self->base.nnpu; i++) {
			if (open(npu_dev_path[i], O_RDWR) >= 0 || errno != EACCES)
				_exit(2);
			if (open(npu_dev_path[i], O_RDONLY) >= 0 || errno != EACCES)
				_exit(3);
		}
		if (open(path, O_WRONLY) >= 0 || errno != EACCES)
			_exit(4);
		p = mmap_peer_shared(NULL, len, 0);
		if (p == MAP_FAILED)
			_exit(5);
		fill_pattern(p, len, SECRET);
		if (hmadvise_err(hnid, p, len, MADV_PREFETCH) != EINVAL ||
		    hmadvise_err(hnid, p, len, MADV_DONTNEED) != EINVAL)
			_exit(6);
		if (hmadvise_err(0, p, len, MADV_PREFETCH))
			_exit(7);
		if (check_pattern(p, len, SECRET) != -1)
			_exit(8);
		_exit(0);
	}
	ret = wait_child(pid);
	ASSERT_EQ(0, ret) TH_LOG("the unprivileged child's check %d failed", ret);
	/* The limit did not move. */
	ASSERT_EQ(self->info.dram_size, gm_node_read(hnid, "limit"));
}

/* How the first process lets go of its NPU pages. */
enum release {
	REL_MUNMAP, REL_EXIT, REL_MADV_DONTNEED, REL_HMADV_DONTNEED,
	REL_HMADV_ALL, REL_DETACH, REL_EVICT,
};

FIXTURE(reuse)
{
	size_t page;
	struct gm_baseline base;
	struct gmem_npu_info info;
	unsigned long long limit;	/* npu0's, restored at teardown */
	int limit_changed;
};

FIXTURE_VARIANT(reuse)
{
	enum release release;
};

FIXTURE_VARIANT_ADD(reuse, munmap) { .release = REL_MUNMAP };
FIXTURE_VARIANT_ADD(reuse, exit) { .release = REL_EXIT };
FIXTURE_VARIANT_ADD(reuse, madvise_dontneed) { .release = REL_MADV_DONTNEED };
FIXTURE_VARIANT_ADD(reuse, hmadvise_dontneed) { .release = REL_HMADV_DONTNEED };
FIXTURE_VARIANT_ADD(reuse, hmadvise_all) { .release = REL_HMADV_ALL };
FIXTURE_VARIANT_ADD(reuse, detach) { .release = REL_DETACH };
/* Evicted to host memory first, then freed with the process. */
FIXTURE_VARIANT_ADD(reuse, evict) { .release = REL_EVICT };

FIXTURE_SETUP(reuse)
{
	self->page = sysconf(_SC_PAGESIZE);
	setup_common(_metadata, &self->base, &self->info);
	self->limit = gm_node_read(self->info.hnid, "limit");
	ASSERT_EQ(self->info.dram_size, self->limit);
	ASSERT_LE(REUSE_BYTES, self->limit);
	self->limit_changed = 1;
	ASSERT_EQ(0, gm_node_write(self->info.hnid, "limit", REUSE_BYTES));
}

FIXTURE_TEARDOWN(reuse)
{
	char why[512];

	if (self->limit_changed)
		EXPECT_EQ(0, gm_node_write(self->info.hnid, "limit", self->limit));
	EXPECT_EQ(0, gm_baseline_wait(&self->base, 10, why, sizeof(why)))
		TH_LOG("%s", why);
}

/*
 * The first process: fill @len bytes of NPU memory with SECRET (prefetched
 * there, zero-filled, then written by an NPU job) and let them go as
 * @release says.  Exits 0 when the pages left the NPU.
 */
static int leave_secret(enum release release, int hnid, size_t len)
{
	size_t map_len = release == REL_EVICT ? 2 * len : len;
	int fd = npu_open_attached(0);
	char *p;

	p = mmap_peer_shared(NULL, map_len, 0);
	if (fd < 0 || p == MAP_FAILED)
		return 10;
	if (hmadvise_err(hnid, p, len, MADV_PREFETCH))
		return 11;
	/* Eviction: twice the limit goes through, half of it is parked. */
	for (size_t off = 0; off < map_len; off += len)
		if (npu_fill(fd, p + off, len, SECRET))
			return 12;
	switch (release) {
	case REL_MUNMAP:
		return munmap(p, map_len) ? 13 : 0;
	case REL_EXIT:
	case REL_EVICT:
		return 0;
	case REL_MADV_DONTNEED:
		if (madvise(p, map_len, MADV_DONTNEED))
			return 13;
		break;
	case REL_HMADV_DONTNEED:
		/* Parked pages are host memory: they stay, with their data. */
		return hmadvise_err(hnid, p, map_len, MADV_DONTNEED) ? 13 : 0;
	case REL_HMADV_ALL:
		if (hmadvise_err(GM_NODE_ALL, p, map_len, MADV_DONTNEED))
			return 13;
		break;
	case REL_DETACH:
		/*
		 * The detach brings the data home and frees the NPU pages.
		 * Whether all of it came home is detach.at_limit's business.
		 */
		close(fd);
		return 0;
	}
	/* Dropped: the next access from anywhere reads zeros. */
	return first_not(p, map_len, 0) == -1 ? 0 : 15;
}

/*
 * The second process: every way a page first comes to the NPU must show
 * zeros, never what the first process left there.  The NPU's memory (its
 * limit) is used whole, so the pages the first process freed come back.
 */
static int read_leftovers(int hnid, size_t len, size_t page)
{
	size_t third = len / 3 & ~(page - 1);
	int fd = npu_open_attached(0);
	char *p, *q, *r;
	__u64 sum;

	p = mmap_peer_shared(NULL, len, 0);
	if (fd < 0 || p == MAP_FAILED)
		return 20;
	q = p + third;
	r = q + third;
	/* First device use by a job: zero-filled pages. */
	if (npu_sum(fd, p, third, &sum) || sum)
		return 21;
	/* A prefetch of untouched pages, read by the NPU and the CPU. */
	if (hmadvise_err(hnid, q, third, MADV_PREFETCH))
		return 22;
	if (npu_sum(fd, q, third, &sum) || sum)
		return 23;
	/* A job writes part of each page; the rest of the page is zero. */
	for (char *x = r; x < p + len; x += page)
		if (npu_fill(fd, x + 64, 64, 0x01010101))
			return 24;
	if (npu_sum(fd, r, p + len - r, &sum) ||
	    sum != (__u64)(p + len - r) / page * 16 * 0x01010101)
		return 25;
	/* And the CPU reads what the NPU had: the whole range, every word. */
	for (char *x = r; x < p + len; x += page)
		if (first_not(x, 64, 0) != -1 ||
		    first_not(x + 64, 64, 0x01010101) != -1 ||
		    first_not(x + 128, page - 128, 0) != -1)
			return 26;
	if (first_not(p, r - p, 0) != -1)
		return 27;
	return munmap(p, len) ? 28 : 0;
}

/*
 * Pages a process had on the NPU reach the next process zeroed, however
 * the first let go of them (munmap, exit, madvise, hmadvise on the NPU or
 * every node, detach, or eviction to host and exit).
 */
TEST_F_TIMEOUT(reuse, freed_pages_are_zeroed, 300)
{
	int hnid = self->info.hnid;
	long long evictions = gm_node_read(hnid, "evictions");
	int ret, first;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(leave_secret(variant->release, hnid, REUSE_BYTES));
	first = wait_child(pid);
	/* Step 15: a page read back its old data after the drop. */
	ASSERT_EQ(0, first) TH_LOG("the first process's step %d failed", first);
	if (variant->release == REL_EVICT)
		ASSERT_LE(evictions + (long long)(REUSE_BYTES / self->page),
			  gm_node_read(hnid, "evictions"));
	ASSERT_EQ(self->base.resident[0], gm_node_read(hnid, "resident"));

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(read_leftovers(hnid, REUSE_BYTES, self->page));
	ret = wait_child(pid);
	ASSERT_EQ(0, ret) TH_LOG("the second process's step %d failed", ret);
}

FIXTURE(detach)
{
	struct gm_baseline base;
	struct gmem_npu_info info;
	unsigned long long limit;
};

FIXTURE_VARIANT(detach)
{
	int unused;
};

/* The NPU at its limit: the background reclaim parks pages meanwhile. */
FIXTURE_VARIANT_ADD(detach, at_limit) { };

FIXTURE_SETUP(detach)
{
	setup_common(_metadata, &self->base, &self->info);
	self->limit = gm_node_read(self->info.hnid, "limit");
	ASSERT_EQ(self->info.dram_size, self->limit);
	ASSERT_EQ(0, gm_node_write(self->info.hnid, "limit", REUSE_BYTES));
}

FIXTURE_TEARDOWN(detach)
{
	char why[512];

	EXPECT_EQ(0, gm_node_write(self->info.hnid, "limit", self->limit));
	EXPECT_EQ(0, gm_baseline_wait(&self->base, 10, why, sizeof(why)))
		TH_LOG("%s", why);
}

/*
 * A detach brings every NPU page home while the process lives
 * (Documentation/mm/gmem.rst, "Contexts and lifetimes"): nothing is lost
 * when the NPU, full up to its limit, is evicting at the same time.
 */
TEST_F_TIMEOUT(detach, keeps_data, 300)
{
	int fd = npu_open_attached(0);
	char *p;
	long bad;

	ASSERT_LE(0, fd);
	p = mmap_peer_shared(NULL, REUSE_BYTES, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, hmadvise_err(self->info.hnid, p, REUSE_BYTES, MADV_PREFETCH));
	ASSERT_EQ(0, npu_fill(fd, p, REUSE_BYTES, SECRET));
	ASSERT_EQ(0, close(fd));
	ASSERT_EQ(self->base.resident[0], gm_node_read(self->info.hnid, "resident"));
	bad = first_not(p, REUSE_BYTES, SECRET);
	EXPECT_EQ(-1, bad)
		TH_LOG("word %ld (page %ld) is %#x after the detach, not %#x",
		       bad, bad * 4 / 4096, ((__u32 *)p)[bad < 0 ? 0 : bad], SECRET);
	ASSERT_EQ(0, munmap(p, REUSE_BYTES));
}

/*
 * hmadvise() acts on the caller's memory only: another process that names
 * the addresses where this one has data on the NPU, whether it has nothing
 * there or memory of its own, changes nothing of this one's.
 */
TEST_F_TIMEOUT(isolation, hmadvise_acts_on_own_mm_only, 300)
{
	size_t len = 64 * self->page;
	int hnid = self->info.hnid;
	int fd, to_child[2], ret;
	long long resident;
	char *p;
	pid_t pid;
	__u64 sum;

	ASSERT_EQ(0, pipe(to_child));
	/* The child has no mapping where the parent is about to map. */
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		unsigned long addr;
		char *mine;

		if (read(to_child[0], &addr, sizeof(addr)) != sizeof(addr))
			_exit(1);
		/*
		 * Nothing mapped there in this process.  Which of the two
		 * documented errnos wins for an unattached node and a hole
		 * is not documented (the kernel says ENOMEM).
		 */
		ret = hmadvise_err(hnid, (void *)addr, len, MADV_PREFETCH);
		if (ret != EINVAL && ret != ENOMEM)
			_exit(2);
		if (hmadvise_err(GM_NODE_ALL, (void *)addr, len, MADV_DONTNEED) != ENOMEM ||
		    hmadvise_err(0, (void *)addr, len, MADV_PREFETCH) != ENOMEM ||
		    hmadvise_err(0, (void *)addr, len, MADV_DONTNEED) != ENOMEM)
			_exit(3);
		fd = npu_open_attached(0);
		if (fd < 0)
			_exit(4);
		if (hmadvise_err(hnid, (void *)addr, len, MADV_PREFETCH) != ENOMEM ||
		    hmadvise_err(hnid, (void *)addr, len, MADV_DONTNEED) != ENOMEM)
			_exit(5);
		/* Its own memory at the same address: only that is dropped. */
		close(fd);
		mine = mmap_peer_shared((void *)addr, len, MAP_FIXED_NOREPLACE);
		if (mine != (void *)addr)
			_exit(6);
		/* Not attached: the NPU names nothing for this process. */
		if (hmadvise_err(hnid, mine, len, MADV_PREFETCH) != EINVAL ||
		    hmadvise_err(hnid, mine, len, MADV_DONTNEED) != EINVAL)
			_exit(2);
		fd = npu_open_attached(0);
		if (fd < 0)
			_exit(4);
		if (npu_fill(fd, mine, len, 7) ||
		    hmadvise_err(hnid, mine, len, MADV_DONTNEED) ||
		    hmadvise_err(GM_NODE_ALL, mine, len, MADV_DONTNEED) ||
		    first_not(mine, len, 0) != -1)
			_exit(7);
		_exit(0);
	}
	fd = npu_open_attached(0);
	ASSERT_LE(0, fd);
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, npu_fill(fd, p, len, SECRET));
	resident = gm_node_read(hnid, "resident");
	ASSERT_EQ(sizeof(p), write(to_child[1], &p, sizeof(p)));
	ret = wait_child(pid);
	ASSERT_EQ(0, ret) TH_LOG("the child's check %d failed", ret);
	/* Still on the NPU, still ours. */
	ASSERT_EQ(resident, gm_node_read(hnid, "resident"));
	ASSERT_EQ(0, npu_sum(fd, p, len, &sum));
	ASSERT_EQ((__u64)SECRET * (len / 4), sum);
	ASSERT_EQ(-1, first_not(p, len, SECRET));
	ASSERT_EQ(0, munmap(p, len));
	close(fd);
	close(to_child[0]);
	close(to_child[1]);
}

/* How the attached file reaches the other process. */
enum handover { BY_FORK, BY_SCM_RIGHTS };

/*
 * The receiving process (B), holding @fd that its peer (A) attached, with
 * memory of its own at @addr (0x11 bytes): the file acts on A's memory,
 * never on B's (gmem_npu_sim_uapi.h: "Addresses are virtual addresses of
 * the attached process"); it cannot be attached again, and holding it does
 * not attach B to the NPU.  B says on @done when its jobs ran, and waits on
 * @go for A to be gone and a third process to hold A's old NPU pages.
 */
static int use_foreign_file(int fd, int hnid, char *addr, size_t len,
			    int done, int go)
{
	__u64 sum;

	if (npu_attach(fd) != EBUSY)
		return 30;
	if (hmadvise_err(hnid, addr, len, MADV_PREFETCH) != EINVAL)
		return 31;
	/* A's data, through A's context. */
	if (npu_sum(fd, addr, len, &sum) || sum != (__u64)SECRET * (len / 4))
		return 32;
	if (npu_fill(fd, addr, len / 2, 0x0b0b0b0b))
		return 33;
	/* B's memory there did not change. */
	if (first_not(addr, len, 0x11111111) != -1)
		return 34;
	if (sync_send(done) || sync_wait(go))
		return 35;
	/*
	 * A is gone: its context is orphaned, and the file reaches neither
	 * the freed pages nor what another process put in them.
	 */
	if (npu_sum(fd, addr, len, &sum) != ESRCH)
		return 36;
	if (npu_fill(fd, addr, len, 0x0c0c0c0c) != ESRCH)
		return 37;
	if (first_not(addr, len, 0x11111111) != -1)
		return 38;
	return 0;
}

/*
 * A: data of its own at @addr (where B has its own), on the NPU, and the
 * attached file handed to B.  Exits once B's jobs ran, after checking that
 * they wrote A's memory.
 */
static int attach_and_hand_over(enum handover how, int hnid, char *addr,
				size_t len, int sock, const int done[2], int go)
{
	char *q = mmap(addr, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED | MAP_FIXED,
		       -1, 0);
	int fd = npu_open_attached(0);
	pid_t b;

	if (q != addr || fd < 0 || npu_fill(fd, q, len, SECRET))
		return 1;
	if (how == BY_SCM_RIGHTS) {
		if (send_fd(sock, fd))
			return 2;
	} else {
		b = fork();
		if (b < 0)
			return 2;
		if (!b) {
			/* fork gave B a copy of A's data, its own now. */
			if (first_not(q, len, SECRET) != -1)
				_exit(3);
			memset(q, 0x11, len);
			_exit(use_foreign_file(fd, hnid, q, len, done[1], go));
		}
		/* The test reaps B (a subreaper) once A is gone. */
		if (write(sock, &b, sizeof(b)) != sizeof(b))
			return 4;
	}
	if (sync_wait(done[0]))
		return 5;
	if (first_not(q, len / 2, 0x0b0b0b0b) != -1 ||
	    first_not(q + len / 2, len / 2, SECRET) != -1)
		return 6;
	return 0;
}

FIXTURE(handover)
{
	struct gm_baseline base;
	struct gmem_npu_info info;
};

FIXTURE_VARIANT(handover)
{
	enum handover how;
};

FIXTURE_VARIANT_ADD(handover, fork) { .how = BY_FORK };
FIXTURE_VARIANT_ADD(handover, scm_rights) { .how = BY_SCM_RIGHTS };

FIXTURE_SETUP(handover)
{
	setup_common(_metadata, &self->base, &self->info);
}

FIXTURE_TEARDOWN(handover)
{
	char why[512];

	EXPECT_EQ(0, gm_baseline_wait(&self->base, 10, why, sizeof(why)))
		TH_LOG("%s", why);
}

/*
 * An NPU file attached by one process (A) in another's (B) hands, by fork
 * or over a socket.  Its jobs run on A's memory, B's stays as it was, and
 * once A is gone the file fails with ESRCH, even after a third process (C)
 * filled the NPU memory A had.
 */
TEST_F_TIMEOUT(handover, attached_file_acts_on_its_process_only, 300)
{
	size_t len = 32 * sysconf(_SC_PAGESIZE);
	int hnid = self->info.hnid;
	int sv[2], done[2], go[2], c_ready[2], fd, ret;
	pid_t a, b, c;
	char *p;

	ASSERT_EQ(0, prctl(PR_SET_CHILD_SUBREAPER, 1));
	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	ASSERT_EQ(0, pipe(done));
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(c_ready));
	/* B's memory, at an address A then takes too. */
	p = mmap_peer_shared(NULL, len, 0);
	ASSERT_NE(MAP_FAILED, p);
	memset(p, 0x11, len);

	a = fork();
	ASSERT_LE(0, a);
	if (!a)
		_exit(attach_and_hand_over(variant->how, hnid, p, len, sv[1],
					   done, go[0]));
	if (variant->how == BY_SCM_RIGHTS) {
		fd = recv_fd(sv[0]);
		ASSERT_LE(0, fd);
		b = fork();
		ASSERT_LE(0, b);
		if (!b)
			_exit(use_foreign_file(fd, hnid, p, len, done[1], go[0]));
		close(fd);
	} else {
		ASSERT_EQ(sizeof(b), read(sv[0], &b, sizeof(b)));
	}
	/* A checks its memory after B's jobs, then exits. */
	ret = wait_child(a);
	ASSERT_EQ(0, ret) TH_LOG("A's step %d failed", ret);
	/* C takes the NPU pages A had, and keeps them until B is done. */
	c = fork();
	ASSERT_LE(0, c);
	if (!c) {
		char *r = mmap_peer_shared(NULL, 4 * len, 0);

		fd = npu_open_attached(0);
		if (fd < 0 || r == MAP_FAILED || npu_fill(fd, r, 4 * len, SECRET))
			_exit(1);
		if (sync_send(c_ready[1]))
			_exit(2);
		_exit(sync_wait(sv[1]) ? 3 : 0);
	}
	ASSERT_EQ(0, sync_wait(c_ready[0]));
	ASSERT_EQ(0, sync_send(go[1]));
	ret = wait_child(b);
	EXPECT_EQ(0, ret) TH_LOG("B's step %d failed", ret);
	ASSERT_EQ(0, sync_send(sv[0]));
	ASSERT_EQ(0, wait_child(c));
	ASSERT_EQ(-1, first_not(p, len, 0x11111111));
	ASSERT_EQ(0, munmap(p, len));
	close(sv[0]);
	close(sv[1]);
}

TEST_HARNESS_MAIN
