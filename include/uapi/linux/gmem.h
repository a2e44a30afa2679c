/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * GMEM: generalized memory management for external memory devices.
 *
 * Userspace interface: the mmap() flag that opts a range into GMEM and the
 * advice values of hmadvise(2).
 */
#ifndef _UAPI_LINUX_GMEM_H
#define _UAPI_LINUX_GMEM_H

/*
 * mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED): the range is shared
 * (same virtual addresses, coherent data) by the CPU and every device
 * attached to the process through GMEM.
 *
 * The value is bit 27.  No architecture's <asm/mman.h> uses it: bits 26-31
 * are the hugetlb page-size field (MAP_HUGE_SHIFT is 26 everywhere), which
 * means something only together with MAP_HUGETLB; MAP_UNINITIALIZED (bit 26)
 * reuses the field the same way.  So the bit is MAP_PEER_SHARED only
 * without MAP_HUGETLB: with it, the bit is part of the huge page size
 * (MAP_HUGE_1GB, MAP_HUGE_16KB, ...) exactly as on a kernel without GMEM.
 * MAP_PEER_SHARED with MAP_SHARED or with a file is rejected with EINVAL.
 * Kernels without GMEM ignore the bit for MAP_PRIVATE mappings, like any
 * unknown legacy flag.
 */
#define MAP_PEER_SHARED		0x8000000

/*
 * hmadvise(hnid, start, len, advice) takes the madvise() values that make
 * sense for device memory (MADV_DONTNEED) plus the ones below.
 *
 * MADV_PREFETCH is 200: madvise() uses 0-25 and 100-103 (generic, alpha,
 * mips) and 65-75 (parisc); 200 leaves room for the next madvise() values
 * on every architecture.  madvise() itself rejects it with EINVAL.
 */
#define MADV_PREFETCH		200	/* move the range to node hnid */

/*
 * Attributes of a range, kept by address until changed, unmapped or the
 * process exits; fork() passes all but the pins to the child.  The NO_
 * and UN advices take GM_NODE_ALL, or a node to undo only that node's.
 */
#define MADV_PREFERRED_LOCATION	201	/* pages should live on hnid */
#define MADV_NO_PREFERRED_LOCATION 202	/* forget the preferred location */
#define MADV_PIN		203	/* keep on device hnid, never evict */
#define MADV_UNPIN		204	/* let the pages be evicted again */
#define MADV_ACCESSED_BY	205	/* device hnid maps the pages in place */
#define MADV_NO_ACCESSED_BY	206	/* it migrates them again */
#define MADV_READ_MOSTLY	207	/* devices read copies; writes collapse */
#define MADV_NO_READ_MOSTLY	208	/* one location per page again */

/*
 * hnid for "every node" where an advice accepts it: MADV_DONTNEED,
 * MADV_PREFETCH (each page to its preferred location) and the NO_/UN advices.
 */
#define GM_NODE_ALL		(-1)

#endif /* _UAPI_LINUX_GMEM_H */
