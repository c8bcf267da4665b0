/* SPDX-License-Identifier: MIT */
/*
 * What /proc/self/smaps says of one mapping: its THP-backed KiB (the THP
 * tests and `uhmm bench --thp`), its VmFlags (the stress test's report of a
 * mismatched page).
 */
#ifndef UHMM_TOOLS_SMAPS_H
#define UHMM_TOOLS_SMAPS_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/*
 * The rest of the line starting with @field in the entry of the mapping
 * holding @p, into @out (@size bytes, newline dropped), and the mapping's
 * range into @start/@end. 1 if found, 0 if not, -1 if smaps cannot be read.
 */
static inline int smaps_field(const void *p, const char *field, char *out, size_t size, unsigned long *start,
			      unsigned long *end)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	size_t flen = strlen(field);
	char line[512];
	int in = 0, found = 0;

	if (!f)
		return -1;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char c;

		/* an entry's first line: "start-end perms ..." (perms start with r or -) */
		if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3 && (c == 'r' || c == '-')) {
			in = (uintptr_t)p >= s && (uintptr_t)p < e;
			*start = s;
			*end = e;
		} else if (in && strncmp(line, field, flen) == 0) {
			snprintf(out, size, "%.*s", (int)size - 1, line + flen);
			out[strcspn(out, "\n")] = '\0';
			found = 1;
		}
	}
	fclose(f);
	return found;
}

/* KiB of the mapping holding @p that are THP-backed (AnonHugePages), or -1 if smaps cannot be read. */
static inline long smaps_thp_kib(const void *p)
{
	unsigned long s, e, kib = 0;
	char v[64];
	int r = smaps_field(p, "AnonHugePages:", v, sizeof(v), &s, &e);

	if (r < 0)
		return -1;
	if (r > 0)
		sscanf(v, "%lu", &kib);
	return (long)kib;
}

#endif
