// SPDX-License-Identifier: GPL-2.0
/*
 * What GMEM's tracking costs per page: touch every page of a peer-shared
 * range and read the growth of the gmem_mapping slab (one GmMapping per
 * page) and of radix_tree_node (the XArray's nodes) in /proc/slabinfo.
 *
 * Prints one line: "tracking_bench pages=N mapping_bytes_per_page=X
 * xarray_bytes_per_page=Y total_bytes_per_page=Z".  Not a test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/gmem.h>

/* Bytes held by the active objects of slab cache @name, or -1. */
static long slab_bytes(const char *name)
{
	char line[512], cache[64];
	long active, total, objsize;
	FILE *f = fopen("/proc/slabinfo", "r");

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

int main(int argc, char **argv)
{
	size_t size_mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 256;
	size_t page = sysconf(_SC_PAGESIZE), len = size_mib << 20;
	long m0, x0, m1, x1, pages = len / page;
	char *p;

	m0 = slab_bytes("gmem_mapping");
	x0 = slab_bytes("radix_tree_node");
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED, -1, 0);
	if (p == MAP_FAILED || m0 < 0 || x0 < 0) {
		perror("tracking_bench");
		return 1;
	}
	for (size_t off = 0; off < len; off += page)
		p[off] = 1;
	m1 = slab_bytes("gmem_mapping");
	x1 = slab_bytes("radix_tree_node");
	printf("tracking_bench pages=%ld mapping_bytes_per_page=%.2f ", pages,
	       (double)(m1 - m0) / pages);
	printf("xarray_bytes_per_page=%.2f total_bytes_per_page=%.2f\n",
	       (double)(x1 - x0) / pages, (double)(m1 - m0 + x1 - x0) / pages);
	munmap(p, len);
	return 0;
}
