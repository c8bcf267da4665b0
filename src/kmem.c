// SPDX-License-Identifier: MIT
/*
 * uhmm's own memory: the user-space stand-in for kernel memory.
 *
 * In the kernel, the data HMM and a driver work on (page tables, notifier
 * lists, device memory) is kernel memory: a migration of the program's
 * pages can never take it away. In user space everything is the program's
 * memory, and a migration can take any anonymous page: a page of the libc
 * heap holding one of uhmm's radix nodes next to the program's buffer, or
 * the mapping that backs a device's memory at an address a stale pointer
 * still names. The service thread that then touches it faults on a page
 * only it could bring back, holding the locks every other thread needs.
 *
 * So every byte uhmm's threads touch comes from here: one reservation made
 * once, never registered with a userfaultfd, never migrated
 * (uhmm_kmem_owns() is checked wherever uhmm registers or collects). It is
 * one range fixed before any block exists, so the check needs no lock and
 * has no window in which a block is handed out but not yet known.
 *
 * The allocator is deliberately simple: power-of-two size classes, each in
 * a slice of its own (the class follows from the address), a free list per
 * class, blocks carved in batches by mapping fresh memory over the
 * reservation. Blocks of 64 KiB and more get fresh memory when freed, which
 * gives their pages back and resets whatever a user did to the mapping
 * (madvise, userfaultfd registration). Every block is aligned to its size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define KMEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KMEM_ASAN 1
#endif
#endif
#ifdef KMEM_ASAN
#include <sanitizer/asan_interface.h>
#define poison(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define poison(p, n) ((void)(p), (void)(n))
#define unpoison(p, n) ((void)(p), (void)(n))
#endif

#define MIN_SHIFT 4				/* 16-byte blocks */
#define MAX_SHIFT 28				/* 256 MiB blocks */
#define NCLASS (MAX_SHIFT - MIN_SHIFT + 1)
#define SMALL_SLICE_SHIFT 30			/* 1 GiB per class ... */
#define MIN_BLOCKS_SHIFT 6			/* ... or 64 blocks, whichever is larger */
#define BATCH_BYTES (64UL << 10)		/* carve at least this much at a time */
#define FRESH_ON_FREE BATCH_BYTES		/* blocks this big get fresh memory when freed */

struct kmem_class {
	pthread_mutex_t lock;
	void *free;				/* free blocks, linked through their first word */
	uint64_t carved;			/* bytes of the slice handed out so far */
};

static struct {
	pthread_once_t once;
	uint64_t base, end;			/* the reservation; fixed once set */
	uint64_t slice[NCLASS];			/* each class's slice start */
	uint64_t slice_size[NCLASS];
	struct kmem_class cls[NCLASS];
	atomic_uint_least64_t live_bytes;	/* bytes of the blocks handed out and not freed */
} km = { .once = PTHREAD_ONCE_INIT };

static uint64_t class_slice_size(int c)
{
	uint64_t min = 1ULL << (c + MIN_SHIFT + MIN_BLOCKS_SHIFT);

	return min > (1ULL << SMALL_SLICE_SHIFT) ? min : 1ULL << SMALL_SLICE_SHIFT;
}

/* Raw syscalls: never uhmm's interposed mmap, never libc's bookkeeping. */
static int map_fresh(uint64_t addr, uint64_t len, int prot)
{
	long p = syscall(SYS_mmap, addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);

	return p == (long)addr ? 0 : -ENOMEM;
}

static void kmem_lock_all(void)
{
	for (int c = 0; c < NCLASS; c++)
		pthread_mutex_lock(&km.cls[c].lock);
}

static void kmem_unlock_all(void)
{
	for (int c = NCLASS - 1; c >= 0; c--)
		pthread_mutex_unlock(&km.cls[c].lock);
}

/*
 * Reserve the slices, the biggest class first: every slice size is a power
 * of two at least its block size, so each slice starts aligned to its blocks
 * when the reservation starts aligned to the biggest. Where the address
 * space is limited (RLIMIT_AS), try smaller slices: up to 64 times smaller.
 */
static bool kmem_reserve(int shrink)
{
	uint64_t total = 0, align = 1ULL << (MAX_SHIFT);
	long raw;

	for (int c = 0; c < NCLASS; c++)
		total += class_slice_size(c) >> shrink;
	/* PROT_NONE costs no memory */
	raw = syscall(SYS_mmap, NULL, total + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == -1)
		return false;
	km.base = uhmm_align_up((uint64_t)raw, align);
	if (km.base > (uint64_t)raw)
		syscall(SYS_munmap, raw, km.base - (uint64_t)raw);
	syscall(SYS_munmap, km.base + total, (uint64_t)raw + align - km.base);
	km.end = km.base + total;
	for (int c = NCLASS - 1; c >= 0; c--) {
		km.slice_size[c] = class_slice_size(c) >> shrink;
		km.slice[c] = c == NCLASS - 1 ? km.base : km.slice[c + 1] + km.slice_size[c + 1];
	}
	return true;
}

static void kmem_init(void)
{
	for (int c = 0; c < NCLASS; c++)
		pthread_mutex_init(&km.cls[c].lock, NULL);
	for (int shrink = 0; shrink <= MIN_BLOCKS_SHIFT && !kmem_reserve(shrink); shrink++)
		;
	/* the forking thread holds every class lock across fork(): it is the child's thread too */
	pthread_atfork(kmem_lock_all, kmem_unlock_all, kmem_unlock_all);
}

/*
 * At load: the fork handlers must be registered before any other of uhmm's,
 * so that theirs (which allocate) run before these lock every class and
 * after these unlock (prepare handlers run in reverse order of registration).
 */
__attribute__((constructor)) static void kmem_at_load(void)
{
	pthread_once(&km.once, kmem_init);
}

static int size_class(size_t size)
{
	int shift = MIN_SHIFT;

	while (shift <= MAX_SHIFT && (1ULL << shift) < size)
		shift++;
	return shift <= MAX_SHIFT ? shift - MIN_SHIFT : -1;
}

static uint64_t block_size(int c)
{
	return 1ULL << (c + MIN_SHIFT);
}

/* Map a batch of fresh blocks at the end of the class's carved part (class lock held). */
static int carve(int c)
{
	struct kmem_class *k = &km.cls[c];
	uint64_t bs = block_size(c), n = bs >= BATCH_BYTES ? 1 : BATCH_BYTES / bs;
	uint64_t at = km.slice[c] + k->carved;

	if (k->carved + n * bs > km.slice_size[c] || map_fresh(at, n * bs, PROT_READ | PROT_WRITE))
		return -ENOMEM;
	k->carved += n * bs;
	/* link them in address order: the first carved is the first handed out */
	for (uint64_t i = n; i-- > 0;) {
		void **b = (void **)(uintptr_t)(at + i * bs);

		*b = k->free;
		k->free = b;
		poison((char *)b + sizeof(void *), bs - sizeof(void *));
	}
	return 0;
}

static int addr_class(const void *p)
{
	uint64_t a = (uintptr_t)p;

	if (a < km.base || a >= km.end)
		return -1;
	for (int c = 0; c < NCLASS; c++)
		if (a >= km.slice[c] && a < km.slice[c] + km.slice_size[c])
			return c;
	return -1;
}

UHMM_EXPORT void *uhmm_kmalloc(size_t size)
{
	int c = size ? size_class(size) : -1;
	struct kmem_class *k;
	void **b = NULL;

	pthread_once(&km.once, kmem_init);
	if (c < 0 || !km.base) {
		errno = ENOMEM;
		return NULL;
	}
	k = &km.cls[c];
	pthread_mutex_lock(&k->lock);
	if (k->free || !carve(c)) {
		b = k->free;
		k->free = *b;
	}
	pthread_mutex_unlock(&k->lock);
	if (!b) {
		errno = ENOMEM;
		return NULL;
	}
	*b = NULL;	/* no free-list pointer leaks out (the first word is never poisoned) */
	unpoison(b, size);
	poison((char *)b + size, block_size(c) - size);
	atomic_fetch_add_explicit(&km.live_bytes, block_size(c), memory_order_relaxed);
	return b;
}

UHMM_EXPORT void *uhmm_kzalloc(size_t size)
{
	void *p = uhmm_kmalloc(size);

	/* big blocks are fresh from the kernel: zero already, save one word */
	if (p)
		memset(p, 0, size >= FRESH_ON_FREE ? sizeof(void *) : size);
	return p;
}

UHMM_EXPORT void *uhmm_kcalloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size) {
		errno = ENOMEM;
		return NULL;
	}
	return uhmm_kzalloc(n * size);
}

UHMM_EXPORT void uhmm_kfree(void *p)
{
	int c;
	struct kmem_class *k;
	uint64_t bs;

	if (!p)
		return;
	c = addr_class(p);
	if (c < 0 || (uintptr_t)p & (block_size(c) - 1)) {
		uhmm_log(UHMM_LOG_ERR, "uhmm_kfree: %p was not allocated by uhmm_kmalloc", p);
		abort();
	}
	k = &km.cls[c];
	bs = block_size(c);
	unpoison(p, bs);
	if (bs >= FRESH_ON_FREE && map_fresh((uintptr_t)p, bs, PROT_READ | PROT_WRITE))
		memset(p, 0, bs);	/* out of VMAs: reuse as it is */
	atomic_fetch_sub_explicit(&km.live_bytes, bs, memory_order_relaxed);
	/* before it is on the list: after, another thread may already own it */
	poison((char *)p + sizeof(void *), bs - sizeof(void *));
	pthread_mutex_lock(&k->lock);
	*(void **)p = k->free;
	k->free = p;
	pthread_mutex_unlock(&k->lock);
}

UHMM_EXPORT void *uhmm_krealloc(void *p, size_t size)
{
	int c = p ? addr_class(p) : -1;
	void *n;

	if (!p)
		return uhmm_kmalloc(size);
	if (!size) {
		uhmm_kfree(p);
		return NULL;
	}
	if (c >= 0 && size <= block_size(c) && size_class(size) == c) {
		unpoison(p, size);
		poison((char *)p + size, block_size(c) - size);
		return p;
	}
	n = uhmm_kmalloc(size);
	if (!n)
		return NULL;
	/* the old block's requested size is not kept: copy what both can hold */
	unpoison(p, block_size(c));
	memcpy(n, p, size < block_size(c) ? size : block_size(c));
	uhmm_kfree(p);
	return n;
}

void *uhmm_kmem_block(const void *p)
{
	int c = addr_class(p);

	return c < 0 ? NULL : (void *)((uintptr_t)p & ~(uintptr_t)(block_size(c) - 1));
}

bool uhmm_kmem_owns(uint64_t start, uint64_t end)
{
	pthread_once(&km.once, kmem_init);
	return start < km.end && end > km.base;
}

uint64_t uhmm_kmem_live_bytes(void)
{
	return atomic_load_explicit(&km.live_bytes, memory_order_relaxed);
}
