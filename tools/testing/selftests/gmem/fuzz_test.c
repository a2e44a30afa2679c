// SPDX-License-Identifier: GPL-2.0
/*
 * Hostile input for GMEM: a seeded, randomized fuzzer over hmadvise() (its
 * moves, drops and range attributes: preferred locations and pins),
 * mmap/munmap/mremap/mprotect/madvise/mlock with and without
 * MAP_PEER_SHARED and the simulated NPU's ioctls, with random and boundary
 * arguments: huge lengths, ranges that wrap around, kernel and
 * non-canonical addresses, unmapped, read-only and PROT_NONE ranges, NPU
 * files of other processes (passed over a socket, inherited by fork, of a
 * process that died).  Every call must fail only with an errno documented
 * for it (exactly the one the arguments alone decide, where they do) and
 * the kernel must not crash or splat; /proc/self/gmem_maps, read now and
 * then, keeps its format and shows no attribute the process cannot have;
 * at the end the memory the fuzzer never handed out is intact and GMEM is
 * back where it started (pins included).
 *
 * Everything the fuzzer may change lives in an arena fenced by PROT_NONE
 * mappings, or in mappings it made itself outside it ("extras"): calls
 * that may succeed get only such ranges, so the fuzzer never unmaps or
 * protects its own code, stack or canaries.  Anything else it passes is
 * refused by every call (unaligned, kernel, wrapping).
 *
 * Environment: GMEM_SEED (printed), GMEM_FUZZ_ITERATIONS (default 10000),
 * GMEM_FUZZ_SECONDS (default 60: a bound for slow kernels; the run logs how
 * many iterations it did), GMEM_FUZZ_TRACE (1: log every call, to find the
 * one that hangs).
 */
#define _GNU_SOURCE
#include <linux/mman.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define PAGE		4096UL
#define ARENA_PAGES	256UL
#define FENCE_PAGES	16UL
#define CANARY_PAGES	16UL
#define MAX_EXTRA	16
#define MAX_SLOTS	4
#define MAX_REPORTS	10
#define EXTRA_MAX_LEN	(4UL << 20)	/* bigger requests are refused: see big_len() */
#define KERNEL_HALF	0xffff800000000000UL

#define DEFAULT_ITERATIONS	10000
#define DEFAULT_SECONDS		60

/*
 * Sets of results: a bit per errno the fuzzer knows (0 is success); any
 * other errno has the last bit, which no set allows.
 */
static const int known_errnos[] = {
	0, EPERM, ENOENT, ESRCH, EINTR, EIO, ENXIO, EBADF, EAGAIN, ENOMEM,
	EACCES, EFAULT, EBUSY, EEXIST, ENODEV, EINVAL, ENOSPC, ENOTTY, ERANGE,
	EOVERFLOW, EOPNOTSUPP, EHWPOISON, EPROTO,
};

static uint64_t BIT(int e)
{
	for (size_t i = 0; i < ARRAY_SIZE(known_errnos); i++)
		if (known_errnos[i] == e)
			return 1ULL << i;
	return 1ULL << 63;
}

#define OK		BIT(0)

/* An open NPU file of the fuzzer (or inherited, or of another process). */
struct slot {
	int fd;			/* -1: free */
	int npu;
	int attached;		/* the file is attached (ATTACH succeeded) */
	int foreign;		/* attached to another process's memory */
};

struct extra {
	char *p;
	size_t len;
};

static struct {
	uint64_t r;
	unsigned long iter;
	int child;		/* this is a forked fuzzer child */

	char *arena;		/* between PROT_NONE fences */
	char *canary;		/* peer-shared, fenced, read by jobs, never written */
	char *plain;		/* ordinary memory, a refused job's target */
	char *ro;		/* a read-only page (ioctl argument) */
	char *none;		/* a PROT_NONE page */
	char *edge;		/* a page followed by a hole */
	struct extra extra[MAX_EXTRA];
	int nextra;

	struct slot slot[MAX_SLOTS];
	int mm_attached[NPU_MAX];	/* this process is attached to NPU i */
	int nnpu;
	unsigned int hnid[NPU_MAX];
	int nodes;			/* host nodes 0 .. nodes - 1 are online */
	int memfd, nullfd, closedfd;
	int foreign_fd;			/* another process's attached NPU file */
	pid_t helper;
	int helper_dead;

	unsigned long calls, exact, violations;
	unsigned long ops[16];
	unsigned long errnos[160];
} F;

static int reports;
static int trace;	/* GMEM_FUZZ_TRACE: log every call, not just violations */

static const char *const op_names[] = {
	"hmadvise", "mmap", "munmap", "mprotect", "mremap", "madvise",
	"mlock", "ioctl", "open/close", "touch", "gmem_maps", "fork",
};

enum { OP_HMADVISE, OP_MMAP, OP_MUNMAP, OP_MPROTECT, OP_MREMAP, OP_MADVISE,
	OP_MLOCK, OP_IOCTL, OP_SLOT, OP_TOUCH, OP_MAPS, OP_FORK, NR_OPS };

/* Weights of the operations, per 1000 iterations. */
static const int op_weight[NR_OPS] = {
	[OP_HMADVISE] = 250, [OP_MMAP] = 90, [OP_MUNMAP] = 60,
	[OP_MPROTECT] = 70, [OP_MREMAP] = 70, [OP_MADVISE] = 60,
	[OP_MLOCK] = 20, [OP_IOCTL] = 260, [OP_SLOT] = 40, [OP_TOUCH] = 68,
	[OP_MAPS] = 10, [OP_FORK] = 2,
};

static uint64_t rnd(uint64_t n)
{
	return rnd_below(&F.r, n);
}

/*
 * Check a call's result against what is allowed.  @ret is the return
 * value (-1 and errno on failure), @allowed a set of BIT(errno) and OK.
 */
static void check(int op, long ret, int err, uint64_t allowed, int exact,
		  const char *fmt, ...)
{
	int e = ret == -1 ? err : 0;
	va_list ap;
	char what[384];

	F.calls++;
	F.exact += exact;
	F.ops[op]++;
	if (e < (int)ARRAY_SIZE(F.errnos))
		F.errnos[e]++;
	if (trace) {
		va_start(ap, fmt);
		vsnprintf(what, sizeof(what), fmt, ap);
		va_end(ap);
		fprintf(stderr, "# trace %s%lu: %s: %s\n", F.child ? "child " : "",
			F.iter, what, e ? strerrorname_np(e) : "success");
	}
	if (allowed & BIT(e))
		return;
	F.violations++;
	if (reports++ >= MAX_REPORTS)
		return;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	fprintf(stderr, "# %siteration %lu: %s: %s, allowed:",
		F.child ? "child, " : "", F.iter, what,
		e ? strerrorname_np(e) : "success");
	for (size_t i = 0; i < ARRAY_SIZE(known_errnos); i++)
		if (allowed & (1ULL << i))
			fprintf(stderr, " %s", i ? strerrorname_np(known_errnos[i]) :
			       "success");
	fprintf(stderr, "\n");
}

/* Addresses and lengths. */

enum addr_class {
	A_ARENA,	/* a page of the arena */
	A_EXTRA,	/* a page of a mapping the fuzzer made */
	A_UNALIGNED,	/* one of those plus 1-4095 */
	A_KERNEL,	/* the kernel half, or not canonical */
	A_LOW,		/* 0 and the first pages, never mapped */
	A_PLAIN,	/* ordinary memory of the fuzzer's */
	A_CANARY,	/* peer-shared memory never to be changed */
	NR_ADDR_CLASSES,
};

static const unsigned long kernel_addrs[] = {
	0xffff888000000000UL, 0xffffffff81000000UL, 0xffffffffff600000UL,
	0xfffffffffffff000UL, 0x8000000000000000UL, KERNEL_HALF,
	0xffffc90000000000UL, 0x0100000000000000UL << 7,
};

static unsigned long pick_addr(int cls)
{
	struct extra *x;

	switch (cls) {
	case A_ARENA:
		return (unsigned long)F.arena + rnd(ARENA_PAGES) * PAGE;
	case A_EXTRA:
		if (!F.nextra)
			return pick_addr(A_ARENA);
		x = &F.extra[rnd(F.nextra)];
		return (unsigned long)x->p + rnd(x->len / PAGE) * PAGE;
	case A_UNALIGNED:
		return pick_addr(rnd(2) ? A_ARENA : A_EXTRA) + 1 + rnd(PAGE - 1);
	case A_KERNEL:
		return kernel_addrs[rnd(ARRAY_SIZE(kernel_addrs))];
	case A_LOW:
		return rnd(4) * PAGE;
	case A_PLAIN:
		return (unsigned long)F.plain + rnd(4) * PAGE;
	default:
		return (unsigned long)F.canary + rnd(CANARY_PAGES) * PAGE;
	}
}

/* The region (arena or extra) holding @a, and its end; 0 if none. */
static unsigned long region_end(unsigned long a)
{
	unsigned long s = (unsigned long)F.arena;

	if (a >= s && a < s + ARENA_PAGES * PAGE)
		return s + ARENA_PAGES * PAGE;
	for (int i = 0; i < F.nextra; i++) {
		s = (unsigned long)F.extra[i].p;
		if (a >= s && a < s + F.extra[i].len)
			return s + F.extra[i].len;
	}
	return 0;
}

/* A length: small, page multiples, unaligned, zero, huge or wrapping. */
static unsigned long pick_len(unsigned long a)
{
	static const unsigned long huge[] = {
		-1UL, -PAGE, 1UL << 63, (1UL << 63) + PAGE, 1UL << 62,
		0x7fffffffUL, 0xffffffffUL,
	};

	switch (rnd(10)) {
	case 0:
		return 0;
	case 1:
		return 1 + rnd(3 * PAGE);
	case 2:
		return huge[rnd(ARRAY_SIZE(huge))];
	case 3:
		return -a + rnd(4) * PAGE;	/* a + len wraps (or is 0) */
	case 4:
		return (1 + rnd(64)) * PAGE;
	default:
		return (1 + rnd(8)) * PAGE;
	}
}

static unsigned long page_align(unsigned long len)
{
	return (len + PAGE - 1) & ~(PAGE - 1);
}

/* How a call that may change mappings treats its range. */
enum how {
	H_UNMAP,	/* munmap, mmap(MAP_FIXED), mremap: refuse lengths above TASK_SIZE */
	H_WALK,		/* mprotect, madvise: work through any range that does not wrap */
	H_LOCK,		/* mlock: the same, and an unaligned start is rounded down */
};

/*
 * Whether a call that may unmap, map over, protect or drop [a, a + len)
 * can only touch the arena or an extra: the range lies inside one, or the
 * call refuses it whatever is mapped (unaligned, kernel half, empty,
 * wrapping, above any TASK_SIZE).
 */
static int harmless(unsigned long a, unsigned long len, enum how how)
{
	unsigned long alen, end;

	if (a >= KERNEL_HALF)
		return 1;
	if (how == H_LOCK) {
		len += a & (PAGE - 1);
		a &= ~(PAGE - 1);
	} else if (a & (PAGE - 1)) {
		return 1;
	}
	alen = page_align(len);
	if (!len || !alen || a + alen < a)
		return 1;
	if (how == H_UNMAP && len >= (1UL << 57))
		return 1;
	end = region_end(a);
	return end && a + alen <= end;
}

/* Shorten [a, a + *len) to its region (or to nothing) to make it harmless. */
static void clip(unsigned long a, unsigned long *len, enum how how)
{
	unsigned long end = region_end(a);

	if (harmless(a, *len, how))
		return;
	*len = end && end > a ? 1 + rnd(end - a) : 0;
}

static int pick_class(void)
{
	static const int weights[NR_ADDR_CLASSES] = {
		[A_ARENA] = 40, [A_EXTRA] = 20, [A_UNALIGNED] = 8,
		[A_KERNEL] = 10, [A_LOW] = 6, [A_PLAIN] = 8, [A_CANARY] = 8,
	};
	int n = rnd(100);

	for (int c = 0; c < NR_ADDR_CLASSES; c++) {
		if (n < weights[c])
			return c;
		n -= weights[c];
	}
	return A_ARENA;
}

/* Record a mapping the kernel placed outside the arena. */
static void add_extra(void *p, size_t len)
{
	unsigned long a = (unsigned long)p, s = (unsigned long)F.arena;

	if (a >= s && a < s + ARENA_PAGES * PAGE)
		return;
	if (F.nextra == MAX_EXTRA) {
		munmap(F.extra[0].p, F.extra[0].len);
		F.extra[0] = F.extra[--F.nextra];
	}
	F.extra[F.nextra].p = p;
	F.extra[F.nextra].len = page_align(len);
	F.nextra++;
}

static int find_extra(unsigned long a)
{
	for (int i = 0; i < F.nextra; i++)
		if ((unsigned long)F.extra[i].p == a)
			return i;
	return -1;
}

static void drop_extra(int i)
{
	F.extra[i] = F.extra[--F.nextra];
}

/*
 * New mappings stay small: a large one would make jobs and prefetches over
 * it take long, and a locked or populated one would fill memory.  Lengths
 * from 2^62 on are refused by every call.
 */
static unsigned long big_len(unsigned long len)
{
	if (len > EXTRA_MAX_LEN && len < (1UL << 62))
		return 1 + rnd(EXTRA_MAX_LEN);
	return len;
}

/* hmadvise() */

static int node_online(int n)
{
	return n >= 0 && n < F.nodes;
}

static int node_registered(int n)
{
	for (int i = 0; i < F.nnpu; i++)
		if ((int)F.hnid[i] == n)
			return 1;
	return 0;
}

static int npu_of_node(int n)
{
	for (int i = 0; i < F.nnpu; i++)
		if ((int)F.hnid[i] == n)
			return i;
	return -1;
}

static int advice_known(int advice)
{
	switch (advice) {
	case MADV_PREFETCH:
	case MADV_DONTNEED:
	case MADV_PREFERRED_LOCATION:
	case MADV_NO_PREFERRED_LOCATION:
	case MADV_PIN:
	case MADV_UNPIN:
	case MADV_ACCESSED_BY:
	case MADV_NO_ACCESSED_BY:
	case MADV_READ_MOSTLY:
	case MADV_NO_READ_MOSTLY:
		return 1;
	}
	return 0;
}

/* The advices that take only GM_NODE_ALL: read duplication. */
static int advice_only_all(int advice)
{
	return advice == MADV_READ_MOSTLY || advice == MADV_NO_READ_MOSTLY;
}

/* The advices that take GM_NODE_ALL: all but those that name one node. */
static int advice_takes_all(int advice)
{
	return advice != MADV_PREFERRED_LOCATION && advice != MADV_PIN &&
	       advice != MADV_ACCESSED_BY;
}

/*
 * What hmadvise() must return, from its documentation: the arguments are
 * checked in order (advice, alignment, overflow, node) before anything
 * else; an empty range then returns 0.  After that it depends on what is
 * mapped, except where the first page of the range decides.
 *
 * MADV_PIN and MADV_ACCESSED_BY to a host node are refused (EINVAL) with
 * the node check, or with the check that a device node is attached, after
 * the range's: a hole in the range (ENOMEM) may then come first.
 */
static uint64_t hmadvise_allowed(int hnid, unsigned long start,
				 unsigned long len, int advice, int cls,
				 int *exact)
{
	unsigned long alen = page_align(len);
	int host_pin, dev;
	uint64_t set;

	*exact = 1;
	if (!advice_known(advice))
		return BIT(EINVAL);
	if (start & (PAGE - 1))
		return BIT(EINVAL);
	if ((len && !alen) || start + alen < start)
		return BIT(EINVAL);
	if (hnid == GM_NODE_ALL ? !advice_takes_all(advice) :
	    advice_only_all(advice) ||
	    (!node_online(hnid) && !node_registered(hnid)))
		return BIT(EINVAL);
	host_pin = (advice == MADV_PIN || advice == MADV_ACCESSED_BY) &&
		   node_online(hnid);
	if (!alen) {
		*exact = !host_pin;
		return host_pin ? OK | BIT(EINVAL) : OK;
	}
	/* Nothing is mapped at the first page: the lowest address decides. */
	if (cls == A_KERNEL || cls == A_LOW) {
		*exact = !host_pin;
		return BIT(ENOMEM) | (host_pin ? BIT(EINVAL) : 0);
	}
	/* Ordinary memory at the first page. */
	if (cls == A_PLAIN)
		return BIT(EINVAL);
	*exact = 0;
	set = BIT(EINVAL) | BIT(ENOMEM);
	if (host_pin)
		return set;
	dev = npu_of_node(hnid);
	/*
	 * A device node of a device this process is not attached to.  Undoing
	 * what names it may find nothing to undo instead.
	 */
	if (dev >= 0 && !F.mm_attached[dev])
		return advice == MADV_NO_PREFERRED_LOCATION ||
		       advice == MADV_UNPIN || advice == MADV_NO_ACCESSED_BY ?
		       set | OK : set;
	set |= OK;
	/*
	 * Moves: to the node, to each page's preferred location (GM_NODE_ALL,
	 * possibly a device) or, for a pin, to the device, which the pins of
	 * every process together may not take past its limit.
	 */
	if (advice == MADV_PREFETCH || advice == MADV_PIN)
		set |= BIT(EINTR) | (dev >= 0 || hnid == GM_NODE_ALL ?
				     BIT(EFAULT) : 0);
	if (advice == MADV_PIN)
		set |= BIT(ENOSPC);
	return set;
}

static void do_hmadvise(void)
{
	static const int advices[] = {
		MADV_PREFETCH, MADV_DONTNEED, MADV_PREFETCH, MADV_DONTNEED,
		MADV_PREFERRED_LOCATION, MADV_NO_PREFERRED_LOCATION, MADV_PIN,
		MADV_UNPIN, MADV_PREFERRED_LOCATION, MADV_PIN,
		MADV_ACCESSED_BY, MADV_NO_ACCESSED_BY, MADV_ACCESSED_BY,
		MADV_READ_MOSTLY, MADV_NO_READ_MOSTLY, MADV_READ_MOSTLY,
		-1, 0, MADV_WILLNEED, MADV_FREE, MADV_PAGEOUT, 199,
		MADV_NO_READ_MOSTLY + 1, 0x7fffffff, MADV_PREFETCH | 0x10000,
	};
	static const int odd_hnids[] = {
		-2, -1000, 64, 1 << 20, 0x7fffffff, -0x7fffffff - 1, 63, 4,
	};
	int cls = pick_class(), hnid, advice, exact;
	unsigned long start, len;
	uint64_t allowed;
	long ret;

	switch (rnd(12)) {
	case 0:
		hnid = GM_NODE_ALL;
		break;
	case 1:
		hnid = odd_hnids[rnd(ARRAY_SIZE(odd_hnids))];
		break;
	case 2:
	case 3:
	case 4:
		hnid = rnd(F.nodes);
		break;
	default:
		hnid = F.nnpu ? (int)F.hnid[rnd(F.nnpu)] : 0;
		break;
	}
	advice = advices[rnd(ARRAY_SIZE(advices))];
	start = pick_addr(cls);
	len = big_len(pick_len(start));
	/*
	 * The canary may be read (prefetched), never dropped; hmadvise
	 * checks the whole range first, so any range that reaches it but
	 * starts elsewhere is refused (fences) or is the canary itself.
	 */
	if (cls == A_CANARY && advice == MADV_DONTNEED)
		advice = MADV_PREFETCH;
	allowed = hmadvise_allowed(hnid, start, len, advice, cls, &exact);
	ret = hmadvise(hnid, start, len, advice);
	check(OP_HMADVISE, ret, errno, allowed, exact,
	      "hmadvise(%d, %#lx, %#lx, %d)", hnid, start, len, advice);
}

/* mmap, munmap, mprotect, mremap, madvise, mlock */

#define MMAP_ERRS (BIT(EINVAL) | BIT(ENOMEM) | BIT(EEXIST) | BIT(EBADF) | \
		   BIT(EACCES) | BIT(ENODEV) | BIT(EPERM) | BIT(EOVERFLOW) | \
		   BIT(EAGAIN) | BIT(EOPNOTSUPP))

/*
 * A peer-shared mapping at virtual address 0 (root may map there: the tests
 * run as root), used and dropped again at once, so that the low pages stay
 * "never mapped" for the other calls (A_LOW).  Everything must succeed:
 * mprotect() of a range that starts at 0 once left an MMU notifier range
 * open, and the next device prefetch slept forever.
 */
static void low_mapping(void)
{
	size_t len = (1 + rnd(4)) * PAGE;
	int hnid = F.hnid[rnd(F.nnpu)];
	char *p;
	long ret;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE |
		 MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_PEER_SHARED, -1, 0);
	if (p == MAP_FAILED && (errno == EPERM || errno == EACCES))
		return;		/* not allowed to map there: nothing to do */
	check(OP_MMAP, p == MAP_FAILED ? -1 : 0, errno, OK, 1,
	      "low mapping: mmap(0, %#zx) = %p", len, p);
	if (p == MAP_FAILED)
		return;
	/* The compiler does not know that p is NULL: these are plain stores. */
	for (size_t off = 0; off < len; off += PAGE)
		__atomic_store_n(p + off, (char)(off / PAGE + 1), __ATOMIC_RELAXED);
	ret = mprotect(p, len, PROT_READ);
	check(OP_MPROTECT, ret, errno, OK, 1, "low mapping: mprotect(0, %#zx)", len);
	/* As anywhere else in peer-shared memory (EINTR: the interval timer). */
	for (int i = 0; i < 2; i++) {
		int node = i ? 0 : hnid, exact;
		uint64_t allowed = hmadvise_allowed(node, 0, len, MADV_PREFETCH,
						    A_ARENA, &exact);

		ret = hmadvise(node, 0, len, MADV_PREFETCH);
		check(OP_HMADVISE, ret, errno, allowed, exact,
		      "low mapping: hmadvise(%d, 0, %#zx)", node, len);
	}
	for (size_t off = 0; off < len; off += PAGE) {
		char c = __atomic_load_n(p + off, __ATOMIC_RELAXED);

		check(OP_TOUCH, c == (char)(off / PAGE + 1) ? 0 : -1, EIO, OK, 1,
		      "low mapping: page %zu reads %d", off / PAGE, c);
	}
	ret = munmap(p, len);
	check(OP_MUNMAP, ret, errno, OK, 1, "low mapping: munmap(0, %#zx)", len);
}

static void do_mmap(void)
{
	static const int prots[] = {
		PROT_READ | PROT_WRITE, PROT_READ | PROT_WRITE, PROT_READ,
		PROT_NONE, PROT_READ | PROT_WRITE | PROT_EXEC, PROT_WRITE, 0x10,
	};
	static const int more_flags[] = {
		0, 0, 0, MAP_POPULATE, MAP_NORESERVE, MAP_LOCKED,
		MAP_GROWSDOWN, MAP_HUGETLB, MAP_STACK, MAP_UNINITIALIZED,
		MAP_SYNC, MAP_32BIT, MAP_FIXED_NOREPLACE, 1 << 30,
	};
	int flags = 0, prot, fd = -1, fixed, peer = rnd(5) > 0, exact = 0;
	unsigned long a, len;
	uint64_t allowed = OK | MMAP_ERRS;
	void *p;

	if (!rnd(30)) {
		low_mapping();
		return;
	}
	prot = prots[rnd(ARRAY_SIZE(prots))];
	switch (rnd(10)) {
	case 0:
		flags = MAP_SHARED;
		break;
	case 1:
		flags = MAP_SHARED_VALIDATE;
		break;
	case 2:
		flags = rnd(2) ? 0 : MAP_TYPE;	/* no type, or a bad one */
		break;
	default:
		flags = MAP_PRIVATE;
		break;
	}
	if (rnd(6)) {
		flags |= MAP_ANONYMOUS;
	} else {
		int fds[] = { F.memfd, F.nullfd, F.closedfd, 9999,
			      F.slot[0].fd, F.foreign_fd };

		fd = fds[rnd(ARRAY_SIZE(fds))];
	}
	if (peer)
		flags |= MAP_PEER_SHARED;
	flags |= more_flags[rnd(ARRAY_SIZE(more_flags))];
	fixed = rnd(2);
	if (fixed)
		flags |= MAP_FIXED;

	switch (rnd(6)) {
	case 0:
		a = 0;
		break;
	case 1:
		a = pick_addr(A_KERNEL);
		break;
	case 2:
		a = pick_addr(A_UNALIGNED);
		break;
	default:
		a = pick_addr(rnd(4) ? A_ARENA : A_EXTRA);
		break;
	}
	len = pick_len(a);
	if (fixed || flags & MAP_FIXED_NOREPLACE)
		clip(a, &len, H_UNMAP);
	else
		len = big_len(len);
	/*
	 * No hint above 47 bits for a huge request: it could be granted.  Not
	 * with MAP_FIXED_NOREPLACE, where the hint is the address (and clip()
	 * left the length only if the call is refused anyway): 0 would map
	 * the low pages, which low_mapping() alone does.
	 */
	if (!fixed && !(flags & MAP_FIXED_NOREPLACE) && len > EXTRA_MAX_LEN)
		a = 0;

	/*
	 * What the arguments alone decide, in the kernel's order.  With
	 * MAP_HUGETLB, the bit of MAP_PEER_SHARED is part of the huge page
	 * size, as without GMEM: size code 2 has no pool, so EBADF for a bad
	 * file, EINVAL otherwise.  Without it, the MAP_PEER_SHARED check comes
	 * first (private anonymous memory only), then the file, then the
	 * length.
	 */
	if (peer && flags & MAP_HUGETLB) {
		allowed = !(flags & MAP_ANONYMOUS) &&
			  (fd < 0 || fd == F.closedfd || fd == 9999) ?
			  BIT(EBADF) : BIT(EINVAL);
		exact = 1;
	} else if (peer && ((flags & MAP_TYPE) != MAP_PRIVATE ||
			    !(flags & MAP_ANONYMOUS))) {
		allowed = BIT(EINVAL);
		exact = 1;
	} else if (!(flags & MAP_ANONYMOUS) &&
		   (fd < 0 || fd == F.closedfd || fd == 9999)) {
		allowed = BIT(EBADF);
		exact = 1;
	} else if (!len) {
		allowed = BIT(EINVAL);
		exact = 1;
	}
	p = mmap((void *)a, len, prot, flags, fd, 0);
	check(OP_MMAP, p == MAP_FAILED ? -1 : 0, errno, allowed, exact,
	      "mmap(%#lx, %#lx, %#x, %#x, %d) = %p", a, len, prot, flags, fd, p);
	if (p != MAP_FAILED)
		add_extra(p, len);
}

static void do_munmap(void)
{
	static const int classes[] = {
		A_ARENA, A_ARENA, A_EXTRA, A_UNALIGNED, A_KERNEL,
	};
	int cls = classes[rnd(ARRAY_SIZE(classes))];
	unsigned long a = pick_addr(cls), len = pick_len(a);
	uint64_t allowed = OK | BIT(EINVAL);
	int exact = 0, x;
	long ret;

	x = cls == A_EXTRA ? find_extra(a & ~(PAGE - 1)) : -1;
	if (x >= 0 && rnd(2))
		len = F.extra[x].len;	/* all of an extra: it goes */
	clip(a, &len, H_UNMAP);
	if (a & (PAGE - 1) || !len || a >= KERNEL_HALF || len >= (1UL << 57)) {
		allowed = BIT(EINVAL);
		exact = 1;
	} else if (region_end(a)) {
		allowed = OK;	/* unmapping nothing is no error */
		exact = 1;
	}
	ret = munmap((void *)a, len);
	check(OP_MUNMAP, ret, errno, allowed, exact, "munmap(%#lx, %#lx)", a, len);
	x = find_extra(a);
	if (!ret && x >= 0 && len >= F.extra[x].len)
		drop_extra(x);
}

static void do_mprotect(void)
{
	static const int classes[] = {
		A_ARENA, A_ARENA, A_EXTRA, A_UNALIGNED, A_KERNEL,
	};
	static const int prots[] = {
		PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE,
		PROT_READ | PROT_EXEC, PROT_WRITE, PROT_SEM,
		PROT_GROWSDOWN | PROT_READ, PROT_GROWSUP,
		PROT_GROWSDOWN | PROT_GROWSUP, 0x100,
	};
	int cls = classes[rnd(ARRAY_SIZE(classes))];
	unsigned long a = pick_addr(cls), len = pick_len(a);
	int prot = prots[rnd(ARRAY_SIZE(prots))];
	uint64_t allowed = OK | BIT(EINVAL) | BIT(ENOMEM) | BIT(EACCES);
	long ret;

	clip(a, &len, H_WALK);
	ret = mprotect((void *)a, len, prot);
	check(OP_MPROTECT, ret, errno, allowed, 0, "mprotect(%#lx, %#lx, %#x)",
	      a, len, prot);
}

static void do_mremap(void)
{
	static const int classes[] = {
		A_ARENA, A_ARENA, A_EXTRA, A_EXTRA, A_UNALIGNED, A_KERNEL,
	};
	static const int mremap_flags[] = {
		0, MREMAP_MAYMOVE, MREMAP_MAYMOVE,
		MREMAP_MAYMOVE | MREMAP_FIXED,
		MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
		MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
		MREMAP_FIXED, 0x80,
	};
	int cls = classes[rnd(ARRAY_SIZE(classes))];
	unsigned long a = pick_addr(cls), old_len, new_len, na = 0;
	uint64_t allowed = OK | BIT(EINVAL) | BIT(ENOMEM) | BIT(EFAULT) |
			   BIT(EAGAIN);
	int flags, x = -1;
	void *p;

	if (cls == A_EXTRA && F.nextra) {
		x = rnd(F.nextra);
		a = (unsigned long)F.extra[x].p;
		old_len = rnd(8) ? F.extra[x].len : pick_len(a);
	} else {
		old_len = pick_len(a);
	}
	if (x < 0 || old_len != F.extra[x].len)
		clip(a, &old_len, H_UNMAP);
	flags = mremap_flags[rnd(ARRAY_SIZE(mremap_flags))];
	new_len = big_len(pick_len(a));
	if (flags & MREMAP_DONTUNMAP && rnd(4))
		new_len = old_len;
	if (flags & MREMAP_FIXED) {
		na = pick_addr(rnd(5) ? A_ARENA : rnd(2) ? A_UNALIGNED : A_KERNEL);
		clip(na, &new_len, H_UNMAP);
	}
	p = mremap((void *)a, old_len, new_len, flags, (void *)na);
	check(OP_MREMAP, p == MAP_FAILED ? -1 : 0, errno, allowed, 0,
	      "mremap(%#lx, %#lx, %#lx, %#x, %#lx) = %p", a, old_len, new_len,
	      flags, na, p);
	if (p == MAP_FAILED)
		return;
	/* Follow an extra that moved (all of it), or a new mapping. */
	if (x >= 0 && (unsigned long)p == a) {
		/* Resized in place (possibly past a part unmapped before). */
		if (page_align(new_len) > F.extra[x].len)
			F.extra[x].len = page_align(new_len);
	} else if (x >= 0 && old_len == F.extra[x].len) {
		if (flags & MREMAP_DONTUNMAP) {
			add_extra(p, new_len);
		} else if (region_end((unsigned long)p) ==
			   (unsigned long)F.arena + ARENA_PAGES * PAGE) {
			drop_extra(x);
		} else {
			F.extra[x].p = p;
			F.extra[x].len = page_align(new_len);
		}
	} else if ((unsigned long)p != a || x < 0) {
		add_extra(p, new_len);
	}
}

static void do_madvise(void)
{
	static const int advices[] = {
		MADV_DONTNEED, MADV_FREE, MADV_WILLNEED, MADV_COLD,
		MADV_PAGEOUT, MADV_REMOVE, MADV_DONTFORK, MADV_DOFORK,
		MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_HUGEPAGE,
		MADV_NOHUGEPAGE, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
		MADV_PREFETCH, MADV_SEQUENTIAL, MADV_RANDOM, MADV_NORMAL,
		MADV_COLLAPSE,
	};
	static const int classes[] = {
		A_ARENA, A_ARENA, A_EXTRA, A_UNALIGNED,
	};
	int cls = classes[rnd(ARRAY_SIZE(classes))];
	unsigned long a = pick_addr(cls), len = big_len(pick_len(a));
	int advice = advices[rnd(ARRAY_SIZE(advices))];
	uint64_t allowed = OK | BIT(EINVAL) | BIT(ENOMEM) | BIT(EAGAIN) |
			   BIT(EFAULT) | BIT(EINTR) | BIT(EPERM) | BIT(EIO) |
			   BIT(EACCES) | BIT(EBUSY) | BIT(EHWPOISON);
	long ret;

	/* madvise() drops data: only the fuzzer's own ranges. */
	clip(a, &len, H_WALK);
	ret = madvise((void *)a, len, advice);
	check(OP_MADVISE, ret, errno, allowed, 0, "madvise(%#lx, %#lx, %d)", a,
	      len, advice);
}

static void do_mlock(void)
{
	static const int classes[] = { A_ARENA, A_EXTRA, A_UNALIGNED };
	int cls = classes[rnd(ARRAY_SIZE(classes))];
	unsigned long a = pick_addr(cls), len = big_len(pick_len(a));
	uint64_t allowed = OK | BIT(EINVAL) | BIT(ENOMEM) | BIT(EAGAIN) |
			   BIT(EPERM) | BIT(EINTR);
	long ret;

	clip(a, &len, H_LOCK);
	ret = rnd(2) ? mlock((void *)a, len) : munlock((void *)a, len);
	check(OP_MLOCK, ret, errno, allowed, 0, "m(un)lock(%#lx, %#lx)", a, len);
}

/* The NPU's ioctls */

static void slot_close(struct slot *s)
{
	close(s->fd);
	/* The last reference to an attached file detaches this process. */
	if (s->attached && !s->foreign)
		F.mm_attached[s->npu] = 0;
	s->fd = -1;
	s->attached = 0;
	s->foreign = 0;
}

static void do_slot(void)
{
	struct slot *s = &F.slot[rnd(MAX_SLOTS)];

	if (s->fd >= 0) {
		slot_close(s);
		return;
	}
	s->npu = rnd(F.nnpu);
	s->fd = open(npu_dev_path[s->npu], (rnd(4) ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	check(OP_SLOT, s->fd, errno, OK, 1, "open(%s)", npu_dev_path[s->npu]);
	s->attached = 0;
	s->foreign = 0;
}

/* A job's operand: anywhere, but only the fuzzer's own memory as a target. */
static unsigned long job_addr(int write, int *cls)
{
	*cls = pick_class();
	if (write && *cls == A_CANARY)
		*cls = A_PLAIN;
	if (*cls == A_UNALIGNED)
		return pick_addr(*cls);
	/* A job may start anywhere in a page (4-byte aligned), or not. */
	return pick_addr(*cls) + (rnd(4) ? rnd(PAGE / 4) * 4 : 0) + !rnd(50);
}

static int operand_never_mapped(int cls)
{
	return cls == A_KERNEL || cls == A_LOW || cls == A_PLAIN;
}

static void do_ioctl(void)
{
	static const unsigned int cmds[] = {
		GMEM_NPU_IOC_INFO, GMEM_NPU_IOC_ATTACH, GMEM_NPU_IOC_RUN,
		GMEM_NPU_IOC_RUN, GMEM_NPU_IOC_RUN, GMEM_NPU_IOC_STATS,
	};
	static const unsigned long lens[] = {
		4, 8, PAGE, 2 * PAGE, 0, 2, 5, -4UL, 1UL << 40, -PAGE,
	};
	static const unsigned int bad_ops[] = { 0, 5, -1U, 1U << 31 };
	struct slot *s = &F.slot[rnd(MAX_SLOTS)];
	struct gmem_npu_job *job = (struct gmem_npu_job *)(F.plain + 4 * PAGE);
	unsigned int cmd;
	unsigned long arg;
	int fd, kind, dcls, scls0, scls1, argcls, exact = 0;
	uint64_t allowed;
	long ret;

	/* Which file. */
	kind = rnd(10);
	if (kind < 7)
		fd = s->fd >= 0 ? s->fd : F.closedfd;
	else if (kind == 7)
		fd = F.foreign_fd;
	else
		fd = rnd(2) ? F.nullfd : F.memfd;

	/* Which command. */
	switch (rnd(10)) {
	case 0:
		cmd = _IOC(rnd(4), 'N', rnd(10), rnd(300));
		break;
	case 1:
		cmd = _IOC(rnd(4), 'N', rnd(256), rnd(1 << 14));
		break;
	default:
		cmd = cmds[rnd(ARRAY_SIZE(cmds))];
		break;
	}

	/* The job, always built (a RUN reads it wherever arg points). */
	memset(job, 0, sizeof(*job));
	job->op = rnd(8) ? 1 + rnd(4) : bad_ops[rnd(ARRAY_SIZE(bad_ops))];
	job->flags = rnd(20) ? GMEM_NPU_JOB_ENGINES(1 + rnd(8)) : 1U << rnd(32);
	job->len = rnd(3) ? (1 + rnd(2 * PAGE / 4)) * 4 : lens[rnd(ARRAY_SIZE(lens))];
	job->dst = job_addr(1, &dcls);
	job->src0 = job_addr(0, &scls0);
	job->src1 = job_addr(0, &scls1);
	job->value = rnd_next(&F.r);
	/* Long jobs only where fences stop them (or that wrap: refused). */
	if (job->len > 64 * PAGE &&
	    (dcls == A_EXTRA || scls0 == A_EXTRA || scls1 == A_EXTRA) &&
	    job->dst + job->len > job->dst && job->src0 + job->len > job->src0 &&
	    job->src1 + job->len > job->src1)
		job->len = PAGE;

	/* Where the argument points. */
	argcls = rnd(12);
	switch (argcls) {
	case 0:
		arg = 0;
		break;
	case 1:
		arg = pick_addr(A_KERNEL);
		break;
	case 2:
		arg = (unsigned long)F.none;
		break;
	case 3:
		/* The argument runs into a PROT_NONE page. */
		arg = (unsigned long)F.edge + PAGE - 8;
		break;
	case 4:
		/* Readable, not writable: a RUN runs, then cannot answer. */
		mprotect(F.ro, PAGE, PROT_READ | PROT_WRITE);
		memcpy(F.ro + 8, job, sizeof(*job));
		mprotect(F.ro, PAGE, PROT_READ);
		arg = (unsigned long)F.ro + 8;
		break;
	default:
		arg = (unsigned long)job;
		break;
	}

	/* What is allowed. */
	if (fcntl(fd, F_GETFD) < 0) {
		allowed = BIT(EBADF);
		exact = 1;
	} else if (fd == F.nullfd || fd == F.memfd) {
		allowed = BIT(ENOTTY);
		exact = 1;
	} else if (cmd != GMEM_NPU_IOC_INFO && cmd != GMEM_NPU_IOC_ATTACH &&
		   cmd != GMEM_NPU_IOC_RUN && cmd != GMEM_NPU_IOC_STATS) {
		allowed = BIT(ENOTTY);
		exact = 1;
	} else if (cmd == GMEM_NPU_IOC_ATTACH) {
		int foreign = fd == F.foreign_fd || s->foreign;

		exact = 1;
		if (foreign || s->attached)
			allowed = BIT(EBUSY);
		else if (F.mm_attached[s->npu])
			allowed = BIT(EEXIST);
		else
			allowed = OK;
	} else if (argcls >= 0 && argcls <= 3) {
		/* The argument cannot be read (or written) at all. */
		allowed = BIT(EFAULT);
		exact = 1;
	} else if (cmd != GMEM_NPU_IOC_RUN) {
		allowed = argcls == 4 ? BIT(EFAULT) : OK;
		exact = 1;
	} else {
		int foreign = fd == F.foreign_fd || s->foreign;
		int refused = job->flags & ~GMEM_NPU_JOB_ENGINES_MASK ||
			      !job->len || job->len % 4;
		int n = 0;
		unsigned long ops[3];
		int cls[3];

		switch (job->op) {
		case GMEM_NPU_OP_FILL32:
			ops[n] = job->dst;
			cls[n++] = dcls;
			break;
		case GMEM_NPU_OP_COPY:
			ops[n] = job->src0;
			cls[n++] = scls0;
			ops[n] = job->dst;
			cls[n++] = dcls;
			break;
		case GMEM_NPU_OP_ADD32:
			ops[n] = job->src0;
			cls[n++] = scls0;
			ops[n] = job->src1;
			cls[n++] = scls1;
			ops[n] = job->dst;
			cls[n++] = dcls;
			break;
		case GMEM_NPU_OP_SUM32:
			ops[n] = job->src0;
			cls[n++] = scls0;
			break;
		default:
			refused = 1;
		}
		for (int i = 0; i < n; i++)
			refused |= ops[i] % 4 || ops[i] + job->len < ops[i];
		if (refused || (!foreign && !s->attached)) {
			/* validate() and "EINVAL before ATTACH". */
			allowed = BIT(EINVAL);
			exact = 1;
		} else if (foreign) {
			/*
			 * Another process's context: which errors are right
			 * is isolation_test's business; here only that the
			 * kernel survives it.  ESRCH once that process is gone.
			 */
			allowed = OK | BIT(EFAULT) | BIT(ENOMEM) | BIT(ESRCH) |
				  BIT(EPERM) | BIT(EACCES) | BIT(EBADF) |
				  BIT(EINVAL) | BIT(ENXIO);
		} else {
			int never = 0;

			for (int i = 0; i < n; i++)
				never |= operand_never_mapped(cls[i]);
			allowed = never ? BIT(EFAULT) :
				  OK | BIT(EFAULT) | BIT(ENOMEM);
			exact = never;
		}
		/* The job ran (or not); then its result cannot be written. */
		if (argcls == 4)
			allowed = (allowed & ~OK) | BIT(EFAULT);
	}
	ret = ioctl(fd, cmd, arg);
	check(OP_IOCTL, ret, errno, allowed, exact,
	      "ioctl(fd %d%s, %#x, arg class %d) job op %u flags %#x len %#llx dst %#llx (%d) src0 %#llx (%d) src1 %#llx (%d)",
	      fd, fd == F.foreign_fd ? " foreign" : "", cmd, argcls, job->op,
	      job->flags, (unsigned long long)job->len,
	      (unsigned long long)job->dst, dcls,
	      (unsigned long long)job->src0, scls0,
	      (unsigned long long)job->src1, scls1);
	if (!ret && cmd == GMEM_NPU_IOC_ATTACH && fd == s->fd) {
		s->attached = 1;
		F.mm_attached[s->npu] = 1;
	}
}

/* CPU accesses; a fault in memory the fuzzer protected is expected. */

/*
 * touch_sig is set by the fault handler, which leaves through siglongjmp:
 * accessed with atomics (lock-free, so safe in a signal handler), and a
 * static, not an automatic variable, so sigsetjmp() cannot lose it.
 */
static sigjmp_buf touch_env;
static sig_atomic_t touch_sig;

static void on_fault(int sig)
{
	__atomic_store_n(&touch_sig, sig, __ATOMIC_RELAXED);
	siglongjmp(touch_env, 1);
}

/* Whether the VMA holding @a is peer-shared (VmFlags "ps"). */
static int addr_peer_shared(unsigned long a)
{
	unsigned long start, end;
	char line[512];
	int in = 0, ret = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			in = a >= start && a < end;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			ret = !!strstr(line, " ps");
			break;
		}
	}
	fclose(f);
	return ret;
}

static void do_touch(void)
{
	int cls = rnd(3) ? A_ARENA : A_EXTRA;
	char *p = (char *)pick_addr(cls) + rnd(PAGE);
	int write = rnd(2);
	int sig;

	__atomic_store_n(&touch_sig, 0, __ATOMIC_RELAXED);
	if (!sigsetjmp(touch_env, 1)) {
		/* Atomic accesses: done as written, never optimized away. */
		if (write)
			__atomic_store_n(p, (char)rnd(256), __ATOMIC_RELAXED);
		else
			(void)__atomic_load_n(p, __ATOMIC_RELAXED);
	}
	sig = __atomic_load_n(&touch_sig, __ATOMIC_RELAXED);
	/*
	 * SIGSEGV: protected or unmapped, fine.  SIGBUS: a shared file
	 * mapping grown past its end may do that, peer-shared memory never
	 * (there is no memory pressure here).
	 */
	check(OP_TOUCH, sig == SIGBUS && addr_peer_shared((unsigned long)p) ?
	      -1 : 0, EIO, OK, 1, "%s %p: SIGBUS in peer-shared memory",
	      write ? "write" : "read", p);
}

/* /proc/self/gmem_maps */

#define MAPS_LINES	1024

static char maps_text[1 << 18];
static struct gm_maps_line maps_lines[MAPS_LINES];

/*
 * Whether @node may be a preferred location (@pin 0) or a pin (@pin 1) of
 * this process: none (-1), an online host node (not for a pin), or a
 * device this process is attached to, since every attribute that names a
 * device goes when the device leaves the process.  A forked child has its
 * parent's preferred locations, devices included; pins it has only its own.
 */
static int maps_attr_ok(int node, int pin)
{
	int dev = npu_of_node(node);

	if (node < 0)
		return 1;
	if (dev < 0)
		return !pin && node_online(node);
	return F.mm_attached[dev] || (!pin && F.child);
}

/*
 * gmem_maps: its format and order (gm_maps_parse()), attributes this
 * process may have (maps_attr_ok()), and pages only on online host nodes
 * and NPUs.
 */
static void do_maps(void)
{
	const char *line = maps_text;
	int n, bad = -1, len;

	if (gm_maps_text(0, maps_text, sizeof(maps_text)) < 0) {
		check(OP_MAPS, -1, errno, OK, 1, "reading /proc/self/gmem_maps");
		return;
	}
	n = gm_maps_parse(maps_text, maps_lines, MAPS_LINES, PAGE);
	if (n < 0)
		bad = -1 - n;
	for (int i = 0; i < n && i < MAPS_LINES && bad < 0; i++) {
		const struct gm_maps_line *l = &maps_lines[i];

		if (!maps_attr_ok(l->preferred, 0) || !maps_attr_ok(l->pinned, 1))
			bad = i;
		for (int j = 0; j < l->nnodes; j++)
			if (!node_online(l->node[j]) && !node_registered(l->node[j]))
				bad = i;
	}
	for (int i = 0; i < bad && strchr(line, '\n'); i++)
		line = strchr(line, '\n') + 1;
	len = strchrnul(line, '\n') - line;
	check(OP_MAPS, bad < 0 ? 0 : -1, EPROTO, OK, 1,
	      "gmem_maps line %d of %d: %.*s", bad, n, len, line);
}

static void fuzz_one(void);

/*
 * A child fuzzes its copy for a while.  Its inherited NPU files are
 * attached to the parent: for the child they are another process's.
 */
static void do_fork(void)
{
	int status;
	pid_t pid;

	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return;
	if (!pid) {
		F.child = 1;
		F.r ^= 0x5eed;
		F.violations = 0;
		/*
		 * Attached files are the parent's context; files not attached
		 * are closed, so that the child cannot attach them to itself
		 * behind the parent's back.
		 */
		for (int i = 0; i < MAX_SLOTS; i++) {
			if (F.slot[i].attached)
				F.slot[i].foreign = 1;
			else if (F.slot[i].fd >= 0)
				slot_close(&F.slot[i]);
		}
		for (int i = 0; i < NPU_MAX; i++)
			F.mm_attached[i] = 0;
		F.nextra = 0;	/* the parent's; not to be unmapped here */
		for (int i = 0; i < 100; i++)
			fuzz_one();
		_exit(F.violations ? 1 : 0);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	check(OP_FORK, WIFEXITED(status) && !WEXITSTATUS(status) ? 0 : -1,
	      EPROTO, OK, 1, "fork child status %#x", status);
}

static void fuzz_one(void)
{
	int n = rnd(1000);
	int op;

	for (op = 0; op < NR_OPS - 1; op++) {
		if (n < op_weight[op])
			break;
		n -= op_weight[op];
	}
	if (op == OP_FORK && F.child)
		op = OP_TOUCH;
	switch (op) {
	case OP_HMADVISE:
		do_hmadvise();
		break;
	case OP_MMAP:
		do_mmap();
		break;
	case OP_MUNMAP:
		do_munmap();
		break;
	case OP_MPROTECT:
		do_mprotect();
		break;
	case OP_MREMAP:
		do_mremap();
		break;
	case OP_MADVISE:
		do_madvise();
		break;
	case OP_MLOCK:
		do_mlock();
		break;
	case OP_IOCTL:
		do_ioctl();
		break;
	case OP_SLOT:
		do_slot();
		break;
	case OP_TOUCH:
		do_touch();
		break;
	case OP_MAPS:
		do_maps();
		break;
	default:
		do_fork();
		break;
	}
}

/*
 * Another process, attached to NPU 0 with data of its own, that hands its
 * file over a socket and waits to be told to exit (or to be killed).
 */
static pid_t start_helper(int *fd)
{
	char buf[CMSG_SPACE(sizeof(int))] = { 0 }, c = 'f';
	struct iovec iov = { &c, 1 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = buf, .msg_controllen = sizeof(buf),
	};
	struct cmsghdr *cm;
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return -1;
	pid = fork();
	if (!pid) {
		int nfd = npu_open_attached(0);
		void *p = mmap_peer_shared(NULL, 64 * PAGE, 0);

		if (nfd < 0 || p == MAP_FAILED)
			_exit(1);
		fill_pattern(p, 64 * PAGE, 0x5ec2e7);
		npu_fill(nfd, p, 16 * PAGE, 0x5ec2e7);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &nfd, sizeof(int));
		if (sendmsg(sv[1], &msg, 0) != 1)
			_exit(2);
		/* Until the parent closes its end (or kills us). */
		if (read(sv[1], &c, 1) < 0)
			_exit(3);
		_exit(0);
	}
	close(sv[1]);
	*fd = -1;
	if (pid > 0 && recvmsg(sv[0], &msg, 0) == 1) {
		cm = CMSG_FIRSTHDR(&msg);
		if (cm && cm->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	}
	/* The helper waits on its end of the socket until this closes. */
	fcntl(sv[0], F_SETFD, FD_CLOEXEC);
	return pid;
}

static void on_alarm(int sig)
{
}

/*
 * Unmap the peer-shared mappings still there and log them.  Only this
 * process's own calls made them, but the fuzzer may have lost track of a
 * piece (partial mremap() moves of its extras are many): GMEM's figures can
 * only return to the baseline once they are gone.
 */
static void unmap_peer_shared(struct __test_metadata *_metadata)
{
	unsigned long ranges[64][2], start = 0, end = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int n = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;

		/* A mapping's first line; sscanf() may store into a, not b. */
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
			start = a;
			end = b;
			continue;
		}
		if (!strncmp(line, "VmFlags:", 8) && strstr(line, " ps") &&
		    n < (int)ARRAY_SIZE(ranges)) {
			ranges[n][0] = start;
			ranges[n][1] = end;
			n++;
		}
	}
	fclose(f);
	for (int i = 0; i < n; i++) {
		TH_LOG("left: %#lx-%#lx", ranges[i][0], ranges[i][1]);
		munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]);
	}
}

FIXTURE(fuzz)
{
	struct gm_baseline base;
};

FIXTURE_SETUP(fuzz)
{
	if (access(npu_dev_path[0], F_OK))
		SKIP(return, "no %s (gmem_npu_sim not loaded, or no ivshmem device)",
		     npu_dev_path[0]);
	ASSERT_EQ(0, gm_baseline_take(&self->base));
}

FIXTURE_TEARDOWN(fuzz)
{
}

/* What the run logs, too long for a line with the call. */
#define FUZZ_START_FMT "seed %#llx (GMEM_SEED=%#llx repeats it), %lu iterations (GMEM_FUZZ_ITERATIONS), at most %.0f s (GMEM_FUZZ_SECONDS)"
#define FUZZ_SUMMARY_FMT "%lu iterations in %.1f s: %lu calls, %lu with the errno decided by the arguments, %lu violations"

TEST_F_TIMEOUT(fuzz, random_calls, 600)
{
	unsigned long iterations = env_ull("GMEM_FUZZ_ITERATIONS",
					   DEFAULT_ITERATIONS);
	double seconds = env_ull("GMEM_FUZZ_SECONDS", DEFAULT_SECONDS);
	struct itimerval tick = { { 0, 3000 }, { 0, 3000 } }, off = { 0 };
	struct sigaction sa = { .sa_handler = on_alarm };
	struct sigaction fault = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };
	struct gmem_npu_info info;
	uint64_t seed = test_seed();
	double t0 = now_sec();
	char why[512];
	__u64 sum;
	int fd;
	char *p;

	trace = env_ull("GMEM_FUZZ_TRACE", 0);
	TH_LOG(FUZZ_START_FMT,
	       (unsigned long long)seed, (unsigned long long)seed, iterations,
	       seconds);
	F.r = seed;
	F.nodes = online_host_nodes();
	for (int i = 0; i < NPU_MAX; i++) {
		fd = open(npu_dev_path[i], O_RDWR | O_CLOEXEC);
		if (fd < 0)
			break;
		ASSERT_EQ(0, npu_get_info(fd, &info));
		F.hnid[i] = info.hnid;
		F.nnpu++;
		close(fd);
	}
	for (int i = 0; i < MAX_SLOTS; i++)
		F.slot[i].fd = -1;

	/* What must survive: the canary (peer-shared) and plain memory. */
	F.arena = mmap_fenced(ARENA_PAGES * PAGE, FENCE_PAGES * PAGE, 1);
	ASSERT_NE(NULL, F.arena);
	F.canary = mmap_fenced(CANARY_PAGES * PAGE, FENCE_PAGES * PAGE, 1);
	ASSERT_NE(NULL, F.canary);
	fill_pattern(F.canary, CANARY_PAGES * PAGE, seed);
	F.plain = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, F.plain);
	fill_pattern(F.plain, 4 * PAGE, ~seed);
	F.ro = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, F.ro);
	F.none = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, F.none);
	F.edge = mmap_fenced(PAGE, FENCE_PAGES * PAGE, 0);
	ASSERT_NE(NULL, F.edge);

	F.memfd = memfd_create("gmem_fuzz", MFD_CLOEXEC);
	ASSERT_LE(0, F.memfd);
	ASSERT_EQ(0, ftruncate(F.memfd, 1 << 20));
	F.nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, F.nullfd);
	/* A number no file will get: the fuzzer opens only a few. */
	F.closedfd = 900;
	ASSERT_EQ(-1, fcntl(F.closedfd, F_GETFD));
	F.helper = start_helper(&F.foreign_fd);
	ASSERT_LT(0, F.helper);
	ASSERT_LE(0, F.foreign_fd);

	ASSERT_EQ(0, sigaction(SIGALRM, &sa, NULL));
	ASSERT_EQ(0, sigaction(SIGSEGV, &fault, NULL));
	ASSERT_EQ(0, sigaction(SIGBUS, &fault, NULL));
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &tick, NULL));
	for (F.iter = 0; F.iter < iterations; F.iter++) {
		/* Halfway, the other process dies with its file still here. */
		if (F.iter == iterations / 2 && !F.helper_dead) {
			kill(F.helper, SIGKILL);
			waitpid(F.helper, NULL, 0);
			F.helper_dead = 1;
		}
		if (now_sec() - t0 > seconds)
			break;
		fuzz_one();
	}
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &off, NULL));
	signal(SIGSEGV, SIG_DFL);
	signal(SIGBUS, SIG_DFL);

	TH_LOG(FUZZ_SUMMARY_FMT,
	       F.iter, now_sec() - t0, F.calls, F.exact, F.violations);
	for (int i = 0; i < NR_OPS; i++)
		TH_LOG("  %-10s %lu", op_names[i], F.ops[i]);
	for (int i = 0; i < (int)ARRAY_SIZE(F.errnos); i++)
		if (F.errnos[i])
			TH_LOG("  %-8s %lu", i ? strerrorname_np(i) : "success",
			       F.errnos[i]);
	EXPECT_EQ(0, F.violations);

	/* What was never handed out is intact. */
	EXPECT_EQ(-1, check_pattern(F.canary, CANARY_PAGES * PAGE, seed));
	EXPECT_EQ(-1, check_pattern(F.plain, 4 * PAGE, ~seed));

	/* The NPUs still work. */
	p = mmap_peer_shared(NULL, 64 * PAGE, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (int i = 0; i < F.nnpu; i++) {
		fd = npu_open_attached(i);
		if (fd < 0) {
			/* This process may still hold an attached file. */
			for (int s = 0; s < MAX_SLOTS; s++)
				if (F.slot[s].fd >= 0)
					slot_close(&F.slot[s]);
			fd = npu_open_attached(i);
		}
		ASSERT_LE(0, fd);
		fill_pattern(p, 64 * PAGE, i);
		ASSERT_EQ(0, npu_sum(fd, p, 64 * PAGE, &sum));
		ASSERT_EQ(sum32(p, 64 * PAGE), sum);
		close(fd);
	}
	munmap(p, 64 * PAGE);

	/* Everything goes; GMEM is back where it started. */
	for (int i = 0; i < MAX_SLOTS; i++)
		if (F.slot[i].fd >= 0)
			slot_close(&F.slot[i]);
	close(F.foreign_fd);
	if (!F.helper_dead) {
		kill(F.helper, SIGKILL);
		waitpid(F.helper, NULL, 0);
	}
	for (int i = 0; i < F.nextra; i++)
		munmap(F.extra[i].p, F.extra[i].len);
	munmap_fenced(F.arena, ARENA_PAGES * PAGE, FENCE_PAGES * PAGE);
	munmap_fenced(F.canary, CANARY_PAGES * PAGE, FENCE_PAGES * PAGE);
	unmap_peer_shared(_metadata);
	ASSERT_EQ(0, gm_baseline_wait(&self->base, 30, why, sizeof(why)))
		TH_LOG("after fuzzing: %s", why);
}

static void __attribute__((constructor)) fuzz_timeout(void)
{
	_fuzz_random_calls_object->timeout =
		env_ull("GMEM_FUZZ_SECONDS", DEFAULT_SECONDS) + 240;
}

TEST_HARNESS_MAIN
