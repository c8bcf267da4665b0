// SPDX-License-Identifier: MIT
/*
 * Two reference devices and the CPU share one buffer, and pages move to
 * whoever uses them. Run it under `uhmm trace` and draw the result with
 * `uhmm residency` (README: the picture of this program).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uhmm.h>
#include <uhmm/dmirror.h>

#define NPAGES 1024
#define PAGE 4096UL

static struct uhmm_dmirror *dev[2];
static char *scratch;	/* the devices' read-back buffer */

/*
 * A device command on [addr, addr + npages). Before migrating, the device
 * reads the range: that pulls pages the other device holds back to system
 * memory (migration itself only takes system pages, as in the kernel).
 */
static int migrate(int d, unsigned int cmd, char *addr, uint64_t npages)
{
	struct uhmm_dmirror_cmd c = { .addr = (uintptr_t)addr, .ptr = (uintptr_t)scratch, .npages = npages };
	int ret = 0;

	if (cmd == UHMM_DMIRROR_MIGRATE_TO_DEV)
		ret = uhmm_dmirror_cmd(dev[d], UHMM_DMIRROR_READ, &c);
	ret = ret ? ret : uhmm_dmirror_cmd(dev[d], cmd, &c);
	usleep(2000);	/* let time pass between phases, for the picture */
	return ret;
}

/* The CPU reads every @stride-th page of [addr, addr + npages): those fault back. */
static long cpu_touch(const char *addr, uint64_t npages, uint64_t stride)
{
	long sum = 0;

	for (uint64_t i = 0; i < npages; i += stride)
		sum += addr[i * PAGE];
	usleep(2000);
	return sum;
}

int main(void)
{
	char *buf = (char *)mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	const uint64_t half = NPAGES / 2, quarter = NPAGES / 4;
	int ret;

	scratch = (char *)malloc(NPAGES * PAGE);
	for (int d = 0; d < 2; d++)
		if ((ret = uhmm_dmirror_open((unsigned int)d, &dev[d])) != 0) {
			fprintf(stderr, "two_devices: device %d: %s\n", d, strerror(-ret));
			return 1;
		}
	memset(buf, 7, NPAGES * PAGE);
	usleep(2000);

	ret = migrate(0, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, half);		/* device 0 takes the first half */
	ret |= migrate(1, UHMM_DMIRROR_MIGRATE_TO_DEV, buf + half * PAGE, half);	/* device 1 the second */
	long sum = cpu_touch(buf, half, 64);	/* sparse CPU reads: 16-page windows come back */
	ret |= migrate(1, UHMM_DMIRROR_MIGRATE_TO_DEV, buf + quarter * PAGE, half);	/* device 1 takes the middle */
	ret |= migrate(0, UHMM_DMIRROR_MIGRATE_TO_SYS, buf, quarter);		/* device 0 gives its quarter back */
	sum += cpu_touch(buf + half * PAGE, half, 1);				/* the CPU reads the second half */
	ret |= migrate(0, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, NPAGES);		/* device 0 takes everything */
	munmap(buf + 3 * quarter * PAGE, quarter * PAGE);			/* the last quarter is freed */
	usleep(2000);
	sum += cpu_touch(buf, 3 * quarter, 1);					/* all back to the CPU */

	printf("two_devices: commands %s, CPU read %ld bytes of value 7 (expect %ld)\n", ret ? "FAILED" : "ok",
	       sum / 7, (long)(half / 64 + half + 3 * quarter));
	uhmm_dmirror_close(dev[0]);
	uhmm_dmirror_close(dev[1]);
	return ret || sum != 7 * (long)(half / 64 + half + 3 * quarter) ? 1 : 0;
}
