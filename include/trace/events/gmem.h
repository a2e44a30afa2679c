/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tracepoints of GMEM (mm/gmem/): device faults, CPU faults of pages that
 * are away, migrations, density prefetch, eviction, read-only copies,
 * in-place and removed device mappings, and MMU notifier invalidations.
 *
 * A node is a GMEM device's hnid, a NUMA node of host memory, or -1 for no
 * page at all (a zero fill).  See Documentation/mm/gmem.rst.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM gmem

#if !defined(_TRACE_GMEM_H) || defined(TRACE_HEADER_MULTI_READ)
#define _TRACE_GMEM_H

#include <linux/tracepoint.h>

/*
 * gmem_dev_fault - a batch of device faults was served
 * @hnid:	the faulting device
 * @va:		the lowest faulting address
 * @faults:	the faults of the batch (several may name one page)
 * @pages:	the distinct pages they named
 * @prefetched:	pages density prefetch moved beyond them
 * @ret:	0, or the first error in address order
 */
TRACE_EVENT(gmem_dev_fault,
	TP_PROTO(int hnid, unsigned long va, unsigned int faults,
		 unsigned int pages, unsigned int prefetched, int ret),
	TP_ARGS(hnid, va, faults, pages, prefetched, ret),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned int, faults)
		__field(unsigned int, pages)
		__field(unsigned int, prefetched)
		__field(int, ret)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->faults = faults;
		__entry->pages = pages;
		__entry->prefetched = prefetched;
		__entry->ret = ret;
	),
	TP_printk("hnid=%d va=%#lx faults=%u pages=%u prefetched=%u ret=%d",
		  __entry->hnid, __entry->va, __entry->faults, __entry->pages,
		  __entry->prefetched, __entry->ret)
);

/*
 * gmem_cpu_fault - the CPU faulted on a page that was away
 * @va:		the page's address
 * @from:	the device that held it, or -1 for a page parked in host memory
 * @ret:	0, or the error that made the fault give up (the page stays)
 */
TRACE_EVENT(gmem_cpu_fault,
	TP_PROTO(unsigned long va, int from, int ret),
	TP_ARGS(va, from, ret),
	TP_STRUCT__entry(
		__field(unsigned long, va)
		__field(int, from)
		__field(int, ret)
	),
	TP_fast_assign(
		__entry->va = va;
		__entry->from = from;
		__entry->ret = ret;
	),
	TP_printk("va=%#lx from=%d ret=%d",
		  __entry->va, __entry->from, __entry->ret)
);

/*
 * gmem_migrate - a run of consecutive pages moved
 * @va:		the run's first address
 * @pages:	the pages of the run
 * @zeroed:	those of them filled with zeros on @to (they had no data)
 * @from:	where the data came from: a device's hnid, the NUMA node of the
 *		run's first host page, or -1 if every page was zero-filled
 * @to:		where it went (a device's hnid or a NUMA node)
 */
TRACE_EVENT(gmem_migrate,
	TP_PROTO(unsigned long va, unsigned int pages, unsigned int zeroed,
		 int from, int to),
	TP_ARGS(va, pages, zeroed, from, to),
	TP_STRUCT__entry(
		__field(unsigned long, va)
		__field(unsigned int, pages)
		__field(unsigned int, zeroed)
		__field(int, from)
		__field(int, to)
	),
	TP_fast_assign(
		__entry->va = va;
		__entry->pages = pages;
		__entry->zeroed = zeroed;
		__entry->from = from;
		__entry->to = to;
	),
	TP_printk("va=%#lx pages=%u zeroed=%u from=%d to=%d",
		  __entry->va, __entry->pages, __entry->zeroed,
		  __entry->from, __entry->to)
);

/*
 * gmem_thrashing - a device fault found pages of a 2 MiB block thrashing
 * @hnid:	the faulting device
 * @va:		the block's address
 * @pages:	the thrashing pages the device faulted on
 * @in_place:	1: mapped where they are, in host memory; 0: moved as before
 *		(the device cannot map host memory)
 */
TRACE_EVENT(gmem_thrashing,
	TP_PROTO(int hnid, unsigned long va, unsigned int pages, int in_place),
	TP_ARGS(hnid, va, pages, in_place),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned int, pages)
		__field(int, in_place)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->pages = pages;
		__entry->in_place = in_place;
	),
	TP_printk("hnid=%d va=%#lx pages=%u in_place=%d",
		  __entry->hnid, __entry->va, __entry->pages,
		  __entry->in_place)
);

/*
 * gmem_prefetch - density prefetch widened the faults of one 2 MiB block
 * @hnid:	the faulting device
 * @va:		the block's address
 * @faulted:	the block's faulting pages
 * @pages:	the pages moved with them
 */
TRACE_EVENT(gmem_prefetch,
	TP_PROTO(int hnid, unsigned long va, unsigned int faulted,
		 unsigned int pages),
	TP_ARGS(hnid, va, faulted, pages),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned int, faulted)
		__field(unsigned int, pages)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->faulted = faulted;
		__entry->pages = pages;
	),
	TP_printk("hnid=%d va=%#lx faulted=%u pages=%u",
		  __entry->hnid, __entry->va, __entry->faulted, __entry->pages)
);

/*
 * gmem_evict - an eviction pass over a device's memory ended
 * @hnid:	the device
 * @wanted:	the pages it was asked to free
 * @evicted:	the pages that left the device
 * @ret:	0, -ENOMEM (nothing to take) or -EAGAIN (owners busy)
 */
TRACE_EVENT(gmem_evict,
	TP_PROTO(int hnid, unsigned int wanted, unsigned int evicted, int ret),
	TP_ARGS(hnid, wanted, evicted, ret),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned int, wanted)
		__field(unsigned int, evicted)
		__field(int, ret)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->wanted = wanted;
		__entry->evicted = evicted;
		__entry->ret = ret;
	),
	TP_printk("hnid=%d wanted=%u evicted=%u ret=%d",
		  __entry->hnid, __entry->wanted, __entry->evicted,
		  __entry->ret)
);

/*
 * gmem_copy - read-only copies (MADV_READ_MOSTLY) were made or dropped
 * @hnid:	the device holding them
 * @va:		the first page's address
 * @pages:	the pages, consecutive
 * @made:	1: copied and mapped on @hnid; 0: unmapped from @hnid and freed
 */
TRACE_EVENT(gmem_copy,
	TP_PROTO(int hnid, unsigned long va, unsigned int pages, int made),
	TP_ARGS(hnid, va, pages, made),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned int, pages)
		__field(int, made)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->pages = pages;
		__entry->made = made;
	),
	TP_printk("hnid=%d va=%#lx pages=%u made=%d",
		  __entry->hnid, __entry->va, __entry->pages, __entry->made)
);

/*
 * gmem_map_in_place - a device mapped host pages where they are
 *		       (MADV_ACCESSED_BY, or pages that thrash)
 * @hnid:	the device
 * @va:		the first page's address
 * @pages:	the pages, consecutive
 * @writable:	1 if the device may write them
 */
TRACE_EVENT(gmem_map_in_place,
	TP_PROTO(int hnid, unsigned long va, unsigned int pages, int writable),
	TP_ARGS(hnid, va, pages, writable),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned int, pages)
		__field(int, writable)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->pages = pages;
		__entry->writable = writable;
	),
	TP_printk("hnid=%d va=%#lx pages=%u writable=%d",
		  __entry->hnid, __entry->va, __entry->pages,
		  __entry->writable)
);

/*
 * gmem_device_unmap - a device's mappings of a range were removed, and its
 *		       TLB invalidated for them
 * @hnid:	the device
 * @va:		the range's start
 * @len:	its length in bytes
 */
TRACE_EVENT(gmem_device_unmap,
	TP_PROTO(int hnid, unsigned long va, unsigned long len),
	TP_ARGS(hnid, va, len),
	TP_STRUCT__entry(
		__field(int, hnid)
		__field(unsigned long, va)
		__field(unsigned long, len)
	),
	TP_fast_assign(
		__entry->hnid = hnid;
		__entry->va = va;
		__entry->len = len;
	),
	TP_printk("hnid=%d va=%#lx len=%#lx",
		  __entry->hnid, __entry->va, __entry->len)
);

/*
 * gmem_invalidate - core MM changed the CPU page table of a range of a
 *		     process that uses GMEM (an MMU notifier invalidation)
 * @start:	the range's start
 * @end:	its end
 * @event:	the enum mmu_notifier_event
 */
TRACE_EVENT(gmem_invalidate,
	TP_PROTO(unsigned long start, unsigned long end, int event),
	TP_ARGS(start, end, event),
	TP_STRUCT__entry(
		__field(unsigned long, start)
		__field(unsigned long, end)
		__field(int, event)
	),
	TP_fast_assign(
		__entry->start = start;
		__entry->end = end;
		__entry->event = event;
	),
	TP_printk("start=%#lx end=%#lx event=%d",
		  __entry->start, __entry->end, __entry->event)
);

#endif /* _TRACE_GMEM_H */

/* This part must be outside protection */
#include <trace/define_trace.h>
