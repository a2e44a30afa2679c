// SPDX-License-Identifier: GPL-2.0
/*
 * make run: show MAP_PEER_SHARED and hmadvise() from userspace.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/gmem.h>

static void show_vmflags(void *addr)
{
	char line[512], want[32];
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	snprintf(want, sizeof(want), "%lx-", (unsigned long)addr);
	while (f && fgets(line, sizeof(line), f)) {
		if (strchr(line, '-') && strchr(line, ' ') &&
		    strchr(line, '-') < strchr(line, ' '))
			in = !strncmp(line, want, strlen(want));
		else if (in && !strncmp(line, "VmFlags:", 8))
			printf("  smaps %s", line);
	}
	if (f)
		fclose(f);
}

int main(void)
{
	size_t len = 4 << 20;
	char *p;
	long r;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_PEER_SHARED, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap(MAP_PEER_SHARED)");
		return 1;
	}
	printf("mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_PEER_SHARED, 4 MiB) = %p\n", p);
	show_vmflags(p);
	memset(p, 0x5a, len);

	r = syscall(__NR_hmadvise, 0, (unsigned long)p, len, MADV_PREFETCH);
	printf("hmadvise(0, %p, 4 MiB, MADV_PREFETCH) = %ld\n", p, r);
	r = syscall(__NR_hmadvise, GM_NODE_ALL, (unsigned long)p, 4096,
		    MADV_DONTNEED);
	printf("hmadvise(GM_NODE_ALL, %p, 4 KiB, MADV_DONTNEED) = %ld; "
	       "p[0] is now %d, p[4096] is still 0x%x\n", p, r, p[0],
	       (unsigned char)p[4096]);
	r = syscall(__NR_hmadvise, 0, (unsigned long)p + 1, len, MADV_PREFETCH);
	printf("hmadvise(0, %p, ...) = %ld (%s)\n", p + 1, r, strerror(errno));
	r = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_ANONYMOUS |
		 MAP_PEER_SHARED, -1, 0) == MAP_FAILED ? -1 : 0;
	printf("mmap(MAP_SHARED|MAP_PEER_SHARED) = %ld (%s)\n", r,
	       strerror(errno));
	return 0;
}
