// SPDX-License-Identifier: GPL-2.0
/*
 * What GMEM's tracking costs per page: touch every page of a peer-shared
 * range and read the growth of radix_tree_node (the nodes of the logical
 * page table's XArray, whose slots hold the entries themselves) in
 * /proc/slabinfo.  Two cases: pages only the CPU touched ("cpu"), and pages
 * an NPU job wrote first, which live on the NPU ("npu"; only if
 * /dev/gmem_npu0 exists).
 *
 * Prints one line per case: "tracking_bench case=C pages=N
 * xarray_bytes_per_page=X total_bytes_per_page=X".  Not a test.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/gmem.h>

#include "../../../../samples/rust/gmem_npu_sim/gmem_npu_sim_uapi.h"

/*
 * Bytes held by the active objects of slab cache @name, or -1.  SLUB counts
 * the free objects of per-CPU slabs as active: the cache is shrunk first
 * (its sysfs "shrink" file), so that nodes freed by an earlier case and
 * reused by this one are not counted as in use all along.
 */
static long slab_bytes(const char *name)
{
	char line[512], cache[64], path[128];
	long active, total, objsize;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink", name);
	f = fopen(path, "w");
	if (f) {
		fputs("1\n", f);
		fclose(f);
	}
	f = fopen("/proc/slabinfo", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s %ld %ld %ld", cache, &active, &total,
			   &objsize) == 4 && !strcmp(cache, name)) {
			fclose(f);
			return active * objsize;
		}
	}
	fclose(f);
	return -1;
}

/* Makes every page of @p (@len bytes) present: from the CPU, or on NPU @npu. */
static int touch(char *p, size_t len, size_t page, int npu)
{
	struct gmem_npu_job job = {
		.op = GMEM_NPU_OP_FILL32,
		.dst = (unsigned long)p,
		.len = len,
		.value = 1,
	};

	if (npu >= 0)
		return ioctl(npu, GMEM_NPU_IOC_RUN, &job);
	for (size_t off = 0; off < len; off += page)
		p[off] = 1;
	return 0;
}

/* Measures one case; 0 or 1 (failed). */
static int measure(const char *name, size_t len, int npu)
{
	size_t page = sysconf(_SC_PAGESIZE);
	long x0, x1, pages = len / page;
	char *p;

	x0 = slab_bytes("radix_tree_node");
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED, -1, 0);
	if (p == MAP_FAILED || x0 < 0 || touch(p, len, page, npu)) {
		perror("tracking_bench");
		return 1;
	}
	x1 = slab_bytes("radix_tree_node");
	printf("tracking_bench case=%s pages=%ld xarray_bytes_per_page=%.2f ",
	       name, pages, (double)(x1 - x0) / pages);
	printf("total_bytes_per_page=%.2f\n", (double)(x1 - x0) / pages);
	munmap(p, len);
	return 0;
}

int main(int argc, char **argv)
{
	size_t len = (argc > 1 ? strtoul(argv[1], NULL, 0) : 256) << 20;
	int npu, ret;

	ret = measure("cpu", len, -1);
	npu = open("/dev/gmem_npu0", O_RDWR);
	if (npu >= 0 && ioctl(npu, GMEM_NPU_IOC_ATTACH, 0)) {
		perror("tracking_bench: attach");
		ret = 1;
	} else if (npu >= 0) {
		ret |= measure("npu", len, npu);
	}
	if (npu >= 0)
		close(npu);
	return ret;
}
