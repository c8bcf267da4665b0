// SPDX-License-Identifier: MIT
/* make stress: the long run of the model-checked stress test. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "stress.h"

#include "uhmm.h"

static void log_stderr(void *arg, int level, const char *msg)
{
	(void)arg;
	fprintf(stderr, "uhmm[%d]: %s\n", level, msg);
}

int main(int argc, char **argv)
{
	struct stress_opts o = { .seed = (uint64_t)time(NULL), .seconds = 60, .threads = 4, .regions = 3,
				 .pages = 32, .fork = true };
	struct stress_report r;
	struct uhmm_features f;
	int c, ret;

	while ((c = getopt(argc, argv, "s:t:T:r:p:n:FCx:i:mHh")) != -1) {
		switch (c) {
		case 's': o.seed = strtoull(optarg, NULL, 0); break;
		case 't': o.seconds = atof(optarg); break;
		case 'T': o.threads = atoi(optarg); break;
		case 'r': o.regions = atoi(optarg); break;
		case 'p': o.pages = atoi(optarg); break;
		case 'n': o.max_ops = atol(optarg); break;
		case 'F': o.fork = false; break;
		case 'C': o.no_chaos = true; break;
		case 'x': o.skip_ops = optarg; break;
		case 'm': o.mark = true; break;
		case 'H': o.huge = true; break;
		case 'i': o.inject = optarg; break;
		default:
			fprintf(stderr, "usage: %s [-s SEED] [-t SECONDS] [-T THREADS] [-r REGIONS] [-p PAGES] "
					"[-n OPS_PER_THREAD] [-F (no fork)] [-C (no chaos thread)] [-x OPS_TO_SKIP]\n"
					"  [-m (mark each operation in the trace; with UHMM_TRACE=file)]\n"
					"  [-H (huge: 2 MiB regions, THP allowed, whole-region migrations as units)]\n"
					"  [-i RULES (uhmm_fault_inject() rules for the run, e.g. -i %s)]\n"
					"  operations: S store, C check, W device write, R device read, M to device,\n"
					"  Y to system, L release, D madvise(DONTNEED), F mmap(MAP_FIXED) over it, P mprotect,\n"
					"  X mremap, K fork, E device-exclusive, U whole region to device or back (-H)\n",
					argv[0], STRESS_ABSORBED_FAULTS);
			return c == 'h' ? 0 : 2;
		}
	}
	if (o.huge)
		o.pages = 512;	/* a region is one 2 MiB unit */
	if (o.threads < 1 || o.regions < 1 || o.pages < 1 || o.seconds <= 0)
		return 2;
	uhmm_set_logger(log_stderr, NULL);
	/* a device copy racing a migration may get EFAULT where kernel-mode accesses cannot wait
	 * (unprivileged, or UHMM_FAULTS=thread): documented, not an error */
	if (uhmm_query_features(&f) == 0 && !(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS))
		o.efault_ok = true;
	printf("stress: seed %llu (rerun with -s %llu)\n", (unsigned long long)o.seed, (unsigned long long)o.seed);
	fflush(stdout);
	ret = stress_run(&o, &r);
	stress_print(&o, &r);
	printf("stress: %s\n", ret ? "FAILED" : "passed");
	return ret;
}
