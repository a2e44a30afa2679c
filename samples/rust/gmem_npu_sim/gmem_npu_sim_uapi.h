/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of the GMEM simulated NPU (samples/rust/gmem_npu_sim).
 *
 * Each NPU is a misc device, /dev/gmem_npuN.  A process attaches its address
 * space to an NPU (GMEM_NPU_IOC_ATTACH) and then runs jobs on the virtual
 * addresses of its MAP_PEER_SHARED mappings (GMEM_NPU_IOC_RUN): the NPU reads
 * and writes the process's memory through its own MMU, and GMEM moves pages
 * between host memory and the NPU's DRAM as they are touched.
 *
 * This header is includable from userspace, like lib/test_hmm_uapi.h.
 */
#ifndef _GMEM_NPU_SIM_UAPI_H
#define _GMEM_NPU_SIM_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The NPU raises translation faults into GMEM (otherwise it is prefaulted). */
#define GMEM_NPU_INFO_FAULTABLE		(1U << 0)

/**
 * struct gmem_npu_info - what GMEM_NPU_IOC_INFO reports
 * @hnid: the NPU's GMEM node id, the first argument of hmadvise(2)
 * @page_size: the NPU's page size in bytes
 * @dram_size: bytes of NPU DRAM managed by GMEM
 * @flags: GMEM_NPU_INFO_*
 * @reserved: zero
 */
struct gmem_npu_info {
	__u32 hnid;
	__u32 page_size;
	__u64 dram_size;
	__u32 flags;
	__u32 reserved;
};

/* dst[i] = (__u32)value, for len / 4 words. */
#define GMEM_NPU_OP_FILL32	1
/* len bytes from src0 to dst (the ranges must not overlap). */
#define GMEM_NPU_OP_COPY	2
/* dst[i] = src0[i] + src1[i] (u32, wrapping), for len / 4 words. */
#define GMEM_NPU_OP_ADD32	3
/* value = the sum of the len / 4 u32 words at src0, as a __u64. */
#define GMEM_NPU_OP_SUM32	4

/*
 * Run the job on @n (1 to 8) engines at once, each on an equal share of its
 * words, as a GPU runs a kernel on many cores.  Engines that miss in the
 * NPU's TLB at the same time report their faults together: the NPU's fault
 * buffer is handed to GMEM as one batch once every engine of the job has
 * stalled or finished, and the engines replay after it.
 */
#define GMEM_NPU_JOB_ENGINES_MASK	0x7U
#define GMEM_NPU_JOB_ENGINES(n)		(((n) - 1) & GMEM_NPU_JOB_ENGINES_MASK)

/**
 * struct gmem_npu_job - one synchronous job (GMEM_NPU_IOC_RUN)
 * @op: GMEM_NPU_OP_*
 * @flags: GMEM_NPU_JOB_ENGINES(n) or zero (one engine)
 * @dst: destination address (FILL32, COPY, ADD32)
 * @src0: first source address (COPY, ADD32, SUM32)
 * @src1: second source address (ADD32)
 * @len: bytes; a non-zero multiple of 4
 * @value: FILL32's pattern; SUM32's result
 *
 * Addresses are virtual addresses of the attached process, 4-byte aligned.
 */
struct gmem_npu_job {
	__u32 op;
	__u32 flags;
	__u64 dst;
	__u64 src0;
	__u64 src1;
	__u64 len;
	__u64 value;
};

/**
 * struct gmem_npu_stats - NPU counters (GMEM_NPU_IOC_STATS)
 * @faults: device faults raised into GMEM since the driver was loaded
 * @zero_fills: pages that GMEM zero-filled in NPU DRAM (first touch)
 * @migrations_to_dev: pages copied from host memory (or another NPU) here
 * @migrations_to_host: pages copied from here back to host memory
 * @evictions: pages evicted from here to make room
 * @tlb_invalidations: NPU TLB invalidation requests
 * @resident_pages: pages of NPU DRAM in use now
 * @dram_pages: pages of NPU DRAM managed by GMEM
 * @fault_batches: batches of faults handed to GMEM (a fault buffer's contents)
 * @prefetched_pages: pages GMEM moved here beyond the faulting ones (density
 *	prefetch)
 */
struct gmem_npu_stats {
	__u64 faults;
	__u64 zero_fills;
	__u64 migrations_to_dev;
	__u64 migrations_to_host;
	__u64 evictions;
	__u64 tlb_invalidations;
	__u64 resident_pages;
	__u64 dram_pages;
	__u64 fault_batches;
	__u64 prefetched_pages;
};

#define GMEM_NPU_IOC_MAGIC	'N'

/*
 * INFO: describe the NPU.
 * ATTACH: attach the calling process's address space (once per open file);
 *	EBUSY if this file is already attached.
 * RUN: run a job to completion.  EINVAL before ATTACH, for a bad op, a zero
 *	or unaligned length, an unaligned address, an operand that wraps past
 *	the end of the address space or unknown flags; EFAULT
 *	when the job touches an address outside the attached process's
 *	MAP_PEER_SHARED mappings (the job stops there).
 * STATS: read the counters.
 */
#define GMEM_NPU_IOC_INFO	_IOR(GMEM_NPU_IOC_MAGIC, 0, struct gmem_npu_info)
#define GMEM_NPU_IOC_ATTACH	_IO(GMEM_NPU_IOC_MAGIC, 1)
#define GMEM_NPU_IOC_RUN	_IOWR(GMEM_NPU_IOC_MAGIC, 2, struct gmem_npu_job)
#define GMEM_NPU_IOC_STATS	_IOR(GMEM_NPU_IOC_MAGIC, 3, struct gmem_npu_stats)

#endif /* _GMEM_NPU_SIM_UAPI_H */
