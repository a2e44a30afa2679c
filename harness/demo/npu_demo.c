// SPDX-License-Identifier: GPL-2.0
/*
 * make run: the CPU and two simulated NPUs (samples/rust/gmem_npu_sim) take
 * turns on one MAP_PEER_SHARED buffer, at the same virtual addresses, and
 * GMEM moves its pages to whoever touches them:
 *
 *	CPU	buf[i] = i
 *	npu0	buf = buf + buf		(ADD32, in place)
 *	npu1	sum = SUM32(buf)	(the pages move from npu0 to npu1)
 *	CPU	buf[i] == 2 * i ?	(the pages come home)
 *
 * The NPUs' counters after each step show where the pages went.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/gmem.h>

#include "gmem_npu_sim_uapi.h"

#define LEN	(256 << 10)

static const char *const npu_path[] = { "/dev/gmem_npu0", "/dev/gmem_npu1" };
static int npu[2];

static int run(int fd, struct gmem_npu_job *job, const char *what)
{
	if (!ioctl(fd, GMEM_NPU_IOC_RUN, job))
		return 0;
	printf("%s: %s\n", what, strerror(errno));
	return -1;
}

static void show(const char *step)
{
	struct gmem_npu_stats s;

	printf("\n%s\n", step);
	printf("        %10s %10s %10s %10s %10s\n", "faults", "zero_fills",
	       "to_dev", "to_host", "resident");
	for (int i = 0; i < 2; i++) {
		if (ioctl(npu[i], GMEM_NPU_IOC_STATS, &s)) {
			printf("  npu%d: STATS: %s\n", i, strerror(errno));
			continue;
		}
		printf("  npu%d  %10llu %10llu %10llu %10llu %10llu\n", i,
		       (unsigned long long)s.faults,
		       (unsigned long long)s.zero_fills,
		       (unsigned long long)s.migrations_to_dev,
		       (unsigned long long)s.migrations_to_host,
		       (unsigned long long)s.resident_pages);
	}
}

int main(void)
{
	struct gmem_npu_info info;
	struct gmem_npu_job job;
	unsigned long long want = 0;
	size_t words = LEN / 4, bad = 0;
	unsigned int *buf;

	for (int i = 0; i < 2; i++) {
		npu[i] = open(npu_path[i], O_RDWR);
		if (npu[i] < 0 || ioctl(npu[i], GMEM_NPU_IOC_INFO, &info) ||
		    ioctl(npu[i], GMEM_NPU_IOC_ATTACH, 0)) {
			printf("%s: %s\nFAIL\n", npu_path[i], strerror(errno));
			return 1;
		}
		printf("npu%d: %s, GMEM node %u, %llu MiB of DRAM, %s\n", i,
		       npu_path[i], info.hnid,
		       (unsigned long long)info.dram_size >> 20,
		       info.flags & GMEM_NPU_INFO_FAULTABLE ?
		       "faults into GMEM" : "jobs prefaulted through GMEM");
	}
	buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap(MAP_PEER_SHARED)");
		return 1;
	}
	printf("buf = %p: %d KiB (%d pages) of MAP_PEER_SHARED memory\n",
	       (void *)buf, LEN >> 10, LEN / 4096);
	for (size_t i = 0; i < words; i++) {
		buf[i] = i;
		want += 2 * i;
	}
	show("CPU: buf[i] = i (no NPU involved yet)");

	memset(&job, 0, sizeof(job));
	job.op = GMEM_NPU_OP_ADD32;
	job.dst = (unsigned long)buf;
	job.src0 = (unsigned long)buf;
	job.src1 = (unsigned long)buf;
	job.len = LEN;
	if (run(npu[0], &job, "npu0 ADD32"))
		goto fail;
	show("npu0: buf = buf + buf");

	memset(&job, 0, sizeof(job));
	job.op = GMEM_NPU_OP_SUM32;
	job.src0 = (unsigned long)buf;
	job.len = LEN;
	if (run(npu[1], &job, "npu1 SUM32"))
		goto fail;
	show("npu1: SUM32(buf)");
	printf("  sum = %llu (want %llu)\n", (unsigned long long)job.value, want);

	for (size_t i = 0; i < words; i++)
		bad += buf[i] != 2 * i;
	show("CPU: buf[i] == 2 * i ?");
	printf("  %zu of %zu words wrong\n", bad, words);

	if (job.value != want || bad)
		goto fail;
	printf("\nOK\n");
	return 0;
fail:
	printf("\nFAIL\n");
	return 1;
}
