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

#include <linux/err.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/jump_label.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/mman.h>
#include <linux/sched.h>
#include <uapi/linux/gmem.h>

struct gm_as;
struct seq_file;

/*
 * The device side of GMEM (see Documentation/mm/gmem.rst, "Writing a
 * driver").  A driver describes its hardware's MMU with a struct gm_mmu,
 * creates a struct gm_dev at probe time, hands the device's memory to GMEM
 * with gm_dev_register_physmem() and attaches the device to a process's
 * address space (a struct gm_context) when the process asks for it.  From
 * then on GMEM decides where each page of the process's MAP_PEER_SHARED
 * ranges lives and calls the gm_mmu operations to move and map it.
 */
struct gm_dev;
struct gm_context;

/* What a device access needs (gm_dev_fault()). */
#define GM_ACCESS_READ		(1U << 0)
#define GM_ACCESS_WRITE		(1U << 1)

/* Rights of a device mapping (pmap_enter, pmap_protect). */
#define GM_PROT_READ		(1U << 0)
#define GM_PROT_WRITE		(1U << 1)

/* The device raises translation faults (it calls gm_dev_fault() on a miss). */
#define GM_DEV_CAP_FAULT	(1U << 0)

/**
 * struct gm_fault - one device translation fault, for gm_dev_fault_batch()
 * @va: the faulting virtual address (any byte of the page)
 * @access: GM_ACCESS_* the faulting access needs
 * @status: set by GMEM: 0 once the page is mapped on the device, or a
 *	negative errno (those of gm_dev_fault_range())
 */
struct gm_fault {
	unsigned long va;
	unsigned int access;
	int status;
};

/* Most faults one gm_dev_fault_batch() takes. */
#define GM_FAULT_BATCH_MAX	1024

/* A range of device virtual addresses, for tlb_invl_coalesced. */
struct gm_va_range {
	unsigned long start;
	unsigned long len;
};

/*
 * One page of a batched move (peer_map, peer_unmap): device page @pfn and
 * host page @page, which is the source of peer_map (NULL: zero-fill) and the
 * destination of peer_unmap (NULL: no copy).  Entry i of a batch is for
 * virtual address va + i * PAGE_SIZE.
 */
struct gm_move {
	u64 pfn;
	struct page *page;
};

/**
 * struct gm_mmu - the hardware-specific MMU operations of a device
 *
 * GMEM calls these with no spinlock held; they may sleep, and GMEM may call
 * them concurrently, also for one context.  @pmap is what
 * pmap_create() returned for the context the call is about.  Device memory
 * is addressed by page frame number within the device (@pfn: byte offset in
 * the registered physical memory divided by PAGE_SIZE, plus base / PAGE_SIZE).
 *
 * VA - agree on the virtual addresses device and host share:
 * @peer_va_alloc_fixed: reserve [@va, @va + @len) in the device's address
 *	space for @pmap; called once when a context is attached, for the
 *	process's whole user address range.  A device with fewer address bits
 *	reserves the part it can address; -ERANGE if it can address none of
 *	it.  Optional.
 * @peer_va_free: give back what peer_va_alloc_fixed() reserved; called when
 *	the context goes.  Optional.
 *
 * PA - device memory:
 * @alloc_page: allocate one device page into *@pfn.  Optional: without it
 *	GMEM allocates from the memory given to gm_dev_register_physmem().
 * @free_page: free a page from alloc_page().  Required with alloc_page.
 * @prepare_page: fill device page @pfn with the contents of host page @src,
 *	or with zeroes if @src is NULL.  Required.  GMEM never maps a device
 *	page that was not prepared, so a process never sees another's data.
 * @copy_to_host: copy device page @pfn into host page @dst.  Required.
 *
 * Page table:
 * @pmap_create: create an empty device page table for a new context and
 *	store it in *@pmap.  Required.
 * @pmap_destroy: free a page table; it maps nothing any more.  Required.
 * @pmap_enter: map @va to device page @pfn with rights @prot (GM_PROT_*),
 *	replacing any mapping of @va.  Required.  -EFAULT for an address the
 *	device cannot reach (beyond its address bits): the device fault fails
 *	with it, as for an address outside the process's mappings.
 * @pmap_release: remove the mappings of [@va, @va + @len).  Required.  The
 *	device TLB is invalidated separately.
 * @pmap_protect: change the rights of the mappings of [@va, @va + @len).
 *	Optional.
 * @pmap_clear_young: test and clear the accessed bit of the mapping of @va;
 *	true if the device used the page since the last call (or since
 *	pmap_enter()).  Eviction asks it before it takes a page, so pages the
 *	device keeps using stay; the device must set the bit again on its next
 *	use (drop a cached translation if the hardware only sets it on a TLB
 *	fill).  Optional: without it only GMEM's own record (device faults,
 *	new mappings) protects a page.
 * @pmap_enter_host: map @va to host page @page with rights @prot, replacing
 *	any mapping of @va, for a device that reaches host memory in place
 *	(hmadvise()'s MADV_ACCESSED_BY).  The device must not keep a reference
 *	to @page beyond the mapping: GMEM removes it (@pmap_release and
 *	@tlb_invl) before the CPU page table stops mapping the page.  Called
 *	under the lock with which MMU notifier invalidations remove in-place
 *	mappings, so that no mapping of a page the CPU has replaced is ever
 *	made: it must not allocate memory that may reclaim.
 *	Optional: a device without it always gets the pages migrated.
 *
 * TLB:
 * @tlb_invl: invalidate the device TLB for [@va, @va + @len); when it
 *	returns, the device no longer uses a stale translation.  Required.
 * @tlb_invl_coalesced: the same for @nr ranges at once.  Optional (GMEM
 *	calls tlb_invl() for each range).
 *
 * Wrappers, for drivers that can move a whole batch in one device operation
 * (a DMA descriptor list, one page-table update, one TLB invalidation).
 * GMEM moves up to 2 MiB (512 pages) at a time, always a run of consecutive
 * virtual pages starting at @va, ``moves[i]`` for @va + i * PAGE_SIZE.
 * Without the wrappers GMEM composes the basic operations: prepare_page()
 * and pmap_enter() per page, or one pmap_release() and one tlb_invl() for
 * the run and copy_to_host() per page.
 * @peer_map: fill each device page ``moves[i].pfn`` (which GMEM allocated)
 *	from ``moves[i].page``, or zero it if that is NULL, and map it with
 *	@prot.  On an error some pages may be mapped: GMEM removes the whole
 *	run's mappings (pmap_release, tlb_invl) and frees the pages.  Optional.
 * @peer_unmap: remove the run's mappings, invalidate the TLB for the run
 *	once, then copy each ``moves[i].pfn`` into ``moves[i].page`` (if not
 *	NULL).
 *	GMEM frees the device pages afterwards.  On an error the mappings are
 *	gone and GMEM keeps the device pages.  Optional.
 *
 * @release: the last reference to the device is gone: free @priv.  Optional.
 */
struct gm_mmu {
	int (*peer_va_alloc_fixed)(struct gm_dev *dev, void *pmap,
				   unsigned long va, unsigned long len);
	void (*peer_va_free)(struct gm_dev *dev, void *pmap, unsigned long va,
			     unsigned long len);

	int (*alloc_page)(struct gm_dev *dev, u64 *pfn);
	void (*free_page)(struct gm_dev *dev, u64 pfn);
	int (*prepare_page)(struct gm_dev *dev, u64 pfn, struct page *src);
	int (*copy_to_host)(struct gm_dev *dev, u64 pfn, struct page *dst);

	int (*pmap_create)(struct gm_dev *dev, void **pmap);
	void (*pmap_destroy)(struct gm_dev *dev, void *pmap);
	int (*pmap_enter)(struct gm_dev *dev, void *pmap, unsigned long va,
			  u64 pfn, unsigned int prot);
	void (*pmap_release)(struct gm_dev *dev, void *pmap, unsigned long va,
			     unsigned long len);
	int (*pmap_protect)(struct gm_dev *dev, void *pmap, unsigned long va,
			    unsigned long len, unsigned int prot);
	bool (*pmap_clear_young)(struct gm_dev *dev, void *pmap,
				 unsigned long va);
	int (*pmap_enter_host)(struct gm_dev *dev, void *pmap, unsigned long va,
			       struct page *page, unsigned int prot);

	void (*tlb_invl)(struct gm_dev *dev, void *pmap, unsigned long va,
			 unsigned long len);
	void (*tlb_invl_coalesced)(struct gm_dev *dev, void *pmap,
				   const struct gm_va_range *ranges,
				   unsigned int nr);

	int (*peer_map)(struct gm_dev *dev, void *pmap, unsigned long va,
			const struct gm_move *moves, unsigned int nr,
			unsigned int prot);
	int (*peer_unmap)(struct gm_dev *dev, void *pmap, unsigned long va,
			  const struct gm_move *moves, unsigned int nr);

	void (*release)(struct gm_dev *dev);
};

/**
 * struct gm_dev_stats - what GMEM did with a device's memory
 * @faults: pages device faults asked for (gm_dev_fault(),
 *	gm_dev_fault_batch(), gm_dev_fault_range())
 * @fault_batches: gm_dev_fault_batch() calls (gm_dev_fault() is one)
 * @prefetched: pages a batch moved beyond those that faulted (density
 *	prefetch)
 * @zero_fills: pages zero-filled on the device (first touch)
 * @migrations_to_dev: pages copied to the device (from the host or a peer)
 * @migrations_to_host: pages copied from the device to the host
 * @evictions: pages moved out to make room
 * @resident_pages: device pages in use now
 * @dram_pages: device pages GMEM manages
 * @limit_pages: how many of them GMEM may use (sysfs limit)
 * @reserve_low_pages: free pages (within the limit) below which GMEM
 *	evicts in the background
 * @reserve_high_pages: free pages at which the background eviction stops
 * @pinned_pages: pages every process pinned on the device (hmadvise()'s
 *	MADV_PIN); never more than @limit_pages
 */
struct gm_dev_stats {
	u64 faults;
	u64 fault_batches;
	u64 prefetched;
	u64 zero_fills;
	u64 migrations_to_dev;
	u64 migrations_to_host;
	u64 evictions;
	u64 resident_pages;
	u64 dram_pages;
	u64 limit_pages;
	u64 reserve_low_pages;
	u64 reserve_high_pages;
	u64 pinned_pages;
};

#ifdef CONFIG_GMEM

/**
 * gm_dev_create() - register a device with GMEM
 * @mmu: the device's MMU operations; must outlive the device
 * @priv: the driver's data, given back by gm_dev_priv()
 * @caps: GM_DEV_CAP_* of the device
 * @name: the device's name (shown in sysfs), copied
 *
 * Return: the device, or an ERR_PTR(): -EINVAL for operations that are
 * missing or do not go together, -ENOSPC when 64 devices exist, -ENOMEM.
 */
struct gm_dev *gm_dev_create(const struct gm_mmu *mmu, void *priv,
			     unsigned int caps, const char *name);

/**
 * gm_dev_destroy() - unregister a device
 * @dev: a device from gm_dev_create()
 *
 * Removes the device's sysfs directory and drops the driver's reference.
 * Attached contexts keep the device, and its @priv, until they go.
 */
void gm_dev_destroy(struct gm_dev *dev);

/**
 * gm_dev_register_physmem() - hand the device's memory to GMEM
 * @dev: the device
 * @base: device address of the memory, page aligned
 * @size: its size in bytes, page aligned, not zero
 *
 * GMEM then allocates device pages from it (a buddy allocator), evicts
 * when it is full and shows it in sysfs.
 *
 * Return: 0, -EINVAL for an unaligned or empty range, -EBUSY the second
 * time, -ENOMEM.
 */
int gm_dev_register_physmem(struct gm_dev *dev, u64 base, u64 size);

/**
 * gm_dev_priv() - the driver data of a device
 * @dev: the device
 *
 * Return: what gm_dev_create() was given as @priv.
 */
void *gm_dev_priv(const struct gm_dev *dev);

/**
 * gm_dev_hnid() - the node id of a device
 * @dev: the device
 *
 * Return: the heterogeneous node id that hmadvise() takes for the device.
 */
int gm_dev_hnid(const struct gm_dev *dev);

/**
 * gm_dev_get_stats() - read a device's counters
 * @dev: the device
 * @stats: filled with the counters and the memory figures
 */
void gm_dev_get_stats(const struct gm_dev *dev, struct gm_dev_stats *stats);

/**
 * gm_dev_name() - the name of a device
 * @dev: the device
 *
 * Return: the name gm_dev_create() copied, valid as long as @dev.
 */
const char *gm_dev_name(const struct gm_dev *dev);

/**
 * gm_dev_caps() - the capabilities of a device
 * @dev: the device
 *
 * Return: the GM_DEV_CAP_* flags gm_dev_create() was given.
 */
unsigned int gm_dev_caps(const struct gm_dev *dev);

/**
 * gm_dev_set_limit() - cap how much of a device's memory GMEM uses
 * @dev: the device
 * @bytes: the new limit (the sysfs limit file); more than the device has
 *	means all of it.  Pages above a lowered limit are evicted as the
 *	device allocates.  Not exported.
 *
 * Return: 0, -ENODEV if GMEM does not manage the device's memory, or
 * -EBUSY if @bytes is below what processes pinned there (MADV_PIN).
 */
int gm_dev_set_limit(struct gm_dev *dev, u64 bytes);

/**
 * gm_as_create() - the calling process's GMEM address space
 *
 * Creates it if the process has none, as its first MAP_PEER_SHARED
 * mapping would.  Not reference counted: use it in the same system call,
 * with none of the process's mm locks held.
 *
 * Return: the address space, or an ERR_PTR(): -EINVAL from a kernel
 * thread, -ENOMEM.
 */
struct gm_as *gm_as_create(void);

/**
 * gm_as_attach() - attach a device to an address space
 * @as: from gm_as_create()
 * @dev: the device
 *
 * Creates the device's page table for the process (pmap_create) and
 * reserves its address range on the device (peer_va_alloc_fixed).
 *
 * Return: the context, or an ERR_PTR(): -EEXIST if @dev is attached to
 * that process already, -ENOMEM, or what pmap_create or
 * peer_va_alloc_fixed returned.
 */
struct gm_context *gm_as_attach(struct gm_as *as, struct gm_dev *dev);

/**
 * gm_context_detach() - detach a device and drop the driver's reference
 * @ctx: from gm_as_attach(), not detached yet
 *
 * If the process still runs, the device's pages are brought home first
 * (no page of the context is evicted from then on), so the process keeps
 * its data; what cannot come home is freed with the device.  May sleep.
 */
void gm_context_detach(struct gm_context *ctx);

/**
 * gm_context_pmap() - the device page table of a context
 * @ctx: the context
 *
 * Return: what the device's pmap_create made for the context.
 */
void *gm_context_pmap(const struct gm_context *ctx);

/**
 * gm_context_hold() - keep eviction away from a range while a job runs
 * @ctx: the context
 * @start: start of the range
 * @len: its length in bytes
 *
 * Until the matching gm_context_unhold(), eviction takes no page of the
 * context in [@start, @start + @len).  Holds nest.  Only eviction is kept
 * away: the CPU, another device, munmap and MADV_DONTNEED still take held
 * pages.
 *
 * Return: 0 or -ENOMEM.
 */
int gm_context_hold(struct gm_context *ctx, unsigned long start,
		    unsigned long len);

/**
 * gm_context_unhold() - end a hold
 * @ctx: the context
 * @start: the start the hold was taken with
 * @len: the length the hold was taken with
 *
 * Ends one gm_context_hold() of exactly that range.
 */
void gm_context_unhold(struct gm_context *ctx, unsigned long start,
		       unsigned long len);

/**
 * gm_dev_fault_range() - make a range device-resident and mapped there
 * @ctx: the context whose device needs the range
 * @start: start of the range, page aligned
 * @len: its length, a multiple of PAGE_SIZE, not zero
 * @access: GM_ACCESS_* the device needs
 *
 * Moves the pages from host memory, another device or a parked page (or
 * zero-fills them), 2 MiB at a time, and maps them on the device.  May
 * sleep; takes the process's mmap lock for reading.
 *
 * Return: 0, -EINVAL for an unaligned or empty range or unknown @access
 * bits, -EFAULT for an address outside the process's peer-shared mappings
 * or without the rights @access asks for, -ESRCH once the process is gone,
 * -ENOMEM when the device is full, -ERESTARTSYS on a signal after some
 * progress.  Pages before the failing one stay done.
 */
int gm_dev_fault_range(struct gm_context *ctx, unsigned long start,
		       unsigned long len, unsigned int access);

/**
 * gm_dev_fault_batch() - serve the translation faults a device reported
 * @ctx: the context whose device faulted
 * @faults: the faults, in any order; several may be for one page
 * @nr: how many, 1 to GM_FAULT_BATCH_MAX
 *
 * What a driver calls with the contents of its device's fault buffer,
 * before it lets the faulting engines replay.  The faults are sorted by
 * address and merged per page, and each 2 MiB block is served with one
 * migration (see gm_dev_fault_range()).  Density prefetch widens it: each
 * faulting page brings along the largest naturally aligned sub-block of
 * 64 KiB up to 2 MiB around it of which more than the device node's
 * prefetch_threshold percent (sysfs, 0 turns it off) is resident on the
 * device or faulting in this batch, clipped to the page's VMA and to the
 * device's free memory.  A page prefetched this way that cannot move is
 * left where it is.  May sleep; takes the mmap lock for reading once.
 *
 * Return: 0 if every fault was served; otherwise the error of the first
 * fault, in address order, that was not, and each fault's @status says
 * its own.  -EINVAL (and no @status written) for @nr out of range.
 */
int gm_dev_fault_batch(struct gm_context *ctx, struct gm_fault *faults,
		       unsigned int nr);

/**
 * gm_dev_fault() - serve one device translation fault
 * @ctx: the context whose device faulted
 * @va: the faulting virtual address
 * @access: GM_ACCESS_*
 *
 * A batch of one: see gm_dev_fault_batch().
 *
 * Return: 0 once @va is mapped on the device, or a negative errno.
 */
static inline int gm_dev_fault(struct gm_context *ctx, unsigned long va,
			       unsigned int access)
{
	struct gm_fault fault = { .va = va, .access = access };

	return gm_dev_fault_batch(ctx, &fault, 1);
}

#else /* !CONFIG_GMEM */

static inline struct gm_dev *gm_dev_create(const struct gm_mmu *mmu,
					   void *priv, unsigned int caps,
					   const char *name)
{
	return ERR_PTR(-EOPNOTSUPP);
}

#endif /* CONFIG_GMEM */

#ifdef CONFIG_GMEM

/* On once a process has used GMEM; never turned off again. */
DECLARE_STATIC_KEY_FALSE(gm_enabled_key);

/* mm/gmem/glue.c */
void gm_enable(void);
void *gm_sysfs_add_node(struct gm_dev *dev, int hnid);
void gm_sysfs_remove_node(void *node);

/* mm/memory.c */
int gm_map_anon_folios(struct vm_area_struct *vma, unsigned long addr,
		       struct folio **folios, unsigned int nr,
		       bool (*commit)(void *arg, unsigned int i), void *arg);

/* mm/mprotect.c */
long gm_wrprotect_range(struct vm_area_struct *vma, unsigned long start,
			unsigned long end);

/* The core (Rust). */
int gm_core_init(void);

/**
 * gm_hmadvise() - hmadvise() on the calling process's address space
 * @hnid: a host or device node id, or GM_NODE_ALL
 * @start: start of the range, page aligned, untagged
 * @len: its length in bytes
 * @advice: an advice hmadvise() takes (MADV_PREFETCH, MADV_PIN, ...)
 *
 * The hmadvise() system call, for a driver that moves a range on the
 * process's request (an ioctl, say): MADV_PREFETCH to a host node brings
 * the range's device-resident and parked pages home.  Process context,
 * none of the process's mm locks held.  See Documentation/mm/gmem.rst.
 *
 * Return: 0, or the negative errno hmadvise() would fail with.
 */
long gm_hmadvise(int hnid, unsigned long start, size_t len, int advice);
int gm_as_prepare(struct mm_struct *mm);
int gm_as_fork(struct mm_struct *oldmm, struct mm_struct *mm);
void gm_as_exit(struct mm_struct *mm);
unsigned int gm_dev_prefetch_threshold(const struct gm_dev *dev);
int gm_dev_set_prefetch_threshold(struct gm_dev *dev, unsigned int percent);
void gm_as_cover(struct mm_struct *mm, unsigned long addr, unsigned long len);
int gm_show_maps(struct seq_file *m, struct mm_struct *mm);
unsigned int gm_thrashing_threshold(void);
int gm_set_thrashing_threshold(unsigned int bounces);
unsigned int gm_thrashing_window_ms(void);
int gm_set_thrashing_window_ms(unsigned int ms);
u64 gm_thrashing_in_place(void);
int gm_as_mremap(struct mm_struct *mm, unsigned long old_addr,
		 unsigned long new_addr, unsigned long len, bool undo);
void gm_as_dontneed_begin(struct mm_struct *mm, unsigned long start,
			  unsigned long end);
void gm_as_dontneed_end(struct mm_struct *mm, unsigned long start,
			unsigned long end);
vm_fault_t gm_cpu_fault_begin(struct mm_struct *mm, unsigned long addr,
			      struct page *page, unsigned long *token);
bool gm_cpu_fault_end(struct mm_struct *mm, unsigned long addr,
		      struct page *page, unsigned long token, bool install);
bool gm_cpu_write_shared(struct mm_struct *mm, unsigned long addr);
vm_fault_t gm_cpu_write_collapse(struct mm_struct *mm, unsigned long addr);

/**
 * gm_mmap_check() - check the MAP_PEER_SHARED part of an mmap() request
 * @file: the file being mapped, or NULL for anonymous memory
 * @flags: the mmap() flags
 *
 * A peer-shared range is private anonymous memory: the devices share the
 * process's own pages, not a page cache or a hugetlbfs file.  The VMA flag
 * itself is set by calc_vm_flag_bits().
 *
 * With MAP_HUGETLB, the bit of MAP_PEER_SHARED is part of the huge page
 * size (MAP_HUGE_1GB, ...) and is none of GMEM's business: see
 * map_peer_shared().
 *
 * Return: 0 if MAP_PEER_SHARED is not set or is valid, -EINVAL for
 * MAP_PEER_SHARED with a file or with a mapping type other than
 * MAP_PRIVATE.
 */
static inline int gm_mmap_check(struct file *file, unsigned long flags)
{
	if (!map_peer_shared(flags))
		return 0;
	if (file || (flags & MAP_TYPE) != MAP_PRIVATE)
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
	if (!map_peer_shared(flags))
		return 0;
	if (!(flags & MAP_ANONYMOUS) || gm_mmap_check(NULL, flags))
		return -EINVAL;
	return gm_as_prepare(current->mm);
}

/**
 * gm_mmap_done() - follow a range that mmap() just mapped peer-shared
 * @flags: the mmap() flags
 * @addr: where mmap() mapped the range, or an error
 * @len: its length
 *
 * Called by mmap() once it dropped the mmap lock: GMEM registers the MMU
 * interval notifiers of the range's windows, which takes that lock.
 */
static inline void gm_mmap_done(unsigned long flags, unsigned long addr,
				unsigned long len)
{
	if (map_peer_shared(flags) && !IS_ERR_VALUE(addr))
		gm_as_cover(current->mm, addr, len);
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
	return gm_as_mremap(vma->vm_mm, old_addr, new_addr, len, false);
}

/**
 * gm_mremap_undo() - move GMEM's mappings back after a failed mremap()
 * @vma: the VMA they were moved with, mmap lock held for writing
 * @new_addr: where gm_mremap() moved them
 * @old_addr: where they were
 * @len: the length of the range
 *
 * Undoes a successful gm_mremap(), before the page tables move back.  It
 * cannot fail: its allocations are __GFP_NOFAIL, so that no device page is
 * left behind at an address that is about to be unmapped.
 */
static inline void gm_mremap_undo(struct vm_area_struct *vma,
				  unsigned long new_addr,
				  unsigned long old_addr, unsigned long len)
{
	if (gm_vma_peer_shared(vma))
		WARN_ON_ONCE(gm_as_mremap(vma->vm_mm, new_addr, old_addr, len,
					  true));
}

/**
 * gm_madvise_dontneed_begin() - start discarding a range of a VMA
 * @vma: the VMA of the range, mmap or VMA lock held
 * @start: start of the range
 * @end: its end
 *
 * madvise(MADV_DONTNEED) and MADV_FREE discard a range's data.  Pages that
 * live on a device or are parked in host memory have no PTE for the zap to
 * remove, so they go here.  Until gm_madvise_dontneed_end(), which the
 * caller calls after the zap under the same lock, GMEM moves no page of the
 * range from host memory to a device: such a move takes the page's PTE
 * before it copies the page, and would carry the data past the zap.  (The
 * MMU notifier cannot do this: a copy-on-write fault notifies the same
 * event for a page whose data must stay.)  Nothing outside peer-shared VMAs.
 */
static inline void gm_madvise_dontneed_begin(struct vm_area_struct *vma,
					     unsigned long start,
					     unsigned long end)
{
	if (gm_vma_peer_shared(vma))
		gm_as_dontneed_begin(vma->vm_mm, start, end);
}

/**
 * gm_madvise_dontneed_end() - end what gm_madvise_dontneed_begin() started
 * @vma: the VMA of the range, mmap or VMA lock held
 * @start: start of the range
 * @end: its end
 */
static inline void gm_madvise_dontneed_end(struct vm_area_struct *vma,
					   unsigned long start,
					   unsigned long end)
{
	if (gm_vma_peer_shared(vma))
		gm_as_dontneed_end(vma->vm_mm, start, end);
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

static inline void gm_mmap_done(unsigned long flags, unsigned long addr,
				unsigned long len)
{
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

static inline void gm_mremap_undo(struct vm_area_struct *vma,
				  unsigned long new_addr,
				  unsigned long old_addr, unsigned long len)
{
}

static inline void gm_madvise_dontneed_begin(struct vm_area_struct *vma,
					     unsigned long start,
					     unsigned long end)
{
}

static inline void gm_madvise_dontneed_end(struct vm_area_struct *vma,
					   unsigned long start,
					   unsigned long end)
{
}

static inline vm_fault_t gm_cpu_fault_begin(struct mm_struct *mm,
					    unsigned long addr,
					    struct page *page,
					    unsigned long *token)
{
	return 0;
}

static inline bool gm_cpu_fault_end(struct mm_struct *mm, unsigned long addr,
				    struct page *page, unsigned long token,
				    bool install)
{
	return install;
}

static inline bool gm_cpu_write_shared(struct mm_struct *mm,
				       unsigned long addr)
{
	return false;
}

static inline vm_fault_t gm_cpu_write_collapse(struct mm_struct *mm,
					       unsigned long addr)
{
	return 0;
}

#endif /* CONFIG_GMEM */

#endif /* _LINUX_GMEM_H */
