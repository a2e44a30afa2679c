// SPDX-License-Identifier: GPL-2.0
/*
 * GMEM under stress, for a bounded time: CPU threads and jobs on both NPUs
 * hammer overlapping pages of one buffer with a pattern that says what
 * every word must hold, while other threads munmap, mremap and mprotect
 * the ranges next to it, prefetch and drop pages and set and clear their
 * preferred locations and pins with hmadvise(), fork children that check
 * and write their copy, and SIGKILL processes in the middle of their jobs,
 * prefetches and pins.  At the end every word of the buffer is what the
 * pattern says, each NPU's pinned pages are those gmem_maps shows pinned,
 * and device memory, pins, tracked pages and GMEM address spaces are back
 * where they started.
 *
 * The buffer is cut into 256-byte chunks, 16 to a page, and every chunk
 * has one writer (a CPU thread, an NPU thread, or nobody: a frozen chunk
 * that is only read); the writers of one page are all different, so each
 * page moves between the CPU and the NPUs all the time while every word
 * stays predictable.  Every 16th page belongs to the thread that drops
 * pages: after hmadvise(MADV_DONTNEED) such a page holds either all its
 * data or all zeros, never a mix.
 *
 * Environment: GMEM_SEED (the run prints the seed it used: the choices of
 * every thread follow from it, the interleaving does not) and
 * GMEM_STRESS_SECONDS (default 20: the run is bounded by time, not by
 * iterations, so that a debug kernel ten times slower takes as long).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include "npu_util.h"

#define PAGE		4096UL
#define CHUNK		256UL			/* bytes of one chunk */
#define CHUNK_WORDS	(CHUNK / 4)
#define CHUNKS_PER_PAGE	(PAGE / CHUNK)
#define BUF_PAGES	128UL			/* the shared buffer */
#define NCHUNK		(BUF_PAGES * CHUNKS_PER_PAGE)
#define SIDE_PAGES	32UL			/* each neighbour of the buffer */
#define ADVISOR_EVERY	16			/* every 16th page: the advisor's */

#define CPU_WRITERS	3
#define NPU_WRITERS	2
/* Chunk owners: CPU writers, NPU writers, then these two. */
#define OWNER_FROZEN	(CPU_WRITERS + NPU_WRITERS)
#define OWNER_ADVISOR	(OWNER_FROZEN + 1)

#define DEFAULT_SECONDS	20
#define JOB_RETRIES	100000	/* EFAULT retries of one job (see npu_job_retry) */

/* What a chunk holds. */
enum chunk_kind {
	K_CPU,		/* h(c, gen) ^ (i * K): written by the CPU */
	K_FILL,		/* h(c, gen) in every word: NPU FILL32 */
	K_COPY,		/* a copy of frozen chunk a: NPU COPY */
	K_ADD,		/* frozen a + frozen b: NPU ADD32 */
};

struct chunk {
	uint8_t owner;
	uint8_t kind;
	uint32_t gen;
	uint32_t a, b;
};

/* One neighbour page: nothing (zero), a CPU pattern or an NPU fill. */
enum side_kind { S_ZERO, S_CPU, S_FILL };

struct side_page {
	uint8_t kind;
	uint32_t v;
};

/* The whole run; threads share it. */
static struct {
	uint64_t seed;
	double deadline;
	atomic_int stop;
	pthread_mutex_t lock;
	char failure[1024];

	char *region;		/* left | buffer | right, one mapping */
	char *buf;		/* the shared buffer */
	char *left, *right;	/* the neighbours the churner owns */
	char *spare;		/* where the churner moves a neighbour to */
	int nnpu;
	int fd[NPU_MAX];	/* this process's attached NPU files */
	unsigned int hnid[NPU_MAX];
	int nodes;		/* online host nodes: 0 .. nodes - 1 */

	struct chunk chunks[NCHUNK];
	uint32_t own[OWNER_ADVISOR + 1][NCHUNK];
	uint32_t nown[OWNER_ADVISOR + 1];
	struct side_page side[2 * SIDE_PAGES];	/* left, then right */

	/* The churner's last steps, for the log when something is wrong. */
	char history[32][96];
	unsigned int nhistory;
	int paranoid;		/* check both neighbours after every step */
	int threads;		/* T_*: the kinds of threads that run */
	int trace_stop;		/* GMEM_STRESS_TRACE_STOP: tracing_on = 0 on failure */
	uint32_t *child_diag;	/* shared: what a failed checker child saw */

	/* What happened, for the log. */
	atomic_ulong cpu_writes, jobs, job_retries, prefetches, dontneeds,
		attributes, side_ops, racer_ops, children, kills;
} S;

/* A checker child's /proc/self/gmem_maps. */
static char child_maps[1 << 16];

static void fail(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&S.lock);
	if (!S.failure[0]) {
		/* The trace leading up to the failure, for whoever traces. */
		if (S.trace_stop) {
			int fd = open("/sys/kernel/tracing/tracing_on", O_WRONLY);

			if (fd >= 0) {
				ssize_t n = write(fd, "0", 1);

				(void)n;
				close(fd);
			}
		}
		va_start(ap, fmt);
		vsnprintf(S.failure, sizeof(S.failure), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&S.lock);
	atomic_store(&S.stop, 1);
}

static void churn_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(S.history[S.nhistory++ % 32], sizeof(S.history[0]), fmt, ap);
	va_end(ap);
}

static int stopping(void)
{
	if (atomic_load(&S.stop))
		return 1;
	if (now_sec() > S.deadline) {
		atomic_store(&S.stop, 1);
		return 1;
	}
	return 0;
}

/* The random stream of one thread, derived from the seed. */
static uint64_t thread_rng(int id)
{
	uint64_t s = S.seed ^ (0x1000193ULL * (id + 1));

	return rnd_next(&s);
}

static uint32_t h32(uint32_t c, uint32_t gen)
{
	uint64_t s = S.seed ^ ((uint64_t)c << 32) ^ (gen * 0x100000001b3ULL);

	return rnd_next(&s);
}

static uint32_t *chunk_ptr(uint32_t c)
{
	return (uint32_t *)(S.buf + c * CHUNK);
}

/* The word @i of chunk @c according to its state. */
static uint32_t expect_word(uint32_t c, uint32_t i)
{
	const struct chunk *st = &S.chunks[c];

	switch (st->kind) {
	case K_CPU:
		return h32(c, st->gen) ^ (i * 0x9e3779b9u);
	case K_FILL:
		return h32(c, st->gen);
	case K_COPY:
		return expect_word(st->a, i);
	default:
		return expect_word(st->a, i) + expect_word(st->b, i);
	}
}

static uint64_t expect_sum(uint32_t c)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < CHUNK_WORDS; i++)
		sum += expect_word(c, i);
	return sum;
}

/* Compare chunk @c at @base (S.buf or a child's view of it): -1 or a word. */
static long chunk_diff(const char *base, uint32_t c)
{
	const uint32_t *w = (const uint32_t *)(base + c * CHUNK);

	for (uint32_t i = 0; i < CHUNK_WORDS; i++)
		if (w[i] != expect_word(c, i))
			return i;
	return -1;
}

static int check_chunk(const char *who, uint32_t c)
{
	long i = chunk_diff(S.buf, c);

	if (i < 0)
		return 0;
	fail("%s: chunk %u (page %u, owner %u, kind %u, gen %u) word %ld is %#x, expected %#x",
	     who, c, (unsigned int)(c / CHUNKS_PER_PAGE), S.chunks[c].owner,
	     S.chunks[c].kind, S.chunks[c].gen, i, chunk_ptr(c)[i],
	     expect_word(c, i));
	return -1;
}

static void cpu_write_chunk(uint32_t c, uint32_t gen)
{
	uint32_t *w = chunk_ptr(c);
	uint32_t h = h32(c, gen);

	for (uint32_t i = 0; i < CHUNK_WORDS; i++)
		w[i] = h ^ (i * 0x9e3779b9u);
	S.chunks[c].kind = K_CPU;
	S.chunks[c].gen = gen;
}

static uint32_t random_own(uint64_t *r, int owner)
{
	return S.own[owner][rnd_below(r, S.nown[owner])];
}

/* A random node to move pages to: a host node or an NPU. */
static int random_node(uint64_t *r)
{
	int n = rnd_below(r, S.nodes + S.nnpu);

	return n < S.nodes ? n : (int)S.hnid[n - S.nodes];
}

/*
 * Run a job on memory that stays mapped, peer-shared and writable.  It may
 * still fail with EFAULT, as documented: a faulting NPU gives up after 64
 * misses in a row, which CPU threads stealing the same pages back can
 * cause, and a prefaulting NPU fails a job whose pages the CPU took while
 * it ran.  The jobs here are idempotent, so the job is run again until it
 * succeeds.  Any other error fails the test.
 */
static int npu_job_retry(int fd, __u32 op, void *dst, void *src0, void *src1,
			 size_t len, __u64 *value)
{
	for (int i = 0; i < JOB_RETRIES; i++) {
		__u64 v = value ? *value : 0;
		int ret = npu_do(fd, op, dst, src0, src1, len, &v);

		if (!ret) {
			if (value)
				*value = v;
			return 0;
		}
		if (ret != EFAULT) {
			fail("NPU job op %u dst %p src %p len %zu: %s", op, dst,
			     src0, len, strerror(ret));
			return -1;
		}
		atomic_fetch_add(&S.job_retries, 1);
		if (now_sec() > S.deadline + 60) {
			fail("NPU job op %u on %p still fails with EFAULT a minute after the end",
			     op, dst ? dst : src0);
			return -1;
		}
		sched_yield();
	}
	fail("NPU job op %u on %p failed with EFAULT %d times", op,
	     dst ? dst : src0, JOB_RETRIES);
	return -1;
}

/* Verify chunk @c through NPU @fd (SUM32): 0, or -1 after fail(). */
/*
 * What gmem_maps says of the page at @addr, into @buf: where it is (pages
 * per node of its line), pins, preferred location, accessed-by and
 * read-mostly.  For failure reports: it allocates nothing.
 */
static void maps_describe(unsigned long addr, char *buf, size_t size)
{
	struct gm_maps_line lines[256];
	char text[1 << 16];
	int n;

	snprintf(buf, size, "no gmem_maps line");
	if (gm_maps_text(0, text, sizeof(text)) < 0)
		return;
	n = gm_maps_parse(text, lines, ARRAY_SIZE(lines), PAGE);
	for (int l = 0; l < n && l < (int)ARRAY_SIZE(lines); l++) {
		const struct gm_maps_line *m = &lines[l];
		size_t len;

		if (m->start > addr || m->end <= addr)
			continue;
		len = snprintf(buf, size, "%lx-%lx pref %d pin %d acc %#llx rm %d:",
			       m->start, m->end, m->preferred, m->pinned,
			       m->accessed_by, m->read_mostly);
		for (int k = 0; k < m->nnodes && len < size; k++)
			len += snprintf(buf + len, size - len, " N%d=%lu",
					m->node[k], m->pages[k]);
		return;
	}
}

#define NPU_CHECK_FMT "%s: NPU %d sums chunk %u (page %u, kind %u, gen %u, a %u, b %u) to %#llx, expected %#llx; now the CPU %#llx, NPU %d again %#llx, the other NPU %#llx; page: %s"

static int npu_check_chunk(int fd, const char *who, uint32_t c)
{
	__u64 sum, again = 0, other = 0, cpu;
	const struct chunk *st = &S.chunks[c];
	int i = fd == S.fd[0] ? 0 : 1;
	char page[256];

	if (npu_job_retry(fd, GMEM_NPU_OP_SUM32, NULL, chunk_ptr(c), NULL,
			  CHUNK, &sum))
		return -1;
	if (sum == expect_sum(c))
		return 0;
	/* Stale on this NPU only, for a moment, or in memory too? */
	maps_describe((unsigned long)chunk_ptr(c), page, sizeof(page));
	npu_sum(fd, chunk_ptr(c), CHUNK, &again);
	if (S.nnpu > 1)
		npu_sum(S.fd[1 - i], chunk_ptr(c), CHUNK, &other);
	cpu = sum32(chunk_ptr(c), CHUNK);
	fail(NPU_CHECK_FMT, who, i, c, (unsigned int)(c / CHUNKS_PER_PAGE),
	     st->kind, st->gen, st->a, st->b, (unsigned long long)sum,
	     (unsigned long long)expect_sum(c),
	     (unsigned long long)cpu, i,
	     (unsigned long long)again, (unsigned long long)other, page);
	return -1;
}

/* A CPU thread: rewrites its chunks and reads them straight back. */
static void *cpu_writer(void *arg)
{
	int id = (long)arg;
	uint64_t r = thread_rng(id);
	char who[16];

	snprintf(who, sizeof(who), "cpu%d", id);
	while (!stopping()) {
		uint32_t c = random_own(&r, id);

		cpu_write_chunk(c, S.chunks[c].gen + 1);
		if (check_chunk(who, c))
			break;
		atomic_fetch_add(&S.cpu_writes, 1);
		if (rnd_one_in(&r, 4) &&
		    check_chunk(who, random_own(&r, OWNER_FROZEN)))
			break;
		if (rnd_one_in(&r, 4) && check_chunk(who, random_own(&r, id)))
			break;
		/*
		 * A CPU writer never waits for anything while its pages stay
		 * home: let the NPU threads take them away.
		 */
		usleep(rnd_below(&r, 200));
	}
	return NULL;
}

/* An NPU thread: FILL32, COPY and ADD32 into its chunks, SUM32 to check. */
static void *npu_writer(void *arg)
{
	int id = (long)arg, owner = CPU_WRITERS + id;
	uint64_t r = thread_rng(owner);
	char who[16];

	snprintf(who, sizeof(who), "npu-thread%d", id);
	while (!stopping()) {
		int fd = S.fd[(id + rnd_below(&r, 2)) % S.nnpu];
		uint32_t c = random_own(&r, owner);
		struct chunk *st = &S.chunks[c];
		uint32_t a = random_own(&r, OWNER_FROZEN);
		uint32_t b = random_own(&r, OWNER_FROZEN);
		__u64 v;

		switch (rnd_below(&r, 4)) {
		case 0:
			v = h32(c, st->gen + 1);
			if (npu_job_retry(fd, GMEM_NPU_OP_FILL32, chunk_ptr(c),
					  NULL, NULL, CHUNK, &v))
				return NULL;
			st->kind = K_FILL;
			st->gen++;
			break;
		case 1:
			if (npu_job_retry(fd, GMEM_NPU_OP_COPY, chunk_ptr(c),
					  chunk_ptr(a), NULL, CHUNK, NULL))
				return NULL;
			st->kind = K_COPY;
			st->a = a;
			break;
		case 2:
			if (npu_job_retry(fd, GMEM_NPU_OP_ADD32, chunk_ptr(c),
					  chunk_ptr(a), chunk_ptr(b), CHUNK, NULL))
				return NULL;
			st->kind = K_ADD;
			st->a = a;
			st->b = b;
			break;
		default:
			if (npu_check_chunk(fd, who, a))
				return NULL;
			break;
		}
		atomic_fetch_add(&S.jobs, 1);
		/* Read it back on either NPU, or on the CPU. */
		if (rnd_one_in(&r, 3)) {
			if (check_chunk(who, c))
				return NULL;
		} else if (npu_check_chunk(S.fd[rnd_below(&r, S.nnpu)], who, c)) {
			return NULL;
		}
	}
	return NULL;
}

/* A page of the advisor's half dropped (too long for a line with the call). */
#define ADVISOR_DROP_FMT "%s: page %lu after hmadvise(%d, MADV_DONTNEED): %d zero words, %d kept, of %lu"

/*
 * A random range attribute advice: a preferred location (a host node or an
 * NPU), a pin on an NPU, an NPU that maps the pages in place, read
 * duplication, or any of them undone, everywhere (GM_NODE_ALL) or for
 * one node.  None changes data.  Returns the advice, and its node in
 * *@node.
 */
static int random_attribute(uint64_t *r, int *node)
{
	static const int advices[] = {
		MADV_PREFERRED_LOCATION, MADV_NO_PREFERRED_LOCATION, MADV_PIN,
		MADV_UNPIN, MADV_ACCESSED_BY, MADV_NO_ACCESSED_BY,
		MADV_READ_MOSTLY, MADV_NO_READ_MOSTLY,
	};
	int advice = advices[rnd_below(r, ARRAY_SIZE(advices))];
	int npu = S.hnid[rnd_below(r, S.nnpu)];

	switch (advice) {
	case MADV_PREFERRED_LOCATION:
		*node = random_node(r);
		break;
	case MADV_NO_PREFERRED_LOCATION:
		*node = rnd_one_in(r, 2) ? GM_NODE_ALL : random_node(r);
		break;
	case MADV_PIN:
	case MADV_ACCESSED_BY:
		*node = npu;
		break;
	case MADV_READ_MOSTLY:
	case MADV_NO_READ_MOSTLY:
		*node = GM_NODE_ALL;
		break;
	default:
		*node = rnd_one_in(r, 2) ? GM_NODE_ALL : npu;
		break;
	}
	return advice;
}

/*
 * The advisor: prefetches random ranges of the buffer to random nodes or
 * to their preferred locations, sets and clears their preferred locations
 * and pins (all of which moves pages under everybody's feet but changes
 * no data), and drops its own pages with MADV_DONTNEED on random nodes.
 * Nothing may fail: the buffer stays mapped, and its pins are far below
 * an NPU's limit.
 */
static void *advisor(void *arg)
{
	uint64_t r = thread_rng(OWNER_ADVISOR);
	unsigned long npages = BUF_PAGES / ADVISOR_EVERY;

	while (!stopping()) {
		unsigned long first = rnd_below(&r, BUF_PAGES);
		unsigned long n = 1 + rnd_below(&r, 32);
		int op = rnd_below(&r, 6), node, advice;

		if (first + n > BUF_PAGES)
			n = BUF_PAGES - first;
		if (op < 3) {
			node = rnd_one_in(&r, 4) ? GM_NODE_ALL : random_node(&r);
			if (hmadvise(node, (unsigned long)S.buf + first * PAGE,
				     n * PAGE, MADV_PREFETCH)) {
				fail("hmadvise(%d, buffer page %lu, %lu pages, MADV_PREFETCH): %s",
				     node, first, n, strerror(errno));
				break;
			}
			atomic_fetch_add(&S.prefetches, 1);
		} else if (op == 3) {
			advice = random_attribute(&r, &node);
			if (hmadvise(node, (unsigned long)S.buf + first * PAGE,
				     n * PAGE, advice)) {
				fail("hmadvise(%d, buffer page %lu, %lu pages, %d): %s",
				     node, first, n, advice, strerror(errno));
				break;
			}
			atomic_fetch_add(&S.attributes, 1);
		} else {
			unsigned long p = rnd_below(&r, npages) * ADVISOR_EVERY +
					  ADVISOR_EVERY - 1;
			uint32_t c0 = p * CHUNKS_PER_PAGE;
			int all = rnd_one_in(&r, 4);
			int node = all ? GM_NODE_ALL : random_node(&r);
			int zero = 0, kept = 0;
			uint32_t gen;

			if (hmadvise(node, (unsigned long)S.buf + p * PAGE, PAGE,
				     MADV_DONTNEED)) {
				fail("hmadvise(%d, buffer page %lu, MADV_DONTNEED): %s",
				     node, p, strerror(errno));
				break;
			}
			atomic_fetch_add(&S.dontneeds, 1);
			/* The page went as a whole or stayed as a whole. */
			for (uint32_t c = c0; c < c0 + CHUNKS_PER_PAGE; c++) {
				const uint32_t *w = chunk_ptr(c);

				for (uint32_t i = 0; i < CHUNK_WORDS; i++) {
					zero += !w[i];
					kept += w[i] == expect_word(c, i);
				}
			}
			if (zero != PAGE / 4 && (all || kept != PAGE / 4)) {
				fail(ADVISOR_DROP_FMT, __func__, p, node, zero, kept,
				     PAGE / 4);
				break;
			}
			gen = S.chunks[c0].gen + 1;
			for (uint32_t c = c0; c < c0 + CHUNKS_PER_PAGE; c++)
				cpu_write_chunk(c, gen);
			for (uint32_t c = c0; c < c0 + CHUNKS_PER_PAGE; c++)
				if (check_chunk("advisor", c))
					return NULL;
		}
	}
	return NULL;
}

/* The neighbours: page i of left (i < SIDE_PAGES) or right. */
static char *side_addr(unsigned long i)
{
	return i < SIDE_PAGES ? S.left + i * PAGE
			      : S.right + (i - SIDE_PAGES) * PAGE;
}

static uint32_t side_word(const struct side_page *sp, uint32_t i)
{
	switch (sp->kind) {
	case S_ZERO:
		return 0;
	case S_FILL:
		return sp->v;
	default:
		return sp->v ^ (i * 0x2545f491u);
	}
}

/*
 * Where a wrong word of a neighbour page may come from: a chunk of the
 * buffer with the same word at the same offset (gens 0-3), for the log.
 */
static void identify(uint32_t value, uint32_t i, char *out, size_t size)
{
	uint32_t in_chunk = i % CHUNK_WORDS, slot = i / CHUNK_WORDS;

	snprintf(out, size, "no buffer chunk");
	for (uint32_t c = slot; c < NCHUNK; c += CHUNKS_PER_PAGE)
		for (uint32_t gen = 0; gen < 100000; gen++)
			if ((h32(c, gen) ^ (in_chunk * 0x9e3779b9u)) == value ||
			    h32(c, gen) == value) {
				snprintf(out, size, "buffer page %u chunk %u gen %u",
					 c / (uint32_t)CHUNKS_PER_PAGE, c, gen);
				return;
			}
}

/* A wrong word of a neighbour page (too long for a line with the call). */
#define SIDE_WRONG_FMT "churner, %s: neighbour page %lu (kind %u) word %u is %#x, expected %#x (%u words wrong; that word is as in %s; words 0-3, 64-65: %#x %#x %#x %#x %#x %#x)"

/* Check neighbour pages [first, first + n) at @at (their home, or moved). */
static int side_check_at(const char *at, unsigned long first, unsigned long n,
			 const char *what)
{
	for (unsigned long p = first; p < first + n; p++) {
		const uint32_t *w = (const uint32_t *)(at + (p - first) * PAGE);
		const struct side_page *sp = &S.side[p];

		for (uint32_t i = 0; i < PAGE / 4; i++) {
			if (w[i] != side_word(sp, i)) {
				char from[64];
				uint32_t bad = 0;

				for (uint32_t j = 0; j < PAGE / 4; j++)
					bad += w[j] != side_word(sp, j);
				identify(w[i], i, from, sizeof(from));
				fail(SIDE_WRONG_FMT, what, p, sp->kind, i, w[i],
				     side_word(sp, i), bad, from, w[0], w[1], w[2],
				     w[3], w[64], w[65]);
				return -1;
			}
		}
	}
	return 0;
}

static int side_check(unsigned long first, unsigned long n, const char *what)
{
	for (unsigned long p = first; p < first + n; p++)
		if (side_check_at(side_addr(p), p, 1, what))
			return -1;
	return 0;
}

/* A random range of pages of one neighbour, in side page numbers. */
static void side_range(uint64_t *r, unsigned long *first, unsigned long *n)
{
	unsigned long base = rnd_below(r, 2) * SIDE_PAGES;
	unsigned long off = rnd_below(r, SIDE_PAGES);

	*n = 1 + rnd_below(r, 8);
	if (off + *n > SIDE_PAGES)
		*n = SIDE_PAGES - off;
	*first = base + off;
}

static int expect_errno(long ret, int err, const char *what)
{
	if (ret == -1 && errno == err)
		return 0;
	fail("churner: %s returned %ld (%s), expected %s", what, ret,
	     ret ? strerror(errno) : "success", strerror(err));
	return -1;
}

/* Remap [p, p + len) as fresh peer-shared memory. */
static int remap_fresh(char *p, size_t len)
{
	if (mmap_peer_shared(p, len, MAP_FIXED) == p)
		return 0;
	fail("churner: mmap(MAP_FIXED | MAP_PEER_SHARED) at %p: %s", p,
	     strerror(errno));
	return -1;
}

/* mprotect the range read-only, then PROT_NONE, using it each time. */
static int churn_mprotect(uint64_t *r, unsigned long first, unsigned long n)
{
	char *p = side_addr(first);
	size_t len = n * PAGE;
	int fd = S.fd[rnd_below(r, S.nnpu)];
	__u64 sum;

	if (mprotect(p, len, PROT_READ)) {
		fail("churner: mprotect(PROT_READ): %s", strerror(errno));
		return -1;
	}
	if (side_check(first, n, "read-only"))
		return -1;
	/* The NPU may read it, not write it. */
	if (npu_job_retry(fd, GMEM_NPU_OP_SUM32, NULL, p, NULL, len, &sum))
		return -1;
	if (sum != sum32(p, len)) {
		fail("churner: the NPU sums read-only neighbour pages to %#llx, the CPU to %#llx",
		     (unsigned long long)sum, (unsigned long long)sum32(p, len));
		return -1;
	}
	if (expect_errno(npu_fill(fd, p, len, 0x0bad0bad) ? -1 : 0,
			 EFAULT, "FILL32 on read-only memory"))
		return -1;
	if (side_check(first, n, "after a refused FILL32"))
		return -1;
	if (mprotect(p, len, PROT_NONE)) {
		fail("churner: mprotect(PROT_NONE): %s", strerror(errno));
		return -1;
	}
	/* A range the CPU cannot read goes to no device (documented EFAULT). */
	errno = 0;
	if (expect_errno(hmadvise(S.hnid[rnd_below(r, S.nnpu)],
				  (unsigned long)p, len, MADV_PREFETCH),
			 EFAULT, "hmadvise(MADV_PREFETCH) of PROT_NONE memory to an NPU"))
		return -1;
	if (hmadvise(0, (unsigned long)p, len, MADV_PREFETCH)) {
		fail("churner: hmadvise(MADV_PREFETCH) of PROT_NONE memory home: %s",
		     strerror(errno));
		return -1;
	}
	if (expect_errno(npu_sum(fd, p, len, &sum) ? -1 : 0, EFAULT,
			 "SUM32 on PROT_NONE memory"))
		return -1;
	if (mprotect(p, len, PROT_READ | PROT_WRITE)) {
		fail("churner: mprotect(PROT_READ | PROT_WRITE): %s",
		     strerror(errno));
		return -1;
	}
	return side_check(first, n, "after mprotect");
}

/* Move one whole neighbour away and back, with or without MREMAP_DONTUNMAP. */
static int churn_move(uint64_t *r)
{
	int right = rnd_below(r, 2), dontunmap = rnd_below(r, 2);
	char *home = right ? S.right : S.left;
	unsigned long first = right ? SIDE_PAGES : 0;
	size_t len = SIDE_PAGES * PAGE;
	int flags = MREMAP_MAYMOVE | MREMAP_FIXED |
		    (dontunmap ? MREMAP_DONTUNMAP : 0);
	__u64 sum;

	churn_log("  move %s%s", right ? "right" : "left",
		  dontunmap ? ", MREMAP_DONTUNMAP" : "");
	if (mremap(home, len, len, flags, S.spare) != S.spare) {
		fail("churner: mremap to the spare (%s): %s",
		     dontunmap ? "MREMAP_DONTUNMAP" : "moving", strerror(errno));
		return -1;
	}
	/*
	 * Moved without MREMAP_DONTUNMAP, home is a hole now: GMEM memory
	 * next to the buffer has gone.  With it, home is an empty mapping.
	 */
	if (side_check_at(S.spare, first, SIDE_PAGES, "moved to the spare"))
		return -1;
	if (npu_job_retry(S.fd[rnd_below(r, S.nnpu)], GMEM_NPU_OP_SUM32, NULL,
			  S.spare, NULL, len, &sum))
		return -1;
	if (sum != sum32(S.spare, len)) {
		fail("churner: the NPU sums a moved neighbour to %#llx, the CPU to %#llx",
		     (unsigned long long)sum, (unsigned long long)sum32(S.spare, len));
		return -1;
	}
	if (mremap(S.spare, len, len, flags, home) != home) {
		fail("churner: mremap back from the spare: %s", strerror(errno));
		return -1;
	}
	if (!dontunmap && remap_fresh(S.spare, len))
		return -1;
	return side_check(first, SIDE_PAGES, "moved back");
}

/* Shrink a neighbour with mremap and grow it back in place. */
static int churn_shrink(uint64_t *r)
{
	int right = rnd_below(r, 2);
	char *home = right ? S.right : S.left;
	unsigned long first = right ? SIDE_PAGES : 0;
	unsigned long keep = rnd_below(r, SIDE_PAGES - 1) + 1;
	size_t len = SIDE_PAGES * PAGE;

	churn_log("  shrink %s to %lu pages", right ? "right" : "left", keep);
	if (mremap(home, len, keep * PAGE, 0) != home) {
		fail("churner: mremap shrinking a neighbour: %s", strerror(errno));
		return -1;
	}
	if (mremap(home, keep * PAGE, len, 0) != home) {
		fail("churner: mremap growing a neighbour back in place: %s",
		     strerror(errno));
		return -1;
	}
	for (unsigned long p = first + keep; p < first + SIDE_PAGES; p++)
		S.side[p].kind = S_ZERO;
	return side_check(first, SIDE_PAGES, "shrunk and grown");
}

/*
 * The churner: owns the two neighbours of the buffer and keeps changing
 * their mappings (which splits and merges the buffer's VMA) and their
 * pages, checking their data after each step.
 */
static void *churner(void *arg)
{
	uint64_t r = thread_rng(OWNER_ADVISOR + 1);

	while (!stopping()) {
		unsigned long first, n;
		int fd = S.fd[rnd_below(&r, S.nnpu)];
		int ret = 0, node, op, advice;
		__u64 v;
		char *p;

		side_range(&r, &first, &n);
		p = side_addr(first);
		op = rnd_below(&r, 8);
		churn_log("step %lu: op %d, pages %lu-%lu", S.side_ops, op,
			  first, first + n - 1);
		switch (op) {
		case 0:
			for (unsigned long i = first; i < first + n; i++) {
				uint32_t *w = (uint32_t *)side_addr(i);

				S.side[i].kind = S_CPU;
				S.side[i].v = rnd_next(&r);
				churn_log("  page %lu := cpu %#x", i, S.side[i].v);
				for (uint32_t j = 0; j < PAGE / 4; j++)
					w[j] = side_word(&S.side[i], j);
			}
			break;
		case 1:
			v = (uint32_t)rnd_next(&r);
			churn_log("  fill %#x on fd %d", (uint32_t)v, fd);
			ret = npu_job_retry(fd, GMEM_NPU_OP_FILL32, p, NULL, NULL,
					    n * PAGE, &v);
			for (unsigned long i = first; i < first + n; i++) {
				S.side[i].kind = S_FILL;
				S.side[i].v = v;
			}
			break;
		case 2:
			if (munmap(p, n * PAGE)) {
				fail("%s: munmap: %s", __func__, strerror(errno));
				return NULL;
			}
			ret = remap_fresh(p, n * PAGE);
			for (unsigned long i = first; i < first + n; i++)
				S.side[i].kind = S_ZERO;
			break;
		case 3:
			ret = churn_mprotect(&r, first, n);
			break;
		case 4:
			ret = churn_move(&r);
			break;
		case 5:
			ret = churn_shrink(&r);
			break;
		case 6:
			node = rnd_one_in(&r, 4) ? GM_NODE_ALL : random_node(&r);
			churn_log("  dontneed on node %d", node);
			if (hmadvise(node, (unsigned long)p, n * PAGE,
				     MADV_DONTNEED)) {
				fail("%s: hmadvise(%d, MADV_DONTNEED): %s",
				     __func__, node, strerror(errno));
				return NULL;
			}
			/* Each page went or stayed, as a whole. */
			for (unsigned long i = first; i < first + n; i++) {
				static const char zero_page[PAGE];

				if (!memcmp(side_addr(i), zero_page, PAGE))
					S.side[i].kind = S_ZERO;
				else if (node == GM_NODE_ALL)
					ret = side_check(i, 1, "MADV_DONTNEED on every node");
			}
			break;
		default:
			/*
			 * A prefetch, or a range attribute that the next
			 * munmap, mremap or mprotect of the neighbour then
			 * drops, moves or keeps.
			 */
			if (rnd_one_in(&r, 2)) {
				node = random_node(&r);
				advice = MADV_PREFETCH;
			} else {
				advice = random_attribute(&r, &node);
			}
			churn_log("  hmadvise(%d) on node %d", advice, node);
			if (hmadvise(node, (unsigned long)p, n * PAGE, advice)) {
				fail("%s: hmadvise(%d, %d): %s", __func__, node,
				     advice, strerror(errno));
				return NULL;
			}
			break;
		}
		if (ret || side_check(first, n, "after a step"))
			return NULL;
		if (S.paranoid && side_check(0, 2 * SIDE_PAGES, "paranoid"))
			return NULL;
		atomic_fetch_add(&S.side_ops, 1);
	}
	side_check(0, 2 * SIDE_PAGES, "at the end");
	return NULL;
}

/*
 * The racer: reads the neighbours through the NPUs, prefetches them and
 * sets their range attributes while the churner remaps them.  Nothing is
 * checked but the errors, which must be those documented for a range that
 * is unmapped (ENOMEM), not readable or gone after the checks (EFAULT).
 */
static void *racer(void *arg)
{
	uint64_t r = thread_rng(OWNER_ADVISOR + 2);

	while (!stopping()) {
		unsigned long first = rnd_below(&r, 2 * SIDE_PAGES);
		unsigned long n = 1 + rnd_below(&r, 16);
		char *p = side_addr(first);
		__u64 sum;
		int ret;

		/*
		 * From the left neighbour on, possibly into the buffer; the
		 * right one only up to its end (after it, anything may be
		 * mapped).
		 */
		if (first >= SIDE_PAGES && first + n > 2 * SIDE_PAGES)
			n = 2 * SIDE_PAGES - first;
		if (rnd_below(&r, 2)) {
			ret = npu_sum_on(S.fd[rnd_below(&r, S.nnpu)], p, n * PAGE,
					 &sum, 1 + rnd_below(&r, 4));
			if (ret && ret != EFAULT) {
				fail("%s: SUM32 on a neighbour: %s", __func__,
				     strerror(ret));
				break;
			}
		} else {
			int node = random_node(&r), advice = MADV_PREFETCH;

			if (rnd_one_in(&r, 3))
				advice = random_attribute(&r, &node);
			if (hmadvise(node, (unsigned long)p, n * PAGE, advice) &&
			    errno != ENOMEM && errno != EFAULT) {
				fail("%s: hmadvise(%d, %d) on a neighbour: %s",
				     __func__, node, advice, strerror(errno));
				break;
			}
		}
		atomic_fetch_add(&S.racer_ops, 1);
	}
	return NULL;
}

/*
 * A child that checks its copy of the buffer: it has none of the parent's
 * pins (fork does not pass them on), and its frozen chunks read right by
 * the CPU and by an NPU it attaches itself; then it writes its copy and
 * drops part of it, which must not reach the parent.  Returns the exit
 * status: 0, or the step that failed.  Only system calls here: the parent
 * has threads, so the child must not take locks (malloc, stdio).
 */
static int checker_child(uint64_t r)
{
	int fd = npu_open_attached(rnd_below(&r, S.nnpu));
	unsigned long first;
	const char *pin;
	__u64 sum;

	if (fd < 0)
		return 10;
	if (gm_maps_text(0, child_maps, sizeof(child_maps)) < 0)
		return 17;
	for (pin = child_maps; (pin = strstr(pin, " pinned=")); pin++)
		if (strncmp(pin + 8, "none", 4))
			return 18;
	for (uint32_t k = 0; k < S.nown[OWNER_FROZEN]; k++) {
		uint32_t c = S.own[OWNER_FROZEN][k];
		long i = chunk_diff(S.buf, c);

		if (i >= 0) {
			/* For the parent's report: what this copy holds. */
			S.child_diag[0] = c;
			S.child_diag[1] = i;
			S.child_diag[2] = chunk_ptr(c)[i];
			S.child_diag[3] = expect_word(c, i);
			return 11;
		}
	}
	for (int k = 0; k < 8; k++) {
		uint32_t c = random_own(&r, OWNER_FROZEN);

		if (npu_sum(fd, chunk_ptr(c), CHUNK, &sum))
			return 12;
		if (sum != expect_sum(c))
			return 13;
	}
	/* Its own writes and drops, on the same virtual addresses. */
	if (npu_fill(fd, S.buf, BUF_PAGES * PAGE / 2, 0xc41dc41d))
		return 14;
	memset(S.buf + BUF_PAGES * PAGE / 2, 0xcc, PAGE);
	first = rnd_below(&r, BUF_PAGES - 8);
	if (hmadvise(GM_NODE_ALL, (unsigned long)S.buf + first * PAGE,
		     8 * PAGE, MADV_DONTNEED))
		return 15;
	for (unsigned long i = 0; i < 8 * PAGE; i++)
		if (S.buf[first * PAGE + i])
			return 16;
	return 0;
}

/*
 * A child that works its own buffer on both NPUs, to be killed at a random
 * moment (in a job, a prefetch, a CPU fault...).  It checks what it can.
 */
static int worker_child(uint64_t r)
{
	size_t len = (1 + rnd_below(&r, 64)) * 16 * PAGE;
	int fd[NPU_MAX];
	uint32_t *p;
	__u64 sum;

	for (int i = 0; i < S.nnpu; i++) {
		fd[i] = npu_open_attached(i);
		if (fd[i] < 0)
			return 20;
	}
	p = mmap_peer_shared(NULL, len, 0);
	if (p == MAP_FAILED)
		return 21;
	for (int round = 0; round < 20; round++) {
		int a = rnd_below(&r, S.nnpu), b = rnd_below(&r, S.nnpu);
		uint32_t v = rnd_next(&r);

		if (npu_fill_on(fd[a], p, len, v, 1 + rnd_below(&r, 8)))
			return 22;
		if (hmadvise(S.hnid[b], (unsigned long)p, len, MADV_PREFETCH))
			return 23;
		if (npu_sum_on(fd[b], p, len, &sum, 1 + rnd_below(&r, 8)) ||
		    sum != (__u64)v * (len / 4))
			return 24;
		if (rnd_below(&r, 2) &&
		    hmadvise(0, (unsigned long)p, len, MADV_PREFETCH))
			return 25;
		for (size_t i = 0; i < len / 4; i += 97)
			if (p[i] != v)
				return 26;
		if (rnd_below(&r, 2) &&
		    hmadvise(S.hnid[a], (unsigned long)p, len, MADV_DONTNEED))
			return 27;
		/* Pins that its exit (or SIGKILL) must give back. */
		if (rnd_one_in(&r, 4) &&
		    hmadvise(S.hnid[b], (unsigned long)p, len, MADV_PIN))
			return 28;
	}
	return 0;
}

/* A child that failed (too long for a line with the call). */
#define CHILD_FAILED_FMT "%s child: %s %d (at step 11: chunk %u, page %u, word %u is %#x, expected %#x)"

/* Forks checkers and workers, and SIGKILLs about half of them on the way. */
static void *forker(void *arg)
{
	uint64_t r = thread_rng(OWNER_ADVISOR + 3);

	while (!stopping()) {
		int worker = rnd_below(&r, 2);
		int kill_it = rnd_below(&r, 2);
		useconds_t delay = rnd_below(&r, 30000);
		uint64_t child_r = rnd_next(&r);
		int status;
		pid_t pid;

		pid = fork();
		if (pid < 0) {
			fail("fork: %s", strerror(errno));
			break;
		}
		if (!pid)
			_exit(worker ? worker_child(child_r) : checker_child(child_r));
		atomic_fetch_add(&S.children, 1);
		if (kill_it) {
			usleep(delay);
			kill(pid, SIGKILL);
		}
		if (waitpid(pid, &status, 0) != pid) {
			fail("waitpid: %s", strerror(errno));
			break;
		}
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && kill_it) {
			atomic_fetch_add(&S.kills, 1);
			continue;
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			uint32_t d[4];

			/* Written by the child, in a MAP_SHARED page. */
			for (int i = 0; i < 4; i++)
				d[i] = __atomic_load_n(&S.child_diag[i],
						       __ATOMIC_RELAXED);
			fail(CHILD_FAILED_FMT, worker ? "worker" : "checker",
			     WIFEXITED(status) ? "failed at step" : "killed by signal",
			     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
			     d[0], d[0] / (uint32_t)CHUNKS_PER_PAGE, d[1], d[2], d[3]);
			break;
		}
	}
	return NULL;
}

/*
 * After NPU @i summed the buffer to something else than the pattern: which
 * pages and chunks does it read wrong, and what does gmem_maps say of them?
 * Logged for the failure report (the NPU reads each bad page again, chunk
 * by chunk, through whatever mapping it holds).
 */
#define DIAGNOSE_CHUNK_FMT "  chunk %u (owner %u, kind %u, gen %u, a %u, b %u): %#llx, not %#llx"
static void npu_sum_diagnose(struct __test_metadata *_metadata, int i)
{
	char where[256];
	int bad = 0;

	for (unsigned long p = 0; p < BUF_PAGES && bad < 8; p++) {
		const char *page = S.buf + p * PAGE;
		__u64 want = 0, got;

		for (uint32_t c = p * CHUNKS_PER_PAGE; c < (p + 1) * CHUNKS_PER_PAGE; c++)
			want += expect_sum(c);
		if (npu_sum(S.fd[i], page, PAGE, &got) || got == want)
			continue;
		bad++;
		TH_LOG("npu%d reads page %lu (%p) as sum %#llx, the pattern %#llx, the CPU %#llx",
		       i, p, page, (unsigned long long)got, (unsigned long long)want,
		       (unsigned long long)sum32(page, PAGE));
		for (uint32_t c = p * CHUNKS_PER_PAGE; c < (p + 1) * CHUNKS_PER_PAGE; c++) {
			const struct chunk *st = &S.chunks[c];

			if (!npu_sum(S.fd[i], S.buf + c * CHUNK, CHUNK, &got) &&
			    got != expect_sum(c))
				TH_LOG(DIAGNOSE_CHUNK_FMT,
				       c, st->owner, st->kind, st->gen, st->a, st->b,
				       (unsigned long long)got,
				       (unsigned long long)expect_sum(c));
		}
		maps_describe((unsigned long)page, where, sizeof(where));
		TH_LOG("  gmem_maps %s", where);
	}
}

/*
 * What each NPU counts as pinned (its sysfs "pinned", from @base on)
 * is what gmem_maps shows pinned there: the pins of the buffer and its
 * neighbours, once the children's are gone (a killed child may still be
 * tearing its address space down).  0, or -1 with the difference in @why.
 */
static int pins_settle(const struct gm_baseline *base, char *why, size_t size)
{
	static struct gm_maps_line lines[256];
	static char text[1 << 16];
	double end = now_sec() + 10;

	for (;;) {
		long long want[NPU_MAX] = { 0 }, got[NPU_MAX];
		int n, same = 1;

		if (gm_maps_text(0, text, sizeof(text)) < 0) {
			snprintf(why, size, "gmem_maps: %s", strerror(errno));
			return -1;
		}
		n = gm_maps_parse(text, lines, ARRAY_SIZE(lines), PAGE);
		if (n < 0 || n > (int)ARRAY_SIZE(lines)) {
			snprintf(why, size, "gmem_maps line %d is wrong (or too many): %.400s",
				 -1 - n, text);
			return -1;
		}
		for (int i = 0; i < n; i++)
			for (int j = 0; j < S.nnpu; j++)
				if (lines[i].pinned == (int)S.hnid[j])
					want[j] += lines[i].end - lines[i].start;
		for (int j = 0; j < S.nnpu; j++) {
			got[j] = gm_node_read(S.hnid[j], GM_NODE_PINNED) -
				 base->pinned[j];
			same &= got[j] == want[j];
		}
		if (same)
			return 0;
		if (now_sec() > end) {
			snprintf(why, size,
				 "pinned on npu0 %lld bytes, in gmem_maps %lld; npu1 %lld, %lld",
				 got[0], want[0], S.nnpu > 1 ? got[1] : 0,
				 S.nnpu > 1 ? want[1] : 0);
			return -1;
		}
		usleep(20000);
	}
}

/*
 * GMEM_STRESS_THREADS: which kinds of threads run (a mask of these, all by
 * default), to narrow a failure down.  GMEM_STRESS_TRACE_STOP=1: the first
 * failure turns tracing off (tracefs tracing_on), so that the trace ends
 * where it happened.
 */
enum {
	T_CPU = 1, T_NPU = 2, T_ADVISOR = 4, T_CHURNER = 8, T_RACER = 16,
	T_FORKER = 32,
};

static int start(pthread_t *t, int kind, void *(*fn)(void *), void *arg)
{
	if (!(S.threads & kind))
		return 0;
	return pthread_create(t, NULL, fn, arg);
}

static void join(pthread_t t, int kind)
{
	if (S.threads & kind)
		pthread_join(t, NULL);
}

/* Thrashing control's threshold, turned on for the test. */
#define STRESS_THRASHING "/sys/kernel/mm/gmem/thrashing/threshold"

FIXTURE(stress)
{
	struct gm_baseline base;
	unsigned int seconds;
	unsigned long long thrashing;	/* the threshold before the test */
	int thrashing_saved;
};

FIXTURE_SETUP(stress)
{
	struct gmem_npu_info info;

	if (access(npu_dev_path[0], F_OK))
		SKIP(return, "no %s (gmem_npu_sim not loaded, or no ivshmem device)",
		     npu_dev_path[0]);
	ASSERT_EQ(0, gm_baseline_take(&self->base));
	self->seconds = env_ull("GMEM_STRESS_SECONDS", DEFAULT_SECONDS);
	S.seed = test_seed();
	TH_LOG("seed %#llx (GMEM_SEED=%#llx repeats the choices), %u s (GMEM_STRESS_SECONDS)",
	       (unsigned long long)S.seed, (unsigned long long)S.seed,
	       self->seconds);
	pthread_mutex_init(&S.lock, NULL);
	S.paranoid = env_ull("GMEM_STRESS_PARANOID", 0);
	/*
	 * Thrashing control on: CPU and NPU writers share pages, so pages
	 * thrash and get mapped in place, under everything else the test does.
	 */
	if (!read_ull(STRESS_THRASHING, &self->thrashing)) {
		self->thrashing_saved = 1;
		ASSERT_EQ(0, write_ull(STRESS_THRASHING, 2));
	}
	S.threads = env_ull("GMEM_STRESS_THREADS", ~0ULL);
	S.trace_stop = env_ull("GMEM_STRESS_TRACE_STOP", 0);
	S.nodes = online_host_nodes();
	for (int i = 0; i < NPU_MAX; i++) {
		S.fd[i] = npu_open_attached(i);
		if (S.fd[i] < 0 && i > 0)
			break;
		ASSERT_LE(0, S.fd[i]) TH_LOG("%s: %s", npu_dev_path[i], strerror(errno));
		ASSERT_EQ(0, npu_get_info(S.fd[i], &info));
		ASSERT_EQ(0, gm_limit_reset(info.hnid, info.dram_size));
		S.hnid[i] = info.hnid;
		S.nnpu++;
	}
}

FIXTURE_TEARDOWN(stress)
{
	if (self->thrashing_saved)
		write_ull(STRESS_THRASHING, self->thrashing);
}

/* What the run logs at the end, too long for a line with the call. */
#define STRESS_SUMMARY_FMT "%.1f s: %lu CPU chunk writes, %lu NPU jobs (%lu EFAULT retries), %lu prefetches, %lu range attributes, %lu drops, %lu neighbour steps, %lu racer calls, %lu children (%lu killed)"

TEST_F_TIMEOUT(stress, mixed, 600)
{
	pthread_t cpu[CPU_WRITERS], npu[NPU_WRITERS], adv, churn, race, fork_t;
	size_t region_len = (2 * SIDE_PAGES + BUF_PAGES) * PAGE;
	double t0 = now_sec();
	__u64 total = 0, sum;
	char why[512];

	S.child_diag = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, S.child_diag);
	S.region = mmap_peer_shared(NULL, region_len, 0);
	ASSERT_NE(MAP_FAILED, S.region);
	S.left = S.region;
	S.buf = S.region + SIDE_PAGES * PAGE;
	S.right = S.buf + BUF_PAGES * PAGE;
	S.spare = mmap_peer_shared(NULL, SIDE_PAGES * PAGE, 0);
	ASSERT_NE(MAP_FAILED, S.spare);

	/* Owners: each page has chunks of every writer, spread differently. */
	for (uint32_t c = 0; c < NCHUNK; c++) {
		uint32_t page = c / CHUNKS_PER_PAGE;
		int owner = page % ADVISOR_EVERY == ADVISOR_EVERY - 1 ?
			    OWNER_ADVISOR : (c + page) % (OWNER_FROZEN + 1);

		S.chunks[c].owner = owner;
		S.own[owner][S.nown[owner]++] = c;
		cpu_write_chunk(c, 0);
	}
	for (unsigned long i = 0; i < 2 * SIDE_PAGES; i++)
		S.side[i].kind = S_ZERO;

	TH_LOG("pid %d buf %p", getpid(), S.buf);
	S.deadline = now_sec() + self->seconds;
	for (long i = 0; i < CPU_WRITERS; i++)
		ASSERT_EQ(0, start(&cpu[i], T_CPU, cpu_writer, (void *)i));
	for (long i = 0; i < NPU_WRITERS; i++)
		ASSERT_EQ(0, start(&npu[i], T_NPU, npu_writer, (void *)i));
	ASSERT_EQ(0, start(&adv, T_ADVISOR, advisor, NULL));
	ASSERT_EQ(0, start(&churn, T_CHURNER, churner, NULL));
	ASSERT_EQ(0, start(&race, T_RACER, racer, NULL));
	ASSERT_EQ(0, start(&fork_t, T_FORKER, forker, NULL));
	while (!stopping())
		usleep(100000);
	for (int i = 0; i < CPU_WRITERS; i++)
		join(cpu[i], T_CPU);
	for (int i = 0; i < NPU_WRITERS; i++)
		join(npu[i], T_NPU);
	join(adv, T_ADVISOR);
	join(churn, T_CHURNER);
	join(race, T_RACER);
	join(fork_t, T_FORKER);

	TH_LOG(STRESS_SUMMARY_FMT,
	       now_sec() - t0, S.cpu_writes, S.jobs, S.job_retries,
	       S.prefetches, S.attributes, S.dontneeds, S.side_ops, S.racer_ops,
	       S.children, S.kills);
	if (S.failure[0])
		for (unsigned int i = S.nhistory > 32 ? S.nhistory - 32 : 0;
		     i < S.nhistory; i++)
			TH_LOG("churner %s", S.history[i % 32]);
	ASSERT_EQ(0, S.failure[0]) TH_LOG("%s", S.failure);

	/* Every word of the buffer, on the CPU, then through each NPU. */
	for (uint32_t c = 0; c < NCHUNK; c++) {
		ASSERT_EQ(0, check_chunk("final check", c)) TH_LOG("%s", S.failure);
		total += expect_sum(c);
	}
	for (int i = 0; i < S.nnpu; i++) {
		ASSERT_EQ(0, npu_sum(S.fd[i], S.buf, BUF_PAGES * PAGE, &sum));
		if (sum != total)
			npu_sum_diagnose(_metadata, i);
		ASSERT_EQ(total, sum) TH_LOG("npu%d", i);
	}
	for (uint32_t c = 0; c < NCHUNK; c++)
		ASSERT_EQ(0, check_chunk("final check after the NPUs", c))
			TH_LOG("%s", S.failure);

	ASSERT_EQ(0, pins_settle(&self->base, why, sizeof(why))) TH_LOG("%s", why);

	/* Everything goes: GMEM must be back where it started. */
	ASSERT_EQ(0, munmap(S.region, region_len));
	ASSERT_EQ(0, munmap(S.spare, SIDE_PAGES * PAGE));
	for (int i = 0; i < S.nnpu; i++)
		close(S.fd[i]);
	ASSERT_EQ(0, gm_baseline_wait(&self->base, 30, why, sizeof(why)))
		TH_LOG("after the stress: %s", why);
}

/*
 * The harness takes a test's timeout from its registration; set it from
 * the duration asked for, with room for the final checks and teardown on
 * a slow (debug) kernel.  Runs after the harness's own constructors.
 */
static void __attribute__((constructor)) stress_timeout(void)
{
	_stress_mixed_object->timeout =
		env_ull("GMEM_STRESS_SECONDS", DEFAULT_SECONDS) + 240;
}

TEST_HARNESS_MAIN
