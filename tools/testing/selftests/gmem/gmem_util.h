/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the GMEM selftests.
 */
#ifndef GMEM_UTIL_H
#define GMEM_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/gmem.h>

static inline long hmadvise(int hnid, unsigned long start, size_t len,
			    int advice)
{
	return syscall(__NR_hmadvise, hnid, start, len, advice);
}

/* The errno of a failed hmadvise(), 0 if it succeeded. */
static inline int hmadvise_err(int hnid, const void *p, size_t len, int advice)
{
	return hmadvise(hnid, (unsigned long)p, len, advice) ? errno : 0;
}

static inline void *mmap_peer_shared(void *addr, size_t len, int extra_flags)
{
	return mmap(addr, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED | extra_flags,
		    -1, 0);
}

/*
 * @len bytes of fresh memory, peer-shared if @peer, between two PROT_NONE
 * fences of @fence bytes of ordinary memory, with which it never merges:
 * its address, or NULL.  munmap_fenced() takes it all back.
 */
static inline char *mmap_fenced(size_t len, size_t fence, int peer)
{
	char *p = mmap(NULL, len + 2 * fence, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	p += fence;
	if (mmap(p, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
		 (peer ? MAP_PEER_SHARED : 0), -1, 0) != p)
		return NULL;
	return p;
}

static inline int munmap_fenced(void *p, size_t len, size_t fence)
{
	return munmap((char *)p - fence, len + 2 * fence);
}

/*
 * Copy the VmFlags line of the VMA that starts at @addr from
 * /proc/self/smaps into @flags.  Returns 0, or -1 if there is no such VMA.
 */
static inline int vma_flags(void *addr, char *flags, size_t size)
{
	unsigned long start, end;
	char line[512];
	int found = 0;
	FILE *f;

	f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			found = start == (unsigned long)addr;
			continue;
		}
		if (found && !strncmp(line, "VmFlags:", 8)) {
			snprintf(flags, size, "%s", line + 8);
			fclose(f);
			return 0;
		}
	}
	fclose(f);
	return -1;
}

/* Whether the VMA starting at @addr has the VmFlags mnemonic @flag. */
static inline int vma_has_flag(void *addr, const char *flag)
{
	char flags[512], *tok, *save;

	if (vma_flags(addr, flags, sizeof(flags)))
		return -1;
	for (tok = strtok_r(flags, "\n ", &save); tok;
	     tok = strtok_r(NULL, "\n ", &save))
		if (!strcmp(tok, flag))
			return 1;
	return 0;
}

/* Waits for @pid: its exit code, 128 + the signal that killed it, or -1. */
static inline int wait_child(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		return -1;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* One byte over a pipe or socket: a step of a two-process handshake. */
static inline int sync_send(int fd)
{
	return write(fd, "s", 1) == 1 ? 0 : -1;
}

static inline int sync_wait(int fd)
{
	char c;

	return read(fd, &c, 1) == 1 ? 0 : -1;
}

/* Fill @len bytes at @p with a pattern derived from @seed and the offset. */
static inline void fill_pattern(void *p, size_t len, unsigned long seed)
{
	unsigned long *w = p;
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		w[i] = seed ^ (i * 0x9e3779b97f4a7c15UL);
}

/*
 * Check the bytes [off, off + len) of a buffer that fill_pattern() filled
 * from @base.  Returns the index of the first word that differs, or -1.
 */
static inline long check_pattern_at(const void *base, size_t off, size_t len,
				    unsigned long seed)
{
	const unsigned long *w = base;
	size_t i;

	for (i = off / sizeof(*w); i < (off + len) / sizeof(*w); i++)
		if (w[i] != (seed ^ (i * 0x9e3779b97f4a7c15UL)))
			return i;
	return -1;
}

/* Returns the index of the first word that differs, or -1. */
static inline long check_pattern(const void *p, size_t len, unsigned long seed)
{
	return check_pattern_at(p, 0, len, seed);
}

#define GMEM_DEBUGFS "/sys/kernel/debug/gmem/"

/* A number from a file under /sys/kernel/debug/gmem/, or -1. */
static inline long gmem_stat(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), GMEM_DEBUGFS "%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* Pages tracked by every GMEM logical page table together. */
static inline long tracked_pages(void)
{
	return gmem_stat("tracked_pages");
}

/* Touch (write one byte of) each page of [p, p + len). */
static inline void touch_pages(char *p, size_t len, size_t page)
{
	for (size_t off = 0; off < len; off += page)
		p[off] = 1;
}

/* Reads a number from the file at @path (sysfs): 0, or -1. */
static inline int read_ull(const char *path, unsigned long long *v)
{
	FILE *f = fopen(path, "r");
	int ret;

	if (!f)
		return -1;
	ret = fscanf(f, "%llu", v) != 1;
	return fclose(f) || ret ? -1 : 0;
}

/*
 * Writes @v into the file at @path (sysfs) in one write(): 0, or -1 with
 * errno set to what open() or the file's store refused it with.
 */
static inline int write_ull(const char *path, unsigned long long v)
{
	char buf[32];
	int fd, len, err = 0;
	ssize_t n;

	len = snprintf(buf, sizeof(buf), "%llu\n", v);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = write(fd, buf, len);
	if (n != len)
		err = n < 0 ? errno : EIO;
	close(fd);
	errno = err;
	return err ? -1 : 0;
}

/* Host NUMA nodes 0 .. online_host_nodes() - 1 are online (node 0 always). */
static inline int online_host_nodes(void)
{
	char path[64];
	int n;

	for (n = 0;; n++) {
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", n);
		if (access(path, F_OK))
			break;
	}
	return n ? n : 1;
}

#define NOBODY		65534

/* Drop to nobody for good: 0, or -1 if root's rights are still there. */
static inline int become_nobody(void)
{
	if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY))
		return -1;
	if (getuid() != NOBODY || geteuid() != NOBODY || !setuid(0))
		return -1;
	return 0;
}

/*
 * /proc/<pid>/gmem_maps (Documentation/mm/gmem.rst): one line per piece of
 * a peer-shared VMA whose range attributes are uniform, in address order:
 *
 *   <start>-<end> preferred=<node|none> accessed_by=<node[,node]...|none>
 *	read_mostly=<0|1> pinned=<node|none>[ N<node>=<pages>]...
 *
 * on one line, the addresses %08lx, then the pages each node holds (a page
 * of a read-mostly piece counts once for each node that holds a copy).
 */

#define GM_MAPS_NODES	8	/* N<node>= fields of a line kept by the parser */

struct gm_maps_line {
	unsigned long start, end;	/* end exclusive */
	int preferred;			/* a node, or -1: none */
	int pinned;			/* a device node, or -1: none */
	unsigned long long accessed_by;	/* bit (node - first node) per device */
	int accessed_first;		/* the first node of accessed_by, or -1 */
	int read_mostly;		/* 0 or 1 */
	int nnodes;
	int node[GM_MAPS_NODES];	/* increasing */
	unsigned long pages[GM_MAPS_NODES];	/* each non-zero */
};

/*
 * Reads /proc/<pid>/gmem_maps (@pid 0: this process's) into @buf, NUL
 * terminated: its length, or -1 with errno set (ENOSPC: it does not fit).
 * Only system calls: a child forked from threads may use it.
 */
static inline long gm_maps_text(pid_t pid, char *buf, size_t size)
{
	char path[64] = "/proc/self/gmem_maps";
	size_t len = 0;
	int fd, err = 0;

	if (size)
		buf[0] = '\0';
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/gmem_maps", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n;

		if (len + 1 >= size) {
			err = ENOSPC;
			break;
		}
		n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			break;
		}
		if (!n)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';
	errno = err;
	return err ? -1 : (long)len;
}

/* Skips @lit at *@s: 0, or -1 if *@s does not start with it. */
static inline int gm_maps_lit(const char **s, const char *lit)
{
	size_t n = strlen(lit);

	if (strncmp(*s, lit, n))
		return -1;
	*s += n;
	return 0;
}

/*
 * A number at *@s printed as the kernel prints it: hex with at least 8
 * digits (%08lx) or decimal (%lu), no sign, no 0x, no extra leading zero.
 * 0 and *@s past it, or -1.
 */
static inline int gm_maps_num(const char **s, int hex, unsigned long *v)
{
	int digit = **s >= '0' && **s <= '9';
	char again[24];
	char *end;
	int n;

	if (!digit && !(hex && **s >= 'a' && **s <= 'f'))
		return -1;
	errno = 0;
	*v = strtoul(*s, &end, hex ? 16 : 10);
	if (errno)
		return -1;
	n = snprintf(again, sizeof(again), hex ? "%08lx" : "%lu", *v);
	if (end - *s != n || strncmp(*s, again, n))
		return -1;
	*s = end;
	return 0;
}

/* "none" (-1) or a node number at *@s: 0 and *@s past it, or -1. */
static inline int gm_maps_node(const char **s, int *node)
{
	unsigned long v;

	if (!gm_maps_lit(s, "none")) {
		*node = -1;
		return 0;
	}
	if (gm_maps_num(s, 0, &v) || v > INT_MAX)
		return -1;
	*node = v;
	return 0;
}

/*
 * "none" or increasing device nodes with commas at *@s, into @l: 0 and *@s
 * past them, or -1.  The bits of @l->accessed_by count from the first node.
 */
static inline int gm_maps_devices(const char **s, struct gm_maps_line *l)
{
	unsigned long v, prev = 0;

	l->accessed_first = -1;
	if (!gm_maps_lit(s, "none"))
		return 0;
	do {
		if (gm_maps_num(s, 0, &v) || v > INT_MAX)
			return -1;
		if (l->accessed_first < 0)
			l->accessed_first = v;
		else if (v <= prev)
			return -1;
		if (v - l->accessed_first >= 64)
			return -1;
		l->accessed_by |= 1ULL << (v - l->accessed_first);
		prev = v;
	} while (!gm_maps_lit(s, ","));
	return 0;
}

/* Whether device node @node is in the accessed_by list of @l. */
static inline int gm_maps_accessed_by(const struct gm_maps_line *l, int node)
{
	return l->accessed_first >= 0 && node >= l->accessed_first &&
	       node - l->accessed_first < 64 &&
	       (l->accessed_by >> (node - l->accessed_first)) & 1;
}

/* Parses the line at @s (up to its '\n') into @l: 0, or -1. */
static inline int gm_maps_parse_line(const char *s, struct gm_maps_line *l)
{
	memset(l, 0, sizeof(*l));
	if (gm_maps_num(&s, 1, &l->start) || gm_maps_lit(&s, "-") ||
	    gm_maps_num(&s, 1, &l->end) || gm_maps_lit(&s, " preferred=") ||
	    gm_maps_node(&s, &l->preferred) ||
	    gm_maps_lit(&s, " accessed_by=") || gm_maps_devices(&s, l) ||
	    gm_maps_lit(&s, " read_mostly="))
		return -1;
	if (*s != '0' && *s != '1')
		return -1;
	l->read_mostly = *s++ == '1';
	if (gm_maps_lit(&s, " pinned=") || gm_maps_node(&s, &l->pinned))
		return -1;
	while (!gm_maps_lit(&s, " N")) {
		unsigned long node, pages;

		if (gm_maps_num(&s, 0, &node) || gm_maps_lit(&s, "=") ||
		    gm_maps_num(&s, 0, &pages) || !pages || node > INT_MAX)
			return -1;
		if (l->nnodes && (int)node <= l->node[l->nnodes - 1])
			return -1;
		if (l->nnodes == GM_MAPS_NODES)
			return -1;
		l->node[l->nnodes] = node;
		l->pages[l->nnodes++] = pages;
	}
	return *s == '\n' ? 0 : -1;
}

/*
 * Parses gmem_maps text (gm_maps_text()) and keeps its first @max lines in
 * @lines (which may be NULL with @max 0).  Besides the format it checks
 * what the file promises: pieces page aligned (@page), not empty, in
 * increasing address order without overlap, and no more pages on a node
 * than the piece has, nor on all nodes together unless it is read-mostly.
 * Returns the number of lines, or -1 - the index of the first wrong one.
 */
static inline int gm_maps_parse(const char *text, struct gm_maps_line *lines,
				int max, size_t page)
{
	unsigned long prev_end = 0;
	struct gm_maps_line l;
	int n = 0;

	for (const char *s = text; *s; n++) {
		const char *nl = strchr(s, '\n');
		unsigned long total = 0;

		if (!nl || gm_maps_parse_line(s, &l))
			return -1 - n;
		for (int i = 0; i < l.nnodes; i++) {
			if (l.pages[i] > (l.end - l.start) / page)
				return -1 - n;
			total += l.pages[i];
		}
		if (l.start >= l.end || l.start % page || l.end % page ||
		    l.start < prev_end ||
		    (!l.read_mostly && total > (l.end - l.start) / page))
			return -1 - n;
		prev_end = l.end;
		if (n < max)
			lines[n] = l;
		s = nl + 1;
	}
	return n;
}

#endif /* GMEM_UTIL_H */
