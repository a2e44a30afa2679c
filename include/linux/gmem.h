/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GMEM: generalized memory management for external memory devices.
 *
 * Entry points of the GMEM core (implemented in Rust, mm/gmem/) for the C
 * side of the kernel: core-MM hooks, the system call and C drivers.  The
 * Rust side sees the same declarations through bindgen, and the core checks
 * its definitions against them (#[export]), so the two cannot drift apart.
 */
#ifndef _LINUX_GMEM_H
#define _LINUX_GMEM_H

#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/mm_types.h>
#include <linux/mman.h>
#include <uapi/linux/gmem.h>

#ifdef CONFIG_GMEM

/* Called once at boot by the core's initcall. */
int gm_core_init(void);

/* hmadvise(2); @start is already untagged. */
long gm_hmadvise(int hnid, unsigned long start, size_t len, int advice);

/**
 * gm_mmap_check() - check the MAP_PEER_SHARED part of an mmap() request
 * @file: the file being mapped, or NULL for anonymous memory
 * @flags: the mmap() flags
 *
 * A peer-shared range is private anonymous memory: the devices share the
 * process's own pages, not a page cache or a hugetlbfs file.  The VMA flag
 * itself is set by calc_vm_flag_bits().
 *
 * Return: 0 if MAP_PEER_SHARED is not set or is valid, -EINVAL for
 * MAP_PEER_SHARED with a file, with a mapping type other than MAP_PRIVATE
 * or with MAP_HUGETLB.
 */
static inline int gm_mmap_check(struct file *file, unsigned long flags)
{
	if (!(flags & MAP_PEER_SHARED))
		return 0;
	if (file || (flags & MAP_TYPE) != MAP_PRIVATE || (flags & MAP_HUGETLB))
		return -EINVAL;
	return 0;
}

#else /* !CONFIG_GMEM */

static inline int gm_mmap_check(struct file *file, unsigned long flags)
{
	return 0;
}

#endif /* CONFIG_GMEM */

#endif /* _LINUX_GMEM_H */
