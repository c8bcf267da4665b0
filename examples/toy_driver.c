// SPDX-License-Identifier: MIT
/*
 * A device driver of its own on uhmm's public API (not the reference
 * device): device memory is host memory the CPU never maps at the
 * buffer's addresses. The driver migrates a buffer into it, runs a
 * "kernel" there, and the CPU's next touch of each page faults the
 * results back through the driver's migrate_to_ram().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>

#define NPAGES 64
#define PAGE 4096UL
#define INTS (NPAGES * PAGE / sizeof(int))

static char *vram;	/* the device's memory, page i of the pool at vram + i * PAGE */
static int owner;	/* identifies this driver's pages */

static void toy_page_free(struct uhmm_page *page) { (void)page; }

/* A CPU touched a device page: migrate it back (the kernel's migrate_to_ram). */
static int toy_migrate_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = {
		.mm = vmf->mm, .dst = &dst, .src = &src, .start = vmf->address, .end = vmf->address + PAGE,
		.pgmap_owner = &owner, .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page,
	};
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	if (src & UHMM_MIGRATE_PFN_MIGRATE) {
		void *sys = uhmm_migrate_alloc_system_page(&dst);	/* "dma" into a system page */

		if (!sys)
			return -ENOMEM;	/* uhmm poisons the page: SIGBUS, never zeros */
		memcpy(sys, vram + uhmm_page_index(uhmm_migrate_pfn_to_page(src)) * PAGE, PAGE);
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}
static const struct uhmm_pagemap_ops toy_ops = { .page_free = toy_page_free,
						 .migrate_to_ram = toy_migrate_to_ram };

/* System -> device, in the kernel's three steps. Returns pages moved. */
static uint64_t toy_migrate_to_device(struct uhmm_mm *mm, struct uhmm_pagemap *pool, void *buf)
{
	uint64_t src[NPAGES], dst[NPAGES], moved = 0;
	struct uhmm_migrate_vma m = {
		.mm = mm, .dst = dst, .src = src, .start = (uintptr_t)buf, .end = (uintptr_t)buf + NPAGES * PAGE,
		.pgmap_owner = &owner, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};

	if (uhmm_migrate_vma_setup(&m))
		return 0;
	for (uint64_t i = 0; i < m.npages; i++) {
		struct uhmm_page *page = uhmm_pagemap_page(pool, i);

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || uhmm_page_init(page))
			continue;
		/* copy the source (pfn = its virtual page; a hole reads as zeros) */
		if (src[i] & UHMM_MIGRATE_PFN_VALID)
			uhmm_access_vm(uhmm_migrate_pfn_to_pfn(src[i]) * PAGE, vram + i * PAGE, PAGE, 0);
		else
			memset(vram + i * PAGE, 0, PAGE);
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	}
	uhmm_migrate_vma_pages(&m);
	for (uint64_t i = 0; i < m.npages; i++)
		moved += (src[i] & UHMM_MIGRATE_PFN_MIGRATE) && dst[i];
	uhmm_migrate_vma_finalize(&m);
	return moved;
}

int main(void)
{
	struct uhmm_pagemap *pool;
	struct uhmm_stats before, after;
	struct uhmm_mm *mm;
	int *buf = (int *)mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int bad = 0, ret;

	vram = (char *)mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if ((ret = uhmm_mm_get(&mm)) || (ret = uhmm_pagemap_add(mm, NPAGES, &owner, &toy_ops, NULL, &pool))) {
		fprintf(stderr, "toy_driver: %s\n", strerror(-ret));
		return 1;
	}
	for (size_t i = 0; i < INTS; i++)
		buf[i] = (int)i;
	uhmm_stats(&before, sizeof(before));
	printf("migrated %llu of %d pages to the device\n",
	       (unsigned long long)toy_migrate_to_device(mm, pool, buf), NPAGES);

	for (size_t i = 0; i < INTS; i++)	/* the device's kernel: double everything */
		((int *)vram)[i] *= 2;

	for (size_t i = 0; i < INTS; i++)	/* the CPU reads the results: each page faults back */
		bad += buf[i] != 2 * (int)i;
	uhmm_stats(&after, sizeof(after));
	printf("CPU read the device's results: %s; %llu fault(s) brought %llu page(s) back\n",
	       bad ? "WRONG" : "all correct", (unsigned long long)(after.faults_device - before.faults_device),
	       (unsigned long long)(after.pages_to_system - before.pages_to_system));
	ret = uhmm_pagemap_remove(pool);
	uhmm_mm_put(mm);
	return bad || ret ? 1 : 0;
}
