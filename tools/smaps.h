/* SPDX-License-Identifier: MIT */
/* What /proc/self/smaps says of one mapping (the THP tests and `uhmm bench --thp`). */
#ifndef UHMM_TOOLS_SMAPS_H
#define UHMM_TOOLS_SMAPS_H

#include <stdint.h>
#include <stdio.h>

/* KiB of the mapping holding @p that are THP-backed (AnonHugePages), or -1 if smaps cannot be read. */
static inline long smaps_thp_kib(const void *p)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char line[256];
	int in = 0;
	long kib = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e, v;

		if (sscanf(line, "%lx-%lx ", &s, &e) == 2)
			in = (uintptr_t)p >= s && (uintptr_t)p < e;
		else if (in && sscanf(line, "AnonHugePages: %lu kB", &v) == 1)
			kib = (long)v;
	}
	fclose(f);
	return kib;
}

#endif
