// SPDX-License-Identifier: MIT
/* uhmm_range_fault(): argument checks and the per-page rules of CONFORMANCE.md section 3. */
#include <sys/wait.h>

#include "harness.h"

struct fix {
	struct uhmm_mm *mm;
	struct uhmm_interval_notifier n;
};

static bool fix_invalidate(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
			   unsigned long seq)
{
	uhmm_interval_set_seq(s, seq);
	return true;
}
static const struct uhmm_interval_notifier_ops fix_ops = { .invalidate = fix_invalidate };

static void fix_init(struct fix *f)
{
	int ret = uhmm_mm_get(&f->mm);

	if (ret == -EPERM || ret == -ENOSYS)
		SKIP("no userfaultfd");
	ASSERT_OK(ret);
	memset(&f->n, 0, sizeof(f->n));
	ASSERT_OK(uhmm_interval_notifier_insert(&f->n, f->mm, 0, 1ULL << 47, &fix_ops));
}

static void fix_fini(struct fix *f)
{
	ASSERT_OK(uhmm_interval_notifier_remove(&f->n));
	uhmm_mm_put(f->mm);
}

/* range_fault over [p, p + n pages) with a uniform request, retrying -EBUSY. */
static int fault(struct fix *f, void *p, size_t npages, uint64_t req, uint64_t *pfns)
{
	struct uhmm_range r = {
		.notifier = &f->n, .start = (uintptr_t)p, .end = (uintptr_t)p + npages * PAGE,
		.hmm_pfns = pfns, .default_flags = req,
	};
	int ret;

	do {
		r.notifier_seq = uhmm_interval_read_begin(&f->n);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	return ret;
}

TEST(range_fault_bad_args)
{
	struct fix f;
	char *p = map_anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[2];
	struct uhmm_range r = {
		.notifier = &f.n, .start = (uintptr_t)p, .end = (uintptr_t)p + 2 * PAGE, .hmm_pfns = pfns,
	};
	struct uhmm_range bad;

	fix_init(&f);
	r.notifier_seq = uhmm_interval_read_begin(&f.n);
	ASSERT_EQ(uhmm_range_fault(NULL), -EINVAL);
	bad = r; bad.notifier = NULL;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.hmm_pfns = NULL;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.start += 1;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.end = bad.start;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.end = bad.start - PAGE;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.default_flags = 1ULL << 40;
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	bad = r; bad.start = 1ULL << 47; bad.end = bad.start + PAGE;	/* outside the notifier */
	ASSERT_EQ(uhmm_range_fault(&bad), -EINVAL);
	ASSERT_OK(uhmm_range_fault(&r));
	fix_fini(&f);
}

TEST(range_fault_zero_page_then_write)
{
	struct fix f;
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[4];
	struct uhmm_features feat;

	fix_init(&f);
	uhmm_query_features(&feat);
	ASSERT_OK(fault(&f, p, 4, UHMM_PFN_REQ_FAULT, pfns));
	for (int i = 0; i < 4; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_FALSE(pfns[i] & UHMM_PFN_WRITE);		/* the zero page is read-only */
		if (!(feat.flags & UHMM_FEAT_FALLBACK_FORCED) || (feat.flags & UHMM_FEAT_PFN_VISIBLE))
			ASSERT_TRUE(uhmm_pfn_is_zero(pfns[i]));
	}
	ASSERT_OK(fault(&f, p, 4, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns));
	for (int i = 0; i < 4; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
		ASSERT_FALSE(uhmm_pfn_is_zero(pfns[i]));
		ASSERT_EQ(uhmm_pfn_to_pfn(pfns[i]), ((uintptr_t)p >> 12) + (uint64_t)i);
		ASSERT_EQ(uhmm_pfn_to_map_order(pfns[i]), 0);
	}
	fix_fini(&f);
}

TEST(range_fault_snapshot_only)
{
	struct fix f;
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[4];

	fix_init(&f);
	p[PAGE] = 1;
	ASSERT_OK(fault(&f, p, 4, 0, pfns));
	ASSERT_EQ(pfns[0], 0);				/* not present, not faulted */
	ASSERT_TRUE(pfns[1] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_WRITE);
	ASSERT_EQ(pfns[2], 0);
	fix_fini(&f);
}

/* Per-page requests through pfn_flags_mask: only the requested page is faulted. */
TEST(range_fault_per_page_request)
{
	struct fix f;
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[4] = { 0, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0, 0 };
	struct uhmm_range r = {
		.notifier = &f.n, .start = (uintptr_t)p, .end = (uintptr_t)p + 4 * PAGE,
		.hmm_pfns = pfns, .pfn_flags_mask = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE,
	};

	fix_init(&f);
	r.notifier_seq = uhmm_interval_read_begin(&f.n);
	ASSERT_OK(uhmm_range_fault(&r));
	ASSERT_EQ(pfns[0], 0);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_WRITE);
	ASSERT_EQ(pfns[2], 0);
	ASSERT_EQ(pfns[3], 0);
	fix_fini(&f);
}

TEST(range_fault_no_vma_and_prot_none)
{
	struct fix f;
	char *p = map_anon(3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[3];

	fix_init(&f);
	ASSERT_OK(munmap(p, PAGE));
	ASSERT_OK(mprotect(p + PAGE, PAGE, PROT_NONE));
	ASSERT_EQ(fault(&f, p, 3, UHMM_PFN_REQ_FAULT, pfns), -EFAULT);
	ASSERT_EQ(fault(&f, p + PAGE, 2, UHMM_PFN_REQ_FAULT, pfns), -EFAULT);
	/* Nothing was faulted: the third page is still not present. */
	ASSERT_OK(fault(&f, p, 3, 0, pfns));
	ASSERT_EQ(pfns[0], UHMM_PFN_ERROR);
	ASSERT_EQ(pfns[1], UHMM_PFN_ERROR);
	ASSERT_EQ(pfns[2], 0);
	fix_fini(&f);
}

TEST(range_fault_write_readonly_eperm)
{
	struct fix f;
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[4];

	fix_init(&f);
	ASSERT_OK(mprotect(p + 2 * PAGE, 2 * PAGE, PROT_READ));
	ASSERT_EQ(fault(&f, p, 4, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns), -EPERM);
	/* Checked before anything was faulted: the writable half is untouched too. */
	ASSERT_OK(fault(&f, p, 4, 0, pfns));
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(pfns[i], 0);
	ASSERT_OK(fault(&f, p + 2 * PAGE, 2, UHMM_PFN_REQ_FAULT, pfns));
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_FALSE(pfns[0] & UHMM_PFN_WRITE);
	fix_fini(&f);
}

/* [vvar] is a special (VM_PFNMAP) mapping: no fault there. */
TEST(range_fault_special_mapping)
{
	struct fix f;
	unsigned long long s = 0, e = 0;
	char line[256];
	FILE *m = fopen("/proc/self/maps", "r");
	uint64_t pfns[1];

	while (m && fgets(line, sizeof(line), m))
		if (strstr(line, "[vvar]") && sscanf(line, "%llx-%llx", &s, &e) == 2)
			break;
	if (m)
		fclose(m);
	if (!s)
		SKIP("no [vvar] mapping");
	fix_init(&f);
	ASSERT_EQ(fault(&f, (void *)(uintptr_t)s, 1, UHMM_PFN_REQ_FAULT, pfns), -EFAULT);
	ASSERT_OK(fault(&f, (void *)(uintptr_t)s, 1, 0, pfns));
	ASSERT_EQ(pfns[0], UHMM_PFN_ERROR);
	fix_fini(&f);
}

/* After fork() private pages are copy-on-write: not WRITE until a write fault. */
TEST(range_fault_cow_after_fork)
{
	struct fix f;
	char *p = map_anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *s = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	uint64_t pfns[2], spfn;
	int go[2], status;
	pid_t pid;

	fix_init(&f);
	memset(p, 1, 2 * PAGE);
	s[0] = 1;
	ASSERT_OK(pipe(go));
	pid = fork();
	if (pid == 0) {
		char x;

		_exit(read(go[0], &x, 1) == 1 && p[0] == 1 ? 0 : 1);
	}
	ASSERT_OK(fault(&f, p, 2, UHMM_PFN_REQ_FAULT, pfns));
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_FALSE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_OK(fault(&f, s, 1, UHMM_PFN_REQ_FAULT, &spfn));
	ASSERT_TRUE(spfn & UHMM_PFN_WRITE);		/* shared memory stays writable */
	ASSERT_OK(fault(&f, p, 2, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns));
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);		/* copy-on-write broken */
	p[0] = 2;
	ASSERT_EQ(write(go[1], "g", 1), 1);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_EQ(WEXITSTATUS(status), 0);		/* the child kept its copy */
	fix_fini(&f);
}

TEST(range_fault_private_file_mapping)
{
	struct fix f;
	int fd = make_tmpfile(2 * PAGE);
	char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	uint64_t pfns[2];

	fix_init(&f);
	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_OK(fault(&f, p, 2, UHMM_PFN_REQ_FAULT, pfns));
	ASSERT_FALSE(pfns[0] & UHMM_PFN_WRITE);		/* the page cache page */
	ASSERT_OK(fault(&f, p, 2, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns));
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);		/* our anonymous copy */
	close(fd);
	fix_fini(&f);
}

TEST(range_fault_thp_order)
{
	struct fix f;
	char *p = map_anon_aligned(TWO_MB, TWO_MB);
	uint64_t *pfns = calloc(512, sizeof(*pfns));
	struct uhmm_features feat;

	if (!thp_available())
		SKIP("transparent huge pages are off");
	uhmm_query_features(&feat);
	if ((feat.flags & UHMM_FEAT_FALLBACK_FORCED) && !(feat.flags & UHMM_FEAT_KPAGEFLAGS))
		SKIP("the fallback path needs /proc/kpageflags to see THP");
	fix_init(&f);
	ASSERT_OK(madvise(p, TWO_MB, MADV_HUGEPAGE));
	ASSERT_OK(fault(&f, p, 512, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns));
	for (int i = 0; i < 512; i++)
		ASSERT_EQ(uhmm_pfn_to_map_order(pfns[i]), 9);
	fix_fini(&f);
}

/* A 1 GiB hugetlb page is reported with PUD order (18), as the kernel's hmm_range_fault() does. */
TEST(range_fault_hugetlb_1g_order)
{
	const size_t gib = 1UL << 30;
	struct fix f;
	uint64_t pfns[4];
	char *p;

	p = mmap(NULL, gib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (30 << 26), -1, 0);
	if (p == MAP_FAILED)
		SKIP("no free 1 GiB hugetlb page (/sys/kernel/mm/hugepages/hugepages-1048576kB): %s", strerror(errno));
	p[0] = 1;	/* the page exists now */
	fix_init(&f);
	ASSERT_OK(fault(&f, p + gib / 2, 4, UHMM_PFN_REQ_FAULT, pfns));
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(uhmm_pfn_to_map_order(pfns[i]), 18);
	fix_fini(&f);
	ASSERT_OK(munmap(p, gib));
}
