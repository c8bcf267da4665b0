// SPDX-License-Identifier: MIT
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "harness.h"
#include "../src/internal.h"

static bool noop_invalidate(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
			    unsigned long seq)
{
	uhmm_interval_set_seq(s, seq);
	return true;
}
static const struct uhmm_interval_notifier_ops noop_ops = { .invalidate = noop_invalidate };

TEST(mm_get_put)
{
	struct uhmm_mm *a = NULL, *b = NULL;

	ASSERT_EQ(uhmm_mm_get(NULL), -EINVAL);
	ASSERT_OK(uhmm_mm_get(&a));
	ASSERT_OK(uhmm_mm_get(&b));
	ASSERT_TRUE(a == b);		/* one per process */
	uhmm_mm_put(b);
	uhmm_mm_put(a);
	uhmm_mm_put(NULL);
	ASSERT_OK(uhmm_mm_get(&a));	/* and a fresh one after the last put */
	uhmm_mm_put(a);
}

static void child_gets_own_mm(void *arg)
{
	struct uhmm_mm *parent = arg, *mine = NULL;
	struct uhmm_interval_notifier n = { 0 };

	ASSERT_OK(uhmm_mm_get(&mine));
	/* The parent's mm is not ours: inserting into it is refused. */
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, parent, 0, PAGE, &noop_ops), -EINVAL);
	ASSERT_OK(uhmm_interval_notifier_insert(&n, mine, 0, PAGE, &noop_ops));
	ASSERT_OK(uhmm_interval_notifier_remove(&n));
	uhmm_mm_put(mine);
}

TEST(mm_fork_child_fresh)
{
	skip_if_asan_fork_threads();

	struct uhmm_mm *mm = NULL;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(run_child(child_gets_own_mm, mm), 0);
	uhmm_mm_put(mm);
}

/*
 * uhmm keeps its pid in a page the kernel zeroes in a child: a child made by
 * fork(), or by a raw clone() that runs no pthread_atfork() handler, knows
 * its own pid, so the parent's mm is not current there.
 */
static int child_knows_itself(pid_t parent)
{
	pid_t self = (pid_t)syscall(SYS_getpid);

	return uhmm_self_pid() == self && self != parent && uhmm_mm_peek() == NULL ? 0 : 1;
}

TEST(self_pid_after_fork_and_raw_clone)
{
	struct uhmm_mm *mm = NULL;
	pid_t parent = getpid(), child;
	int status;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(uhmm_self_pid(), parent);
	ASSERT_TRUE(uhmm_mm_peek() == mm);
	for (int raw = 0; raw < 2; raw++) {
		child = raw ? (pid_t)syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0) : fork();
		ASSERT_GE(child, 0);
		if (child == 0)
			_exit(child_knows_itself(parent));
		ASSERT_EQ(waitpid(child, &status, 0), child);
		ASSERT_TRUE(WIFEXITED(status));
		ASSERT_EQ(WEXITSTATUS(status), 0);
	}
	ASSERT_EQ(uhmm_self_pid(), parent);
	uhmm_mm_put(mm);
}

/*
 * uhmm_stats() pages_leaked counts device-exclusive pages still referenced
 * when their mm goes: the pool cannot be freed and is left allocated. No
 * public call holds such a page, so the test takes a reference itself,
 * as a lost one would; the data still comes back to the CPU first.
 */
TEST(pages_leaked_counts_an_exclusive_page_still_held_at_teardown)
{
	struct uhmm_mm *mm;
	int *ptr = map_anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_stats a, b;
	struct uhmm_page *page;
	void *mem;

	fill_ints(ptr, 2 * PAGE, 1);
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_make_device_exclusive(mm, (uintptr_t)ptr, NULL, &mem));
	ASSERT_OK(uhmm_make_device_exclusive(mm, (uintptr_t)ptr + PAGE, NULL, &mem));
	page = DP_PAGE(uhmm_dp_get(mm, (uintptr_t)ptr));
	ASSERT_TRUE(page != NULL);
	uhmm_page_get(page);	/* never put: the pool must outlive it */
	ASSERT_EQ(uhmm_stats(&a, sizeof(a)), sizeof(a));
	uhmm_mm_put(mm);	/* torn down */
	ASSERT_EQ(uhmm_stats(&b, sizeof(b)), sizeof(b));
	ASSERT_EQ(b.pages_leaked - a.pages_leaked, 1);	/* the held one, not the other */
	check_ints(ptr, 2 * PAGE, 1);	/* both pages' data came back */
}

/* Process exit sends UHMM_NOTIFY_RELEASE to every notifier still inserted. */
static int release_pipe = -1;
static bool release_invalidate(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
			       unsigned long seq)
{
	uhmm_interval_set_seq(s, seq);
	if (r->event == UHMM_NOTIFY_RELEASE && write(release_pipe, "R", 1) != 1)
		_exit(3);
	return true;
}
static const struct uhmm_interval_notifier_ops release_ops = { .invalidate = release_invalidate };

TEST(mm_release_at_exit)
{
	int fds[2], status;
	char x = 0;
	pid_t pid;

	ASSERT_OK(pipe(fds));
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		static struct uhmm_interval_notifier n;
		struct uhmm_mm *mm;

		release_pipe = fds[1];
		ASSERT_OK(uhmm_mm_get(&mm));
		ASSERT_OK(uhmm_interval_notifier_insert(&n, mm, 4096, 1 << 20, &release_ops));
		exit(0);	/* runs the library's destructor */
	}
	close(fds[1]);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ASSERT_EQ(read(fds[0], &x, 1), 1);
	ASSERT_EQ(x, 'R');
}

TEST(access_vm)
{
	char *p = map_anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[PAGE];

	memset(p, 'a', PAGE);
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, buf, PAGE, 0), PAGE);
	ASSERT_EQ(buf[PAGE - 1], 'a');
	memset(buf, 'b', PAGE);
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, buf, PAGE, UHMM_ACCESS_WRITE), PAGE);
	ASSERT_EQ(p[0], 'b');
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, NULL, PAGE, 0), -EINVAL);
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, buf, PAGE, 0x8), -EINVAL);
	ASSERT_OK(munmap(p + PAGE, PAGE));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p + PAGE, buf, PAGE, 0), -EFAULT);
	ASSERT_OK(mprotect(p, PAGE, PROT_READ));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, buf, PAGE, UHMM_ACCESS_WRITE), -EFAULT);
}

/*
 * Bad buffers are refused before a byte moves. Lengths adding up past
 * SSIZE_MAX used to go out in pieces: the first wrote the range's pages
 * and the call then failed with EFAULT, memory already changed.
 */
TEST(access_vm_iov_bad_buffers_copy_nothing)
{
	char *p = map_anon(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[PAGE];
	struct iovec ok[2] = { { buf, 16 }, { buf + 16, PAGE - 16 } };
	struct iovec too_long[2] = { { buf, PAGE }, { buf, SIZE_MAX - PAGE } };
	struct iovec null_base[2] = { { buf, PAGE }, { NULL, PAGE } };

	memset(p, 'a', 2 * PAGE);
	memset(buf, 'b', PAGE);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, too_long, 2, UHMM_ACCESS_WRITE), -EINVAL);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, null_base, 2, UHMM_ACCESS_WRITE), -EINVAL);
	ASSERT_EQ(uhmm_access_vm_iov(UINT64_MAX - PAGE + 1, ok, 2, UHMM_ACCESS_WRITE), -EINVAL);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, NULL, 2, 0), -EINVAL);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, ok, 0, 0), -EINVAL);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, ok, 2, 0x8), -EINVAL);
	for (size_t i = 0; i < 2 * PAGE; i++)
		ASSERT_EQ(p[i], 'a');
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)p, ok, 2, UHMM_ACCESS_WRITE), (ssize_t)PAGE);
	ASSERT_EQ(p[0], 'b');
	ASSERT_EQ(p[PAGE - 1], 'b');
	ASSERT_EQ(p[PAGE], 'a');
}

/*
 * The system calls under uhmm_access_vm() move at most 2 GiB less a page at
 * once and report the rest as a short copy: a longer access must go in
 * pieces, not fail with EFAULT (a 4 GiB MIGRATE_TO_DEV's read-back did).
 * The source is untouched memory (the zero page) with marks on pages around
 * the 1 GiB and 2 GiB boundaries; only the copy costs memory.
 */
TEST(access_vm_of_more_than_2_gib)
{
	const size_t len = (2ULL << 30) + 2 * PAGE;
	const size_t marks[] = { 0, (1ULL << 30) - PAGE, 1ULL << 30, (2ULL << 30) - 2 * PAGE,
				 (2ULL << 30) - PAGE, 2ULL << 30, len - PAGE };
	char *src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct iovec iov[2] = { { dst, PAGE }, { dst + PAGE, len - PAGE } };

	if (src == MAP_FAILED || dst == MAP_FAILED)
		SKIP("cannot map 2 x 2 GiB: %s", strerror(errno));
	for (size_t i = 0; i < UHMM_ARRAY_SIZE(marks); i++)
		memset(src + marks[i], (int)(i + 1), PAGE);
	ASSERT_EQ(uhmm_access_vm((uintptr_t)src, dst, len, 0), (ssize_t)len);
	for (size_t i = 0; i < UHMM_ARRAY_SIZE(marks); i++) {
		ASSERT_EQ(dst[marks[i]], (char)(i + 1));
		ASSERT_EQ(dst[marks[i] + PAGE - 1], (char)(i + 1));
		if (marks[i] + PAGE < len)	/* the page after: the next mark, or untouched */
			ASSERT_EQ(dst[marks[i] + PAGE], marks[i + 1] == marks[i] + PAGE ? (char)(i + 2) : 0);
	}
	/* and back, through two buffers, one of them longer than a piece */
	memset(dst + (2ULL << 30), 'w', PAGE);
	ASSERT_EQ(uhmm_access_vm_iov((uintptr_t)src, iov, 2, UHMM_ACCESS_WRITE), (ssize_t)len);
	ASSERT_EQ(src[2ULL << 30], 'w');
	ASSERT_EQ(src[0], 1);
	ASSERT_EQ(uhmm_access_vm((uintptr_t)src, dst, SIZE_MAX / 2 + 1, 0), -EINVAL);	/* more than SSIZE_MAX */
	munmap(src, len);
	munmap(dst, len);
}
