/* SPDX-License-Identifier: MIT */
/*
 * Test harness: every TEST() runs in a forked child with a timeout, in
 * each mode (fast paths, UHMM_FORCE_FALLBACK=1, as an unprivileged user
 * when started as root, and with faults served in the faulting thread:
 * UHMM_FAULTS=thread). A test fails by a failed ASSERT, a signal or the
 * timeout; SKIP() says why it cannot run here (exit 77). The run ends with
 * "N passed, N failed, N skipped".
 */
#ifndef UHMM_TEST_HARNESS_H
#define UHMM_TEST_HARNESS_H

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm/dmirror.h"

#define TEST_SKIP_CODE 77

void test_register(const char *name, void (*fn)(void), const char *file);
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
void test_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
const char *test_mode(void);	/* "fast", "fallback", "user" or "thread" */

#define TEST(name)                                                                  \
	static void test_##name(void);                                              \
	__attribute__((constructor)) static void test_register_##name(void)         \
	{                                                                           \
		test_register(#name, test_##name, __FILE__);                        \
	}                                                                           \
	static void test_##name(void)

#define SKIP(...) test_skip(__VA_ARGS__)

#define ASSERT_TRUE(c)                                                              \
	do {                                                                        \
		if (!(c))                                                           \
			test_fail(__FILE__, __LINE__, "expected %s", #c);           \
	} while (0)
#define ASSERT_FALSE(c) ASSERT_TRUE(!(c))
#define ASSERT_CMP(a, op, b)                                                        \
	do {                                                                        \
		long long _a = (long long)(a), _b = (long long)(b);                 \
		if (!(_a op _b))                                                    \
			test_fail(__FILE__, __LINE__, "%s %s %s: %lld vs %lld", #a, #op, #b, _a, _b); \
	} while (0)
#define ASSERT_EQ(a, b) ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_CMP(a, !=, b)
#define ASSERT_GE(a, b) ASSERT_CMP(a, >=, b)
#define ASSERT_GT(a, b) ASSERT_CMP(a, >, b)
#define ASSERT_LE(a, b) ASSERT_CMP(a, <=, b)
#define ASSERT_LT(a, b) ASSERT_CMP(a, <, b)
#define ASSERT_OK(x) ASSERT_EQ((x), 0)

/* ---- helpers (test/util.c) ---- */
#define PAGE 4096UL
#define TWO_MB (2UL << 20)

void *map_anon(size_t size, int prot, int flags);	/* asserts success */
void *map_anon_aligned(size_t size, size_t align);	/* private RW, aligned */
struct uhmm_dmirror *dmirror(unsigned int dev);		/* open, asserts */
int dmcmd(struct uhmm_dmirror *d, unsigned int cmd, void *addr, void *ptr, uint64_t npages,
	  struct uhmm_dmirror_cmd *out);
void fill_pattern(void *p, size_t bytes, uint32_t seed);
/* int i of a buffer holds sign * i (the kernel tests' pattern) */
void fill_ints(int *p, size_t bytes, int sign);
void check_ints_from_at(const int *buf, size_t first, size_t bytes, int sign, const char *file, int line);
#define check_ints_from(buf, first, bytes, sign) check_ints_from_at(buf, first, bytes, sign, __FILE__, __LINE__)
#define check_ints(buf, bytes, sign) check_ints_from_at(buf, 0, bytes, sign, __FILE__, __LINE__)
void check_pattern(const void *p, size_t bytes, uint32_t seed);	/* asserts */
/* @npages private pages, page i holding the pattern of seed @seed0 + i; and the check of such pages */
char *map_page_patterns(int npages, uint32_t seed0);
void check_page_patterns(const void *p, int npages, uint32_t seed0);	/* asserts */
/* map_page_patterns(@npages, 0) with its first @on_device pages moved to @d */
char *page_patterns_on_device(struct uhmm_dmirror *d, int npages, int on_device);
bool read_sigbus(const volatile int *p);		/* does reading *p raise SIGBUS? */
bool faults_in_thread(void);	/* does this process serve CPU faults in the faulting thread? */
int make_tmpfile(size_t size);				/* unlinked file of @size zero bytes */
long hugetlb_free_pages(void);
bool thp_available(void);
/*
 * The tests whose forked child starts uhmm threads while the parent has
 * uhmm threads running: under ASan they are skipped. The sanitizer runtimes
 * of gcc 12 and clang 14 do not lock their allocator across fork(), and a
 * child that starts threads can deadlock inside it (seen about once in a
 * dozen runs; TSan documents the same limitation). Plain builds run them.
 */
void skip_if_asan_fork_threads(void);

/* Run @fn in a forked child and return its exit status (asserts it exited). */
int run_child(void (*fn)(void *), void *arg);

#endif
