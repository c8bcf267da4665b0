// SPDX-License-Identifier: MIT
#include "harness.h"

TEST(features_probe)
{
	struct uhmm_features f;

	ASSERT_EQ(uhmm_query_features(NULL), -EINVAL);
	ASSERT_OK(uhmm_query_features(&f));
	ASSERT_EQ(f.page_size, 4096);
	ASSERT_TRUE(f.kernel_release[0] != '\0');
	if (!(f.flags & UHMM_FEAT_UFFD))
		SKIP("no userfaultfd on this kernel: %s", strerror(-f.uffd_error));
	ASSERT_TRUE(f.flags & UHMM_FEAT_MADV_POPULATE);
	ASSERT_TRUE(f.flags & UHMM_FEAT_UFFD_EVENTS);
	ASSERT_TRUE(f.flags & UHMM_FEAT_PROCESS_VM);
	ASSERT_NE(f.uffd_ioctls, 0);
	if (strcmp(test_mode(), "fallback") == 0) {
		ASSERT_TRUE(f.flags & UHMM_FEAT_FALLBACK_FORCED);
		ASSERT_FALSE(f.flags & (UHMM_FEAT_PAGEMAP_SCAN | UHMM_FEAT_PROCMAP_QUERY));
	} else {
		ASSERT_FALSE(f.flags & UHMM_FEAT_FALLBACK_FORCED);
	}
	if (strcmp(test_mode(), "user") == 0) {
		/* unprivileged: PFNs are hidden; userfaultfd is user-mode-only
		 * unless the sysctl allows more */
		ASSERT_FALSE(f.flags & UHMM_FEAT_PFN_VISIBLE);
		if (f.unprivileged_userfaultfd == 0) {
			ASSERT_EQ(f.uffd_source, UHMM_UFFD_USER_MODE_ONLY);
			ASSERT_FALSE(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS);
		}
	} else if (geteuid() == 0) {
		ASSERT_EQ(f.uffd_source, UHMM_UFFD_SYSCALL);
		/* faults in the faulting thread: kernel-mode accesses get EFAULT */
		ASSERT_EQ(!(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS), !strcmp(test_mode(), "thread"));
		ASSERT_TRUE(f.flags & UHMM_FEAT_PFN_VISIBLE);
	}
	ASSERT_TRUE(f.flags & UHMM_FEAT_UFFD_SIGBUS);	/* 4.14+ */
	ASSERT_EQ(!(f.flags & UHMM_FEAT_FAULTS_IN_THREAD), !!strcmp(test_mode(), "thread"));
}

/* Probed once: a second query returns the same answer. */
TEST(features_stable)
{
	struct uhmm_features a, b;

	ASSERT_OK(uhmm_query_features(&a));
	ASSERT_OK(uhmm_query_features(&b));
	ASSERT_EQ(memcmp(&a, &b, sizeof(a)), 0);
}
