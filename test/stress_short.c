// SPDX-License-Identifier: MIT
/*
 * Short runs of the model-checked stress test, in every mode (make stress
 * runs the long one):
 *  - one owner thread: CPU stores and loads, device READ/WRITE/EXCLUSIVE on
 *    three device instances (devices 0 and 1, and a second instance of 0),
 *    migrations both ways, RELEASE, DONTNEED, mmap(MAP_FIXED) over a region,
 *    mremap, mprotect, fork with a verifying child;
 *  - three owner threads sharing the devices (RELEASE evicts everybody's
 *    pages, fork copies everybody's, one's mremap races another's fork);
 *  - one owner and the chaos thread (migrations both ways, EXCLUSIVE,
 *    RELEASE and READs of the owner's pages at random by every instance,
 *    racing its stores, DONTNEED, mmap(MAP_FIXED), mremap, mprotect, fork);
 *  - two owners and the chaos thread with the failures uhmm absorbs
 *    injected (STRESS_ABSORBED_FAULTS): the model must still hold;
 *  - one owner and the chaos thread on 2 MiB regions (-H): whole-region
 *    migrations move 2 MiB units whole, amid every other operation.
 * UHMM_STRESS_SEED reruns a seed.
 */
#include <time.h>

#include "harness.h"
#include "stress/stress.h"

static void run(int threads, bool fork, bool chaos, const char *skip, const char *inject, bool huge)
{
	struct stress_opts o = { .seconds = 2, .threads = threads, .regions = 3, .pages = huge ? 512 : 32,
				 .fork = fork, .no_chaos = !chaos, .skip_ops = skip, .inject = inject, .huge = huge };
	struct stress_report r;
	const char *env = getenv("UHMM_STRESS_SEED");
	int ret;

	o.seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
	/* documented: README, unprivileged use; uhmm(7), fault modes */
	o.efault_ok = strcmp(test_mode(), "user") == 0 || strcmp(test_mode(), "thread") == 0;
	ret = stress_run(&o, &r);
	stress_print(&o, &r);
	ASSERT_EQ(r.lost_writes, 0);
	ASSERT_EQ(r.mismatches, 0);
	ASSERT_EQ(r.unexpected, 0);
	ASSERT_GT(r.ops, 100);
	ASSERT_GT(r.pages_to_device, 0);
	ASSERT_GT(r.pages_to_system, 0);
	ASSERT_EQ(ret, 0);
	if (inject)
		ASSERT_GT(r.injected, 0);
	if (huge)
		ASSERT_GT(r.units, 0);	/* the regions start empty: their first whole migration is a unit */
}

static void short_run(int threads, bool fork, bool chaos, const char *skip, const char *inject)
{
	run(threads, fork, chaos, skip, inject, false);
}

TEST(stress_short_one_owner_with_fork) { short_run(1, true, false, NULL, NULL); }
TEST(stress_short_three_owners) { short_run(3, true, false, NULL, NULL); }
/*
 * The chaos thread acts on the address a region was just moved from, which
 * the process may have reused for memory uhmm or the device uses: that hung
 * uhmm until its own memory came from uhmm_kmalloc() (docs/architecture.md §3).
 */
TEST(stress_short_one_owner_and_chaos) { short_run(1, true, true, NULL, NULL); }
TEST(stress_short_with_injected_faults) { short_run(2, true, true, NULL, STRESS_ABSORBED_FAULTS); }
/* 2 MiB regions, THP allowed, whole-region migrations: units move whole amid every other operation. */
TEST(stress_short_huge_units) { run(1, true, true, NULL, NULL, true); }
