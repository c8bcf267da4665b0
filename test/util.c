// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>

#include "harness.h"

/*
 * Test mappings go to a region of their own, far below where libc and the
 * sanitizers map (top-down from near 128 TiB), with gaps between them: a
 * hole a test punches stays a hole, instead of being reused by the next
 * allocation somewhere in the process.
 */
#define TEST_MAP_BASE 0x300000000000UL
static uintptr_t next_map = TEST_MAP_BASE;

void *map_anon(size_t size, int prot, int flags)
{
	void *hint = (void *)next_map, *p;

	next_map += (size + 2 * TWO_MB + TWO_MB - 1) & ~(TWO_MB - 1);
	p = mmap(hint, size, prot, flags | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED)
		p = mmap(NULL, size, prot, flags | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	return p;
}

void *map_anon_aligned(size_t size, size_t align)
{
	char *p = map_anon(size + align, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *a = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));

	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + size < p + size + align)
		munmap(a + size, (size_t)(p + size + align - (a + size)));
	return a;
}

struct uhmm_dmirror *dmirror(unsigned int dev)
{
	struct uhmm_dmirror *d = NULL;
	int ret = uhmm_dmirror_open(dev, &d);

	if (ret == -EPERM || ret == -ENOSYS)
		SKIP("no userfaultfd here (%s)", strerror(-ret));
	ASSERT_OK(ret);
	return d;
}

int dmcmd(struct uhmm_dmirror *d, unsigned int cmd, void *addr, void *ptr, uint64_t npages,
	  struct uhmm_dmirror_cmd *out)
{
	struct uhmm_dmirror_cmd c = {
		.addr = (uintptr_t)addr, .ptr = (uintptr_t)ptr, .npages = npages,
		.cpages = 0xdead, .faults = 0xbeef,
	};
	int ret = uhmm_dmirror_cmd(d, cmd, &c);

	if (out)
		*out = c;
	return ret;
}

static uint32_t pattern_word(uint32_t seed, size_t i)
{
	uint32_t x = seed * 2654435761u ^ (uint32_t)i * 40503u;

	return x ^ (x >> 13);
}

void fill_pattern(void *p, size_t bytes, uint32_t seed)
{
	uint32_t *w = p;

	for (size_t i = 0; i < bytes / 4; i++)
		w[i] = pattern_word(seed, i);
}

void check_pattern(const void *p, size_t bytes, uint32_t seed)
{
	const uint32_t *w = p;

	for (size_t i = 0; i < bytes / 4; i++)
		if (w[i] != pattern_word(seed, i))
			test_fail(__FILE__, __LINE__, "pattern mismatch at byte %zu: %08x != %08x",
				  i * 4, w[i], pattern_word(seed, i));
}

char *map_page_patterns(int npages, uint32_t seed0)
{
	char *p = map_anon((size_t)npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	for (int i = 0; i < npages; i++)
		fill_pattern(p + (size_t)i * PAGE, PAGE, seed0 + (uint32_t)i);
	return p;
}

void check_page_patterns(const void *p, int npages, uint32_t seed0)
{
	for (int i = 0; i < npages; i++)
		check_pattern((const char *)p + (size_t)i * PAGE, PAGE, seed0 + (uint32_t)i);
}

char *page_patterns_on_device(struct uhmm_dmirror *d, int npages, int on_device)
{
	char *p = map_page_patterns(npages, 0), *back = malloc((size_t)on_device * PAGE);
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, back, (uint64_t)on_device, &c));
	ASSERT_EQ(c.cpages, on_device);
	check_page_patterns(back, on_device, 0);	/* what the device read back */
	free(back);
	return p;
}

int make_tmpfile(size_t size)
{
	char path[] = "/tmp/uhmm-test-XXXXXX";
	int fd = mkstemp(path);

	ASSERT_GE(fd, 0);
	unlink(path);
	ASSERT_OK(ftruncate(fd, (off_t)size));
	return fd;
}

long hugetlb_free_pages(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long n = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "HugePages_Free: %ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

bool thp_available(void)
{
	struct uhmm_features f;

	uhmm_query_features(&f);
	return (f.flags & UHMM_FEAT_THP) != 0;
}

int run_child(void (*fn)(void *), void *arg)
{
	int status;
	pid_t pid = fork();

	ASSERT_GE(pid, 0);
	if (pid == 0) {
		fn(arg);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static sigjmp_buf bus_jmp;

/*
 * As a program's SIGBUS handler must be once uhmm serves faults in the
 * faulting thread (UHMM_FAULTS_IN_THREAD): a fault uhmm serves is uhmm's,
 * and the access runs again; anything else (a poisoned page) is ours.
 */
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	if (uhmm_handle_sigbus(si, uc))
		return;
	siglongjmp(bus_jmp, 1);
}

bool read_sigbus(const volatile int *p)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER }, old;
	volatile bool bus = false;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(bus_jmp, 1) == 0)
		(void)*p;
	else
		bus = true;
	sigaction(SIGBUS, &old, NULL);
	return bus;
}

bool faults_in_thread(void)
{
	struct uhmm_features f;

	ASSERT_OK(uhmm_query_features(&f));
	return (f.flags & UHMM_FEAT_FAULTS_IN_THREAD) != 0;
}

void fill_ints(int *p, size_t bytes, int sign)
{
	for (size_t i = 0; i < bytes / sizeof(int); i++)
		p[i] = sign * (int)i;
}

void check_ints_from_at(const int *buf, size_t first, size_t bytes, int sign, const char *file, int line)
{
	for (size_t i = first; i < first + bytes / sizeof(int); i++)
		if (buf[i] != sign * (int)i)
			test_fail(file, line, "int %zu is %d, expected %d", i, buf[i], sign * (int)i);
}

#if defined(__SANITIZE_ADDRESS__)
#define UHMM_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UHMM_TEST_ASAN 1
#endif
#endif

void skip_if_asan_fork_threads(void)
{
#ifdef UHMM_TEST_ASAN
	SKIP("ASan's allocator is not fork-safe for a child that starts threads (gcc 12, clang 14)");
#endif
}
