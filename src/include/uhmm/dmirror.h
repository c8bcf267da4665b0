/* SPDX-License-Identifier: MIT */
/*
 * The reference device: a simulated device that mirrors the address space
 * of the process that opened it, like the kernel's lib/test_hmm.c
 * ("dmirror"), driven by commands instead of ioctls. It is a plain consumer
 * of uhmm's public API; see uhmm_dmirror(3) and CONFORMANCE.md.
 */
#ifndef UHMM_DMIRROR_H
#define UHMM_DMIRROR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_dmirror;	/* one open instance: like an open /dev/hmm_dmirrorN */

/**
 * uhmm_dmirror_open() - open device @device (0 or 1)
 * Return: 0; -ENODEV for any other device (2 and 3, device-coherent memory,
 * are not provided); -EINVAL if @out is NULL; an error of uhmm_mm_get().
 */
int uhmm_dmirror_open(unsigned int device, struct uhmm_dmirror **out);

/**
 * uhmm_dmirror_close() - evict the device's memory back to system memory
 * and free the instance. Return: 0; -EINVAL for NULL; -EBUSY if device
 * pages stay referenced after eviction (nothing is freed then).
 */
int uhmm_dmirror_close(struct uhmm_dmirror *dmirror);

struct uhmm_dmirror_cmd {
	uint64_t addr;   /* in: page-aligned address in this process that the device works on */
	uint64_t ptr;    /* in: buffer the device copies to or from                            */
	uint64_t npages; /* in: pages (for FLAGS: the flag word)                               */
	uint64_t cpages; /* out: pages copied / migrated / snapshotted                         */
	uint64_t faults; /* out: device fault passes                                           */
};

enum {
	UHMM_DMIRROR_READ, UHMM_DMIRROR_WRITE,
	UHMM_DMIRROR_MIGRATE_TO_DEV, UHMM_DMIRROR_MIGRATE_TO_SYS,
	UHMM_DMIRROR_SNAPSHOT, UHMM_DMIRROR_EXCLUSIVE, UHMM_DMIRROR_CHECK_EXCLUSIVE,
	UHMM_DMIRROR_RELEASE, UHMM_DMIRROR_FLAGS,
};

/**
 * uhmm_dmirror_cmd() - run one command
 * Return: 0 or a negative errno: -EINVAL (bad instance, command or range),
 * -EFAULT, -EPERM, -EBUSY, -ENOMEM, -ENOENT, -EOPNOTSUPP (see
 * uhmm_dmirror(3) for each command); -EBADF if the instance belongs to
 * another process's address space (a forked child must open its own).
 * On error cpages and faults are left unchanged.
 */
int uhmm_dmirror_cmd(struct uhmm_dmirror *dmirror, unsigned int cmd,
		     struct uhmm_dmirror_cmd *c);

/**
 * uhmm_dmirror_memstats() - the device memory counters, summed over the
 * instance's pagemaps (a uhmm extension: tests check that no device page
 * leaks). Return: 0, or -EINVAL for NULL.
 */
struct uhmm_pagemap_stats;
int uhmm_dmirror_memstats(struct uhmm_dmirror *dmirror, struct uhmm_pagemap_stats *out);

#define UHMM_DMIRROR_FLAG_FAIL_ALLOC		(1ULL << 0)
/*
 * Copy data between system and device memory, never move pages (by default
 * the device's memory is host memory uhmm moves pages into and out of,
 * uhmm_pagemap_set_host_memory()): for tests of uhmm's copying paths. The
 * FLAGS command sets the whole flag word.
 */
#define UHMM_DMIRROR_FLAG_COPY			(1ULL << 1)

/* SNAPSHOT writes one byte per page to ptr */
#define UHMM_DMIRROR_PROT_ERROR			0xFF
#define UHMM_DMIRROR_PROT_NONE			0x00
#define UHMM_DMIRROR_PROT_READ			0x01
#define UHMM_DMIRROR_PROT_WRITE			0x02
#define UHMM_DMIRROR_PROT_PMD			0x04
#define UHMM_DMIRROR_PROT_PUD			0x08
#define UHMM_DMIRROR_PROT_ZERO			0x10
#define UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL	0x20
#define UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE	0x30
#define UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL	0x40
#define UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE	0x50

#ifdef __cplusplus
}
#endif

#endif /* UHMM_DMIRROR_H */
