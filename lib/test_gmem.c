// SPDX-License-Identifier: GPL-2.0
/*
 * test_gmem: lib/test_hmm's mirror device ("dmirror") as a GMEM driver.
 *
 * The same ioctl ABI as test_hmm (lib/test_hmm_uapi.h), so that the
 * upstream hmm-tests run against GMEM, on character devices
 * /dev/gmem_mirror<N>.  Where test_hmm manages memory itself (ZONE_DEVICE
 * pages, hmm_range_fault(), migrate_vma_*(), its own MMU notifiers), this
 * driver describes a device to GMEM and lets GMEM decide where each page
 * lives (Documentation/mm/gmem.rst, "Writing a driver"):
 *
 * - device memory is host RAM (vmalloc), handed to GMEM with
 *   gm_dev_register_physmem(); GMEM allocates, evicts and accounts it;
 * - the device's MMU is a software page table per process (an XArray of
 *   virtual page number -> device page and rights), filled only by GMEM
 *   through the struct gm_mmu operations;
 * - the device reads and writes a process's memory only through that table
 *   (the READ and WRITE ioctls are device accesses); a miss is a device
 *   fault, gm_dev_fault_range(), which moves the pages to the device.
 *
 * So a device access moves pages, where test_hmm's device reads host memory
 * in place: GMEM keeps one copy of each page, next to whoever uses it.  Only
 * MAP_PEER_SHARED memory (private anonymous) is GMEM's; the device cannot
 * reach any other mapping.
 */
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/gmem.h>
#include <linux/highmem.h>
#include <linux/hugetlb.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/xarray.h>

#include "test_hmm_uapi.h"

/* Minors reserved, as test_hmm does; the device-coherent pair is not made. */
#define DMIRROR_NDEVICES	4
#define DMIRROR_NPRIVATE	2

/* A device page table entry: device page << DPT_PFN_SHIFT | GM_PROT_*. */
#define DPT_PFN_SHIFT		2
#define DPT_PROT_MASK		(GM_PROT_READ | GM_PROT_WRITE)

static unsigned int devmem_mib = 64;
module_param(devmem_mib, uint, 0444);
MODULE_PARM_DESC(devmem_mib, "MiB of (simulated) memory of each device");

static dev_t dmirror_dev;

/**
 * struct dmirror_device - one simulated device
 * @cdevice: its character device
 * @device: its device (/dev/gmem_mirror<N>)
 * @gm: the device as GMEM knows it
 * @devmem: the device's memory: host RAM, addressed by device page number
 * @npages: pages in @devmem
 * @released: completed by GMEM's release operation, after which GMEM calls
 *	no operation of this device any more
 */
struct dmirror_device {
	struct cdev cdevice;
	struct device device;
	struct gm_dev *gm;
	void *devmem;
	unsigned long npages;
	struct completion released;
};

static struct dmirror_device dmirror_devices[DMIRROR_NPRIVATE];

/**
 * struct dmirror_pt - the device page table of one process (a GMEM pmap)
 * @entries: virtual page number -> xa_mk_value(device page and rights)
 * @walk_lock: held by the device for each page it translates and accesses;
 *	a TLB invalidation takes it, so that when it returns no access that
 *	used a removed translation is still under way
 */
struct dmirror_pt {
	struct xarray entries;
	spinlock_t walk_lock;	/* the device's accesses against tlb_invl */
};

/**
 * struct dmirror - an open device file: the device working for a process
 * @mdevice: the device
 * @mm: the process that opened the file (the address space mirrored)
 * @ctx: the device's GMEM context in that process
 * @ctx_lock: held for reading by every use of @ctx, for writing to replace it
 * @flags: HMM_DMIRROR_FLAG_*
 * @node: in dmirror_files
 */
struct dmirror {
	struct dmirror_device *mdevice;
	struct mm_struct *mm;
	struct gm_context *ctx;
	struct rw_semaphore ctx_lock;
	u64 flags;
	struct list_head node;
};

/* Every open dmirror, to find another device's view of a process. */
static LIST_HEAD(dmirror_files);
static DEFINE_MUTEX(dmirror_files_lock);

static void *dmirror_devmem(struct gm_dev *dev, u64 pfn)
{
	struct dmirror_device *mdevice = gm_dev_priv(dev);

	if (WARN_ON_ONCE(pfn >= mdevice->npages))
		return NULL;
	return mdevice->devmem + (pfn << PAGE_SHIFT);
}

/* The MMU operations: what GMEM calls to move and map pages. */

static int dmirror_prepare_page(struct gm_dev *dev, u64 pfn, struct page *src)
{
	void *dst = dmirror_devmem(dev, pfn);

	if (!dst)
		return -EINVAL;
	if (src)
		memcpy_from_page(dst, src, 0, PAGE_SIZE);
	else
		memset(dst, 0, PAGE_SIZE);
	return 0;
}

static int dmirror_copy_to_host(struct gm_dev *dev, u64 pfn, struct page *dst)
{
	void *src = dmirror_devmem(dev, pfn);

	if (!src)
		return -EINVAL;
	memcpy_to_page(dst, 0, src, PAGE_SIZE);
	return 0;
}

static int dmirror_pmap_create(struct gm_dev *dev, void **pmap)
{
	struct dmirror_pt *pt = kzalloc_obj(*pt);

	if (!pt)
		return -ENOMEM;
	xa_init(&pt->entries);
	spin_lock_init(&pt->walk_lock);
	*pmap = pt;
	return 0;
}

static void dmirror_pmap_destroy(struct gm_dev *dev, void *pmap)
{
	struct dmirror_pt *pt = pmap;

	WARN_ON_ONCE(!xa_empty(&pt->entries));
	xa_destroy(&pt->entries);
	kfree(pt);
}

static int dmirror_pmap_enter(struct gm_dev *dev, void *pmap, unsigned long va,
			      u64 pfn, unsigned int prot)
{
	struct dmirror_pt *pt = pmap;
	void *old;

	old = xa_store(&pt->entries, va >> PAGE_SHIFT,
		       xa_mk_value(pfn << DPT_PFN_SHIFT | (prot & DPT_PROT_MASK)),
		       GFP_KERNEL);
	return xa_err(old);
}

static void dmirror_pmap_release(struct gm_dev *dev, void *pmap,
				 unsigned long va, unsigned long len)
{
	struct dmirror_pt *pt = pmap;
	unsigned long index;
	void *entry;

	xa_for_each_range(&pt->entries, index, entry, va >> PAGE_SHIFT,
			  (va + len - 1) >> PAGE_SHIFT)
		xa_erase(&pt->entries, index);
}

static void dmirror_tlb_invl(struct gm_dev *dev, void *pmap, unsigned long va,
			     unsigned long len)
{
	struct dmirror_pt *pt = pmap;

	/* No TLB: wait for the accesses that may have used old entries. */
	spin_lock(&pt->walk_lock);
	spin_unlock(&pt->walk_lock);
}

static void dmirror_release(struct gm_dev *dev)
{
	struct dmirror_device *mdevice = gm_dev_priv(dev);

	complete(&mdevice->released);
}

static const struct gm_mmu dmirror_mmu = {
	.prepare_page	= dmirror_prepare_page,
	.copy_to_host	= dmirror_copy_to_host,
	.pmap_create	= dmirror_pmap_create,
	.pmap_destroy	= dmirror_pmap_destroy,
	.pmap_enter	= dmirror_pmap_enter,
	.pmap_release	= dmirror_pmap_release,
	.tlb_invl	= dmirror_tlb_invl,
	.release	= dmirror_release,
};

/* The device: accesses through its page table. */

/* The entry of @addr in @pt, 0 if none; the caller holds pt->walk_lock. */
static unsigned long dmirror_translate(struct dmirror_pt *pt,
				       unsigned long addr)
{
	void *entry = xa_load(&pt->entries, addr >> PAGE_SHIFT);

	return entry ? xa_to_value(entry) : 0;
}

/*
 * Copy pages [addr, end) between the device's view of the process and @buf,
 * the way the device would.  Returns 0, or -ENOENT at the first page it has
 * no translation for (or no write right, for @write); *@done counts the
 * pages copied.
 */
static int dmirror_device_copy(struct dmirror *dmirror, unsigned long addr,
			       unsigned long end, void *buf, bool write,
			       u64 *done)
{
	struct dmirror_pt *pt = gm_context_pmap(dmirror->ctx);
	unsigned int need = write ? GM_PROT_WRITE : GM_PROT_READ;

	for (; addr < end; addr += PAGE_SIZE, buf += PAGE_SIZE) {
		unsigned long entry;
		void *page;

		spin_lock(&pt->walk_lock);
		entry = dmirror_translate(pt, addr);
		if (!(entry & need)) {
			spin_unlock(&pt->walk_lock);
			return -ENOENT;
		}
		page = dmirror_devmem(dmirror->mdevice->gm,
				      entry >> DPT_PFN_SHIFT);
		if (page) {
			if (write)
				memcpy(page, buf, PAGE_SIZE);
			else
				memcpy(buf, page, PAGE_SIZE);
		}
		spin_unlock(&pt->walk_lock);
		if (!page)
			return -EIO;
		(*done)++;
	}
	return 0;
}

/*
 * A write to a range with a VMA that may not be written is a permission
 * fault (-EPERM, as test_hmm reports it); GMEM answers -EFAULT for it.
 */
static int dmirror_check_write(struct dmirror *dmirror, unsigned long start,
			       unsigned long end)
{
	struct vm_area_struct *vma;
	int ret = 0;

	mmap_read_lock(dmirror->mm);
	for (; start < end; start = vma->vm_end) {
		vma = vma_lookup(dmirror->mm, start);
		if (!vma)
			break;
		if ((vma->vm_flags & (VM_READ | VM_WRITE)) == VM_READ) {
			ret = -EPERM;
			break;
		}
	}
	mmap_read_unlock(dmirror->mm);
	return ret;
}

/*
 * The device reads or writes [start, end): a miss is a device fault, which
 * GMEM serves for the rest of the range at once (at most half the device's
 * memory, so that what it brings is not evicted before the device uses it).
 */
static int dmirror_access(struct dmirror *dmirror, unsigned long start,
			  unsigned long end, void *buf, bool write,
			  struct hmm_dmirror_cmd *cmd)
{
	unsigned long window = (dmirror->mdevice->npages / 2) << PAGE_SHIFT;
	int ret;

	if (write) {
		ret = dmirror_check_write(dmirror, start, end);
		if (ret)
			return ret;
	}
	for (;;) {
		unsigned long addr = start + (cmd->cpages << PAGE_SHIFT);

		ret = dmirror_device_copy(dmirror, addr, end,
					  buf + (addr - start), write,
					  &cmd->cpages);
		if (ret != -ENOENT)
			return ret;
		if (fatal_signal_pending(current))
			return -EINTR;
		ret = gm_dev_fault_range(dmirror->ctx, addr,
					 min(end - addr, window),
					 write ? GM_ACCESS_WRITE : GM_ACCESS_READ);
		if (ret)
			return ret;
		cmd->faults++;
	}
}

static int dmirror_read_write(struct dmirror *dmirror,
			      struct hmm_dmirror_cmd *cmd, bool write)
{
	unsigned long size = cmd->npages << PAGE_SHIFT;
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	void *buf;
	int ret;

	buf = vmalloc(size);
	if (!buf)
		return -ENOMEM;
	if (write && copy_from_user(buf, uptr, size)) {
		ret = -EFAULT;
		goto out;
	}
	ret = dmirror_access(dmirror, cmd->addr, cmd->addr + size, buf, write,
			     cmd);
	if (!ret && !write && copy_to_user(uptr, buf, size))
		ret = -EFAULT;
out:
	vfree(buf);
	return ret;
}

/*
 * Whether another device's view of this process maps @addr: the page is on
 * that device (test_hmm's device-private page of another owner).
 */
static bool dmirror_on_other_device(struct dmirror *dmirror,
				    unsigned long addr)
{
	struct dmirror *other;
	bool found = false;

	mutex_lock(&dmirror_files_lock);
	list_for_each_entry(other, &dmirror_files, node) {
		struct dmirror_pt *pt;

		if (other->mm != dmirror->mm ||
		    other->mdevice == dmirror->mdevice ||
		    !down_read_trylock(&other->ctx_lock))
			continue;
		pt = gm_context_pmap(other->ctx);
		spin_lock(&pt->walk_lock);
		found = dmirror_translate(pt, addr);
		spin_unlock(&pt->walk_lock);
		up_read(&other->ctx_lock);
		if (found)
			break;
	}
	mutex_unlock(&dmirror_files_lock);
	return found;
}

/* -EINVAL unless [start, end) is mapped and readable, as in test_hmm. */
static int dmirror_check_readable(struct mm_struct *mm, unsigned long start,
				  unsigned long end)
{
	struct vm_area_struct *vma;

	for (; start < end; start = vma->vm_end) {
		vma = vma_lookup(mm, start);
		if (!vma || !(vma->vm_flags & VM_READ))
			return -EINVAL;
	}
	return 0;
}

/*
 * The runs of [start, end) that MIGRATE_TO_DEV moves: peer-shared pages not
 * on another device.  Sets *@next to the end of the run at @addr and
 * returns whether it moves.
 */
static bool dmirror_movable_run(struct dmirror *dmirror, unsigned long addr,
				unsigned long end, unsigned long *next)
{
	struct vm_area_struct *vma;
	bool movable;

	mmap_read_lock(dmirror->mm);
	vma = vma_lookup(dmirror->mm, addr);
	if (!vma) {
		mmap_read_unlock(dmirror->mm);
		*next = end;
		return false;
	}
	end = min(end, vma->vm_end);
	movable = vma->vm_flags & VM_PEER_SHARED;
	mmap_read_unlock(dmirror->mm);
	if (!movable) {
		*next = end;
		return false;
	}
	movable = !dmirror_on_other_device(dmirror, addr);
	for (*next = addr + PAGE_SIZE; *next < end; *next += PAGE_SIZE)
		if (dmirror_on_other_device(dmirror, *next) == movable)
			break;
	return movable;
}

/*
 * MIGRATE_TO_DEV: move the range's system memory to the device (pages that
 * are not GMEM's, or on another device, stay where they are, as they do in
 * test_hmm), then read it back through the device: -ENOENT if a page is not
 * there.
 */
static int dmirror_migrate_to_device(struct dmirror *dmirror,
				     struct hmm_dmirror_cmd *cmd)
{
	unsigned long start = cmd->addr;
	unsigned long end = start + (cmd->npages << PAGE_SHIFT);
	unsigned long addr, next;
	void *buf;
	int ret;

	mmap_read_lock(dmirror->mm);
	ret = dmirror_check_readable(dmirror->mm, start, end);
	mmap_read_unlock(dmirror->mm);
	if (ret)
		return ret;
	for (addr = start; addr < end; addr = next) {
		if (!dmirror_movable_run(dmirror, addr, end, &next))
			continue;
		ret = gm_dev_fault_range(dmirror->ctx, addr, next - addr,
					 GM_ACCESS_READ);
		if (ret)
			return ret;
	}

	buf = vmalloc(end - start);
	if (!buf)
		return -ENOMEM;
	ret = dmirror_device_copy(dmirror, start, end, buf, false,
				  &cmd->cpages);
	if (!ret && copy_to_user(u64_to_user_ptr(cmd->ptr), buf, end - start))
		ret = -EFAULT;
	vfree(buf);
	return ret;
}

/* How many pages of [start, end) the device's page table maps. */
static u64 dmirror_mapped_pages(struct dmirror *dmirror, unsigned long start,
				unsigned long end)
{
	struct dmirror_pt *pt = gm_context_pmap(dmirror->ctx);
	unsigned long index;
	void *entry;
	u64 n = 0;

	xa_for_each_range(&pt->entries, index, entry, start >> PAGE_SHIFT,
			  (end - 1) >> PAGE_SHIFT)
		n++;
	return n;
}

/*
 * MIGRATE_TO_SYS: bring the range's pages home, as hmadvise(MADV_PREFETCH)
 * to a host node does; cpages counts the pages that left this device.
 */
static int dmirror_migrate_to_system(struct dmirror *dmirror,
				     struct hmm_dmirror_cmd *cmd)
{
	unsigned long start = cmd->addr;
	unsigned long end = start + (cmd->npages << PAGE_SHIFT);
	u64 before;
	long ret;

	mmap_read_lock(dmirror->mm);
	ret = dmirror_check_readable(dmirror->mm, start, end);
	mmap_read_unlock(dmirror->mm);
	if (ret)
		return ret;
	before = dmirror_mapped_pages(dmirror, start, end);
	ret = gm_hmadvise(numa_node_id(), start, end - start, MADV_PREFETCH);
	if (ret)
		return ret;
	cmd->cpages = before - dmirror_mapped_pages(dmirror, start, end);
	return 0;
}

/* What the CPU page table says of @addr, in HMM_DMIRROR_PROT_* terms. */
static unsigned char dmirror_cpu_prot(struct vm_area_struct *vma,
				      unsigned long addr)
{
	unsigned char prot = HMM_DMIRROR_PROT_READ;
	struct page *page;

	/* FOLL_NOFAULT: only what is mapped now, with the rights it has. */
	if (get_user_pages_remote(vma->vm_mm, addr, 1,
				  FOLL_NOFAULT | FOLL_WRITE, &page, NULL) == 1)
		prot = HMM_DMIRROR_PROT_WRITE;
	else if (get_user_pages_remote(vma->vm_mm, addr, 1, FOLL_NOFAULT,
				       &page, NULL) != 1)
		return HMM_DMIRROR_PROT_NONE;
	if (is_zero_page(page))
		prot |= HMM_DMIRROR_PROT_ZERO;
	put_page(page);
	if (is_vm_hugetlb_page(vma)) {
		if (vma_kernel_pagesize(vma) == PMD_SIZE)
			prot |= HMM_DMIRROR_PROT_PMD;
		else if (vma_kernel_pagesize(vma) == PUD_SIZE)
			prot |= HMM_DMIRROR_PROT_PUD;
	}
	return prot;
}

/*
 * SNAPSHOT: where each page is, without moving it.  A page mapped by this
 * device is device-private-local; a page on another device is not valid
 * for this one (HMM_DMIRROR_PROT_NONE, as HMM reports another owner's
 * device-private page); any other page is what the CPU page table says.
 */
static int dmirror_snapshot(struct dmirror *dmirror,
			    struct hmm_dmirror_cmd *cmd)
{
	struct dmirror_pt *pt = gm_context_pmap(dmirror->ctx);
	unsigned long start = cmd->addr;
	unsigned long end = start + (cmd->npages << PAGE_SHIFT);
	unsigned char *perm, *p;
	unsigned long addr;
	int ret = 0;

	perm = vmalloc(cmd->npages);
	if (!perm)
		return -ENOMEM;
	mmap_read_lock(dmirror->mm);
	for (addr = start, p = perm; addr < end; addr += PAGE_SIZE, p++) {
		struct vm_area_struct *vma = vma_lookup(dmirror->mm, addr);
		unsigned long entry;

		spin_lock(&pt->walk_lock);
		entry = dmirror_translate(pt, addr);
		spin_unlock(&pt->walk_lock);
		if (!vma || !(vma->vm_flags & VM_READ))
			*p = HMM_DMIRROR_PROT_ERROR;
		else if (entry)
			*p = HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL |
			     (entry & GM_PROT_WRITE ? HMM_DMIRROR_PROT_WRITE :
						      HMM_DMIRROR_PROT_READ);
		else if (dmirror_on_other_device(dmirror, addr))
			*p = HMM_DMIRROR_PROT_NONE;
		else
			*p = dmirror_cpu_prot(vma, addr);
	}
	mmap_read_unlock(dmirror->mm);
	if (copy_to_user(u64_to_user_ptr(cmd->ptr), perm, cmd->npages))
		ret = -EFAULT;
	else
		cmd->cpages = cmd->npages;
	vfree(perm);
	return ret;
}

/*
 * EXCLUSIVE: give the device exclusive access to the range.  A page on a
 * GMEM device is the only copy and the CPU maps it no more, so this is a
 * device write fault; the CPU's next access takes the page back.
 */
static int dmirror_exclusive(struct dmirror *dmirror,
			     struct hmm_dmirror_cmd *cmd)
{
	unsigned long end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	int ret;

	ret = gm_dev_fault_range(dmirror->ctx, cmd->addr, end - cmd->addr,
				 GM_ACCESS_WRITE);
	if (ret)
		return ret;
	return dmirror_read_write(dmirror, cmd, false);
}

/* CHECK_EXCLUSIVE: -EPERM while the device still holds a page of it. */
static int dmirror_check_exclusive(struct dmirror *dmirror,
				   struct hmm_dmirror_cmd *cmd)
{
	unsigned long end = cmd->addr + (cmd->npages << PAGE_SHIFT);

	return dmirror_mapped_pages(dmirror, cmd->addr, end) ? -EPERM : 0;
}

/* Attach the device to the calling process. */
static int dmirror_attach(struct dmirror *dmirror)
{
	struct gm_context *ctx;
	struct gm_as *as;

	as = gm_as_create();
	if (IS_ERR(as))
		return PTR_ERR(as);
	ctx = gm_as_attach(as, dmirror->mdevice->gm);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	dmirror->ctx = ctx;
	return 0;
}

/*
 * RELEASE: the device gives its memory back.  Detaching brings the pages
 * home; the device is then attached again, with nothing on it.
 */
static int dmirror_release_memory(struct dmirror *dmirror)
{
	int ret;

	down_write(&dmirror->ctx_lock);
	gm_context_detach(dmirror->ctx);
	ret = dmirror_attach(dmirror);
	if (ret)
		dmirror->ctx = NULL;
	up_write(&dmirror->ctx_lock);
	return ret;
}

static int dmirror_fops_open(struct inode *inode, struct file *filp)
{
	struct dmirror *dmirror;
	int ret;

	dmirror = kzalloc_obj(*dmirror);
	if (!dmirror)
		return -ENOMEM;
	dmirror->mdevice = container_of(inode->i_cdev, struct dmirror_device,
					cdevice);
	init_rwsem(&dmirror->ctx_lock);
	ret = dmirror_attach(dmirror);
	if (ret) {
		kfree(dmirror);
		return ret;
	}
	dmirror->mm = current->mm;
	mmgrab(dmirror->mm);
	mutex_lock(&dmirror_files_lock);
	list_add(&dmirror->node, &dmirror_files);
	mutex_unlock(&dmirror_files_lock);
	filp->private_data = dmirror;
	return 0;
}

static int dmirror_fops_release(struct inode *inode, struct file *filp)
{
	struct dmirror *dmirror = filp->private_data;

	mutex_lock(&dmirror_files_lock);
	list_del(&dmirror->node);
	mutex_unlock(&dmirror_files_lock);
	if (dmirror->ctx)
		gm_context_detach(dmirror->ctx);
	mmdrop(dmirror->mm);
	kfree(dmirror);
	return 0;
}

static long dmirror_ioctl(struct dmirror *dmirror, unsigned int command,
			  struct hmm_dmirror_cmd *cmd)
{
	switch (command) {
	case HMM_DMIRROR_READ:
		return dmirror_read_write(dmirror, cmd, false);
	case HMM_DMIRROR_WRITE:
		return dmirror_read_write(dmirror, cmd, true);
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		return dmirror_migrate_to_device(dmirror, cmd);
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		return dmirror_migrate_to_system(dmirror, cmd);
	case HMM_DMIRROR_SNAPSHOT:
		return dmirror_snapshot(dmirror, cmd);
	case HMM_DMIRROR_EXCLUSIVE:
		return dmirror_exclusive(dmirror, cmd);
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		return dmirror_check_exclusive(dmirror, cmd);
	case HMM_DMIRROR_FLAGS:
		/*
		 * FAIL_ALLOC fails test_hmm's next huge (THP) device page
		 * allocation.  GMEM moves base pages and this device never
		 * allocates a huge one, so the flag is only kept.
		 */
		dmirror->flags = cmd->npages;
		return 0;
	}
	return -EINVAL;
}

static long dmirror_fops_unlocked_ioctl(struct file *filp,
					unsigned int command,
					unsigned long arg)
{
	struct dmirror *dmirror = filp->private_data;
	void __user *uarg = (void __user *)arg;
	struct hmm_dmirror_cmd cmd;
	long ret;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.addr & ~PAGE_MASK)
		return -EINVAL;
	if (cmd.npages > (ULONG_MAX - cmd.addr) >> PAGE_SHIFT ||
	    cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT))
		return -EINVAL;
	/* GMEM works on the calling process's address space. */
	if (current->mm != dmirror->mm)
		return -EINVAL;
	cmd.cpages = 0;
	cmd.faults = 0;

	if (command == HMM_DMIRROR_RELEASE) {
		ret = dmirror_release_memory(dmirror);
	} else {
		down_read(&dmirror->ctx_lock);
		ret = dmirror->ctx ? dmirror_ioctl(dmirror, command, &cmd) :
				     -ENODEV;
		up_read(&dmirror->ctx_lock);
	}
	if (ret)
		return ret;
	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

/* As test_hmm's: a mapping of the file is zeroed host pages. */
static int dmirror_fops_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long addr;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		struct page *page;
		int ret;

		page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, addr, page);
		put_page(page);
		if (ret)
			return ret;
	}
	return 0;
}

static const struct file_operations dmirror_fops = {
	.open		= dmirror_fops_open,
	.release	= dmirror_fops_release,
	.mmap		= dmirror_fops_mmap,
	.unlocked_ioctl	= dmirror_fops_unlocked_ioctl,
	.llseek		= default_llseek,
	.owner		= THIS_MODULE,
};

static void dmirror_device_release(struct device *dev)
{
}

static int dmirror_device_init(struct dmirror_device *mdevice, int id)
{
	char name[32];
	int ret;

	init_completion(&mdevice->released);
	mdevice->npages = ((unsigned long)devmem_mib << 20) >> PAGE_SHIFT;
	mdevice->devmem = vzalloc(mdevice->npages << PAGE_SHIFT);
	if (!mdevice->devmem)
		return -ENOMEM;
	snprintf(name, sizeof(name), "gmem_mirror%d", id);
	mdevice->gm = gm_dev_create(&dmirror_mmu, mdevice, 0, name);
	if (IS_ERR(mdevice->gm)) {
		ret = PTR_ERR(mdevice->gm);
		goto free_devmem;
	}
	ret = gm_dev_register_physmem(mdevice->gm, 0,
				      mdevice->npages << PAGE_SHIFT);
	if (ret)
		goto destroy;

	cdev_init(&mdevice->cdevice, &dmirror_fops);
	mdevice->cdevice.owner = THIS_MODULE;
	device_initialize(&mdevice->device);
	mdevice->device.release = dmirror_device_release;
	mdevice->device.devt = MKDEV(MAJOR(dmirror_dev), id);
	ret = dev_set_name(&mdevice->device, "%s", name);
	if (!ret)
		ret = cdev_device_add(&mdevice->cdevice, &mdevice->device);
	if (ret) {
		put_device(&mdevice->device);
		goto destroy;
	}
	return 0;

destroy:
	gm_dev_destroy(mdevice->gm);
	wait_for_completion(&mdevice->released);
free_devmem:
	vfree(mdevice->devmem);
	return ret;
}

static void dmirror_device_remove(struct dmirror_device *mdevice)
{
	cdev_device_del(&mdevice->cdevice, &mdevice->device);
	put_device(&mdevice->device);
	gm_dev_destroy(mdevice->gm);
	/* Contexts that outlived their files keep the device until they go. */
	wait_for_completion(&mdevice->released);
	vfree(mdevice->devmem);
}

static int __init dmirror_init(void)
{
	int ret, id;

	ret = alloc_chrdev_region(&dmirror_dev, 0, DMIRROR_NDEVICES,
				  "GMEM_MIRROR");
	if (ret)
		return ret;
	for (id = 0; id < DMIRROR_NPRIVATE; id++) {
		ret = dmirror_device_init(&dmirror_devices[id], id);
		if (ret)
			goto remove;
	}
	return 0;

remove:
	while (--id >= 0)
		dmirror_device_remove(&dmirror_devices[id]);
	unregister_chrdev_region(dmirror_dev, DMIRROR_NDEVICES);
	return ret;
}

static void __exit dmirror_exit(void)
{
	int id;

	for (id = 0; id < DMIRROR_NPRIVATE; id++)
		dmirror_device_remove(&dmirror_devices[id]);
	unregister_chrdev_region(dmirror_dev, DMIRROR_NDEVICES);
}

module_init(dmirror_init);
module_exit(dmirror_exit);
MODULE_DESCRIPTION("lib/test_hmm's mirror device on the GMEM driver API");
MODULE_LICENSE("GPL");
