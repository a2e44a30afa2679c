/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the GMEM selftests.
 */
#ifndef GMEM_UTIL_H
#define GMEM_UTIL_H

#include <errno.h>
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

static inline void *mmap_peer_shared(void *addr, size_t len, int extra_flags)
{
	return mmap(addr, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED | extra_flags,
		    -1, 0);
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

/* Writes @v into the file at @path (sysfs): 0, or -1. */
static inline int write_ull(const char *path, unsigned long long v)
{
	FILE *f = fopen(path, "w");
	int ret;

	if (!f)
		return -1;
	ret = fprintf(f, "%llu\n", v) < 0;
	return fclose(f) || ret ? -1 : 0;
}

#endif /* GMEM_UTIL_H */
