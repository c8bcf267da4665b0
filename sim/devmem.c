// SPDX-License-Identifier: MIT
/*
 * The reference device's memory and the commands that migrate to and from
 * it. Device memory arrives with the migration API; until then the device
 * mirrors system memory only.
 */
#include <errno.h>

#include "dmirror_internal.h"

static char device_owners[DM_NDEVICES];

void *dmirror_device_owner(unsigned int device)
{
	return &device_owners[device];
}

int dmirror_devmem_attach(struct uhmm_dmirror *dm)
{
	dm->devmem = NULL;
	return 0;
}

void dmirror_devmem_detach(struct uhmm_dmirror *dm)
{
	(void)dm;
}

int dmirror_devmem_copy(struct uhmm_dmirror *dm, uint64_t pfn, void *buf, int to_device)
{
	(void)dm;
	(void)pfn;
	(void)buf;
	(void)to_device;
	return -EFAULT;
}

int dmirror_devmem_is_local(struct uhmm_dmirror *dm, uint64_t pfn)
{
	(void)dm;
	(void)pfn;
	return 0;
}

int dmirror_migrate_cmd(struct uhmm_dmirror *dm, unsigned int cmd, struct uhmm_dmirror_cmd *c)
{
	(void)dm;
	(void)cmd;
	(void)c;
	return -EOPNOTSUPP;
}
