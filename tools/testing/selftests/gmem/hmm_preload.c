// SPDX-License-Identifier: GPL-2.0
/*
 * An LD_PRELOAD library that runs the upstream HMM suite
 * (tools/testing/selftests/mm/hmm-tests.c), unmodified, on test_gmem
 * (lib/test_gmem.c, the HMM mirror device on the GMEM driver API):
 *
 * - a private anonymous mmap() gets MAP_PEER_SHARED: that is the memory
 *   GMEM manages and a GMEM device can reach.  Not with MAP_HUGETLB, where
 *   the flag's bit is part of the huge page size;
 * - opening /dev/hmm_dmirror<N> opens /dev/gmem_mirror<N> instead.
 *
 * Only the calls the program makes itself go through here: the C library's
 * own mappings (malloc, thread stacks) stay ordinary memory.  hmm-tests is
 * built without _FILE_OFFSET_BITS=64, so it calls mmap() and open(), not
 * their *64 names.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>

#include <linux/gmem.h>

#define HMM_PREFIX	"/dev/hmm_dmirror"

static const char *mirror_path(const char *path, char *buf, size_t size)
{
	if (strncmp(path, HMM_PREFIX, strlen(HMM_PREFIX)))
		return path;
	snprintf(buf, size, "/dev/gmem_mirror%s", path + strlen(HMM_PREFIX));
	return buf;
}

static int peer_shared_flags(int flags)
{
	if ((flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
	    !(flags & MAP_HUGETLB))
		flags |= MAP_PEER_SHARED;
	return flags;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real_mmap)(void *, size_t, int, int, int, off_t);

	if (!real_mmap)
		real_mmap = dlsym(RTLD_NEXT, "mmap");
	return real_mmap(addr, len, prot, peer_shared_flags(flags), fd, off);
}

/* The mode argument is there only with O_CREAT or O_TMPFILE. */
static mode_t open_mode(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ?
	       va_arg(ap, mode_t) : 0;
}

int openat(int dirfd, const char *path, int flags, ...)
{
	static int (*real_openat)(int, const char *, int, ...);
	char buf[64];
	va_list ap;
	mode_t mode;

	if (!real_openat)
		real_openat = dlsym(RTLD_NEXT, "openat");
	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return real_openat(dirfd, mirror_path(path, buf, sizeof(buf)), flags,
			   mode);
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return openat(AT_FDCWD, path, flags, mode);
}
