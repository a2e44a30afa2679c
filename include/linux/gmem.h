/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GMEM: generalized memory management for external memory devices.
 *
 * Entry points of the GMEM core (implemented in Rust, mm/gmem/) for the C
 * side of the kernel: core-MM hooks, the system call and C drivers.  The
 * Rust side sees the same declarations through bindgen, and the core checks
 * its definitions against them (#[export]), so the two cannot drift apart.
 *
 * Every hook is a static inline that tests the gm_enabled_key static key
 * first: until some process maps MAP_PEER_SHARED memory the key is off and a
 * hook costs one no-op jump.  Without CONFIG_GMEM the hooks compile away.
 */
#ifndef _LINUX_GMEM_H
#define _LINUX_GMEM_H

#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/jump_label.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <uapi/linux/gmem.h>

struct gm_as;

#ifdef CONFIG_GMEM

/* On once a process has used GMEM; never turned off again. */
DECLARE_STATIC_KEY_FALSE(gm_enabled_key);

/* mm/gmem/glue.c */
void gm_enable(void);

/* The core (Rust). */
int gm_core_init(void);
long gm_hmadvise(int hnid, unsigned long start, size_t len, int advice);
int gm_as_prepare(struct mm_struct *mm);
int gm_as_fork(struct mm_struct *oldmm, struct mm_struct *mm);
void gm_as_exit(struct mm_struct *mm);
int gm_as_mremap(struct mm_struct *mm, unsigned long old_addr,
		 unsigned long new_addr, unsigned long len);
vm_fault_t gm_cpu_fault_begin(struct mm_struct *mm, unsigned long addr,
			      struct page *page);
void gm_cpu_fault_end(struct mm_struct *mm, unsigned long addr,
		      bool installed);

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

/**
 * gm_mmap_prepare() - give the caller's mm a GMEM address space for mmap()
 * @flags: the mmap() flags
 *
 * Called by mmap() before it takes the mmap lock: registering the address
 * space's MMU notifier takes that lock itself.  A request that mmap() would
 * refuse (see gm_mmap_check()) creates nothing.
 *
 * Return: 0, -EINVAL for an invalid MAP_PEER_SHARED request, or -ENOMEM.
 */
static inline int gm_mmap_prepare(unsigned long flags)
{
	if (!(flags & MAP_PEER_SHARED))
		return 0;
	if (!(flags & MAP_ANONYMOUS) || gm_mmap_check(NULL, flags))
		return -EINVAL;
	return gm_as_prepare(current->mm);
}

/* Whether @mm has a GMEM address space. */
static inline bool gm_mm_active(struct mm_struct *mm)
{
	return static_branch_unlikely(&gm_enabled_key) && READ_ONCE(mm->gm_as);
}

/* Whether faults in @vma go through GMEM. */
static inline bool gm_vma_peer_shared(struct vm_area_struct *vma)
{
	return static_branch_unlikely(&gm_enabled_key) &&
	       (vma->vm_flags & VM_PEER_SHARED);
}

static inline void gm_mm_init(struct mm_struct *mm)
{
	mm->gm_as = NULL;
}

/**
 * gm_mm_fork() - prepare the GMEM side of fork
 * @oldmm: the parent's mm, write-locked
 * @mm: the child's mm, write-locked, no VMA copied yet
 *
 * Brings the parent's device-resident pages back to host memory (fork copies
 * only what the CPU page tables map) and gives the child an empty address
 * space, attached to no device.
 *
 * Return: 0, or -ENOMEM.
 */
static inline int gm_mm_fork(struct mm_struct *oldmm, struct mm_struct *mm)
{
	if (!gm_mm_active(oldmm))
		return 0;
	return gm_as_fork(oldmm, mm);
}

/* Frees @mm's GMEM address space; called once, after exit_mmap(). */
static inline void gm_mm_exit(struct mm_struct *mm)
{
	if (gm_mm_active(mm))
		gm_as_exit(mm);
}

/**
 * gm_mremap() - move GMEM's mappings of a range that mremap() moves
 * @vma: the VMA being moved, mmap lock held for writing
 * @old_addr: start of the range
 * @new_addr: where it goes
 * @len: its length
 *
 * Must run before the page tables move: moving them notifies an unmap of
 * the old range, which would otherwise free the range's device pages.
 *
 * Return: 0, or -ENOMEM (nothing moved).
 */
static inline int gm_mremap(struct vm_area_struct *vma, unsigned long old_addr,
			    unsigned long new_addr, unsigned long len)
{
	if (!gm_vma_peer_shared(vma))
		return 0;
	return gm_as_mremap(vma->vm_mm, old_addr, new_addr, len);
}

#else /* !CONFIG_GMEM */

static inline int gm_mmap_check(struct file *file, unsigned long flags)
{
	return 0;
}

static inline int gm_mmap_prepare(unsigned long flags)
{
	return 0;
}

static inline bool gm_vma_peer_shared(struct vm_area_struct *vma)
{
	return false;
}

static inline void gm_mm_init(struct mm_struct *mm)
{
}

static inline int gm_mm_fork(struct mm_struct *oldmm, struct mm_struct *mm)
{
	return 0;
}

static inline void gm_mm_exit(struct mm_struct *mm)
{
}

static inline int gm_mremap(struct vm_area_struct *vma, unsigned long old_addr,
			    unsigned long new_addr, unsigned long len)
{
	return 0;
}

static inline vm_fault_t gm_cpu_fault_begin(struct mm_struct *mm,
					    unsigned long addr,
					    struct page *page)
{
	return 0;
}

static inline void gm_cpu_fault_end(struct mm_struct *mm, unsigned long addr,
				    bool installed)
{
}

#endif /* CONFIG_GMEM */

#endif /* _LINUX_GMEM_H */
