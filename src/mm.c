// SPDX-License-Identifier: MIT
/*
 * struct uhmm_mm: one per process, like the kernel's mm_struct. It owns the
 * userfaultfd, the service thread, the notifier list and the set of ranges
 * registered with the userfaultfd.
 *
 * fork(): the child inherits a copy of this memory but not the service
 * thread, and its VMAs lose their userfaultfd registration (uhmm does not
 * enable UFFD_FEATURE_EVENT_FORK). The child's copy is abandoned and a child
 * that calls uhmm_mm_get() gets a fresh mm. In the parent, private writable
 * memory becomes copy-on-write: the device must lose write access before
 * the fork and must not regain it until the fork is over, so the prepare
 * handler opens a PROTECTION_PAGE invalidation that the parent handler
 * closes (readers wait in uhmm_interval_read_begin() meanwhile).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "../uapi/uhmm_uapi.h"

static pthread_mutex_t mm_global_lock = PTHREAD_MUTEX_INITIALIZER;
/* One fork() at a time runs the handlers: they share mm->fork_inval and the gate. */
static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm_mm *mm_current;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

struct uhmm_fork_inval {
	size_t n;		/* invalidations opened by the prepare handler */
	struct uhmm_mm *mm;	/* with a reference */
};

/*
 * This process's pid without a system call per question: uhmm asks at
 * every entry point whether an mm is this process's, and names itself to
 * process_vm_readv(); glibc no longer caches getpid() (2.25), and a
 * migration to the device and one fault back made 16 getpid() calls. The
 * answer is kept in a page the kernel zeroes in a child (MADV_WIPEONFORK,
 * 4.14+), so any fork finds it empty and asks again, a raw clone() that
 * pthread_atfork() never sees included. The page is uhmm's own memory
 * (kmem.c), out of every migration's reach. Without it, getpid() each time.
 */
static _Atomic pid_t *pid_page;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_page_init(void)
{
	void *p = uhmm_kmalloc(UHMM_PAGE_SIZE);	/* a block of its own: aligned to its size */

	if (p && syscall(SYS_madvise, p, UHMM_PAGE_SIZE, MADV_WIPEONFORK) == 0)
		pid_page = p;
	else
		uhmm_kfree(p);
}

pid_t uhmm_self_pid(void)
{
	pid_t pid;

	pthread_once(&pid_once, pid_page_init);
	if (!pid_page)
		return getpid();
	pid = atomic_load_explicit(pid_page, memory_order_relaxed);
	if (!pid) {	/* first question in this process */
		pid = getpid();
		atomic_store_explicit(pid_page, pid, memory_order_relaxed);
	}
	return pid;
}

bool uhmm_mm_is_current(const struct uhmm_mm *mm)
{
	return mm && mm->pid == uhmm_self_pid();
}

struct uhmm_mm *uhmm_mm_peek(void)
{
	struct uhmm_mm *mm = __atomic_load_n(&mm_current, __ATOMIC_ACQUIRE);

	return uhmm_mm_is_current(mm) ? mm : NULL;
}

/* A reference on this process's mm, if it has one; none is created. */
struct uhmm_mm *uhmm_mm_tryget(void)
{
	struct uhmm_mm *mm;

	pthread_mutex_lock(&mm_global_lock);
	mm = uhmm_mm_is_current(mm_current) ? mm_current : NULL;
	if (mm)
		atomic_fetch_add(&mm->refs, 1);
	pthread_mutex_unlock(&mm_global_lock);
	return mm;
}

/* Open PROTECTION_PAGE invalidations over the private writable VMAs. */
static void mm_fork_prepare(void)
{
	struct uhmm_mm *mm;
	struct uhmm_vma *v;
	int n;

	pthread_mutex_lock(&fork_lock);
	pthread_mutex_lock(&mm_global_lock);
	mm = uhmm_mm_is_current(mm_current) ? mm_current : NULL;
	if (mm)
		atomic_fetch_add(&mm->refs, 1);
	pthread_mutex_unlock(&mm_global_lock);
	if (!mm) {
		pthread_mutex_lock(&mm_global_lock);
		return;
	}

	/*
	 * The child must see the data of device-resident pages, which it
	 * cannot fault back (its copy of the mm is abandoned): close the gate
	 * (migrations to a device in flight finish, new ones wait for the
	 * fork to be over), then bring every device page back. While the
	 * table is walked no mapping may change (the kernel's fork holds its
	 * mmap_lock for write throughout), and the moves already made must be
	 * in it: an entry still keyed at the address an mremap() moved it from
	 * would be evicted there (no VMA: nothing to do) while its page, at
	 * the new address, reached the child as a hole. Shared, as migrations
	 * hold it (the evictions are migrations); order: mmap_lock, the gate.
	 */
	pthread_rwlock_rdlock(&mm->mmap_lock);
	uhmm_migrate_gate_close(mm);
	uhmm_service_sync(mm);
	if (uhmm_dp_any(mm))
		uhmm_dp_evict_range(mm, 0, UINT64_MAX);
	pthread_rwlock_unlock(&mm->mmap_lock);
	mm->fork_inval = uhmm_kcalloc(1, sizeof(*mm->fork_inval));
	n = uhmm_vma_list(0, UINT64_MAX, NULL, 0);
	v = n > 0 ? uhmm_kcalloc((size_t)n + 64, sizeof(*v)) : NULL;
	if (v && mm->fork_inval)
		n = uhmm_vma_list(0, UINT64_MAX, v, n + 64);
	for (int i = 0; v && mm->fork_inval && i < n; i++) {
		struct uhmm_notifier_range r = {
			.start = v[i].start, .end = v[i].end,
			.event = UHMM_NOTIFY_PROTECTION_PAGE, .flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
		};

		if ((v[i].flags & (UHMM_VMA_SHARED | UHMM_VMA_SPECIAL)) || !(v[i].flags & UHMM_VMA_WRITE))
			continue;
		if (!uhmm_notifiers_overlap(mm, r.start, r.end))
			continue;
		uhmm_invalidate_start(mm, &r);
		mm->fork_inval->n++;
	}
	if (!v || !mm->fork_inval) {
		/* Out of memory: invalidate everything rather than miss a range. */
		struct uhmm_notifier_range all = { 0, UINT64_MAX, UHMM_NOTIFY_PROTECTION_PAGE,
						   UHMM_NOTIFIER_RANGE_BLOCKABLE, NULL };

		uhmm_invalidate_start(mm, &all);
		uhmm_invalidate_end(mm);
	}
	uhmm_kfree(v);
	uhmm_service_pause(mm);
	pthread_mutex_lock(&mm_global_lock);
}

static void mm_fork_parent(void)
{
	struct uhmm_mm *mm = uhmm_mm_is_current(mm_current) ? mm_current : NULL;

	pthread_mutex_unlock(&mm_global_lock);
	if (!mm) {
		pthread_mutex_unlock(&fork_lock);
		return;
	}
	uhmm_service_resume(mm);
	atomic_store(&mm->forked, true);	/* every anonymous page is copy-on-write now */
	for (size_t i = 0; mm->fork_inval && i < mm->fork_inval->n; i++)
		uhmm_invalidate_end(mm);
	uhmm_kfree(mm->fork_inval);
	mm->fork_inval = NULL;
	uhmm_migrate_gate_open(mm);
	pthread_mutex_unlock(&fork_lock);
	uhmm_mm_put(mm);
}

static void mm_fork_child(void)
{
	struct uhmm_mm *mm = mm_current;

	/* The parent's mm lives on in the parent; our copy is never touched again. */
	if (mm) {
		close(mm->uffd);
		close(mm->stop_efd);
		close(mm->kick_efd);
		if (mm->zap_state > 0)
			close(mm->zap_uffd);	/* its scratch area is MADV_DONTFORK */
	}
	mm_current = NULL;
	pthread_mutex_unlock(&mm_global_lock);
	pthread_mutex_unlock(&fork_lock);	/* this thread took it in the parent */
	uhmm_procfs_after_fork_child();
}

static void mm_install_atfork(void)
{
	pthread_atfork(mm_fork_prepare, mm_fork_parent, mm_fork_child);
}

static void mm_free(struct uhmm_mm *mm)
{
	if (mm->uffd >= 0)
		close(mm->uffd);
	if (mm->stop_efd >= 0)
		close(mm->stop_efd);
	uhmm_spanset_free(&mm->registered);
	uhmm_spanset_free(&mm->missing);
	uhmm_spanset_free(&mm->poisoned);
	uhmm_kfree(mm->self_zaps);
	uhmm_kfree(mm->deferred);
	uhmm_radix_free(&mm->devpriv);
	uhmm_zap_fini(mm);
	pthread_rwlock_destroy(&mm->mmap_lock);
	pthread_mutex_destroy(&mm->dp_lock);
	pthread_mutex_destroy(&mm->excl_lock);
	pthread_cond_destroy(&mm->dp_cond);
	pthread_cond_destroy(&mm->cond);
	pthread_mutex_destroy(&mm->lock);
	uhmm_kfree(mm);
}

/*
 * The fault mode the next mm of this process gets: UHMM_FAULTS from the
 * environment until uhmm_set_fault_mode() says otherwise (under
 * mm_global_lock once set; a fork child inherits it with the memory).
 */
static int fault_mode = -1;	/* -1: not read yet */

static enum uhmm_fault_mode fault_mode_from_env(void)
{
	const char *env = getenv("UHMM_FAULTS");

	if (!env || !*env || !strcmp(env, "service"))
		return UHMM_FAULTS_SERVICE;
	if (strcmp(env, "thread")) {
		uhmm_log(UHMM_LOG_WARN, "uhmm: UHMM_FAULTS=\"%s\" not understood (thread or service): service", env);
		return UHMM_FAULTS_SERVICE;
	}
	if (!(uhmm_kfeatures()->flags & UHMM_FEAT_UFFD_SIGBUS)) {
		uhmm_log(UHMM_LOG_WARN, "uhmm: UHMM_FAULTS=thread needs UFFD_FEATURE_SIGBUS: service");
		return UHMM_FAULTS_SERVICE;
	}
	return UHMM_FAULTS_IN_THREAD;
}

enum uhmm_fault_mode uhmm_fault_mode_wanted(void)
{
	int mode = __atomic_load_n(&fault_mode, __ATOMIC_ACQUIRE);

	if (mode < 0) {
		int fresh = (int)fault_mode_from_env(), unread = -1;

		/* a racing uhmm_set_fault_mode() wins */
		if (!__atomic_compare_exchange_n(&fault_mode, &unread, fresh, false, __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE))
			fresh = unread;
		mode = fresh;
	}
	return (enum uhmm_fault_mode)mode;
}

UHMM_EXPORT int uhmm_set_fault_mode(enum uhmm_fault_mode mode)
{
	int ret = 0;

	if (mode != UHMM_FAULTS_SERVICE && mode != UHMM_FAULTS_IN_THREAD)
		return -EINVAL;
	if (mode == UHMM_FAULTS_IN_THREAD && !(uhmm_kfeatures()->flags & UHMM_FEAT_UFFD_SIGBUS))
		return -EOPNOTSUPP;
	pthread_mutex_lock(&mm_global_lock);
	if (uhmm_mm_is_current(mm_current) && mm_current->faults_in_thread != (mode == UHMM_FAULTS_IN_THREAD))
		ret = -EBUSY;
	else
		__atomic_store_n(&fault_mode, (int)mode, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&mm_global_lock);
	return ret;
}

static int mm_create(struct uhmm_mm **out)
{
	struct uhmm_mm *mm = uhmm_kcalloc(1, sizeof(*mm));
	int ret;

	if (!mm)
		return -ENOMEM;
	mm->pid = uhmm_self_pid();
	atomic_init(&mm->refs, 1);
	mm->invalidate_seq = 2;
	mm->stop_efd = -1;
	pthread_mutex_init(&mm->lock, NULL);
	pthread_mutex_init(&mm->dp_lock, NULL);
	pthread_mutex_init(&mm->zap_lock, NULL);
	pthread_mutex_init(&mm->excl_lock, NULL);
	pthread_rwlock_init(&mm->mmap_lock, NULL);
	pthread_cond_init(&mm->cond, NULL);
	pthread_cond_init(&mm->dp_cond, NULL);
	mm->faults_in_thread = uhmm_fault_mode_wanted() == UHMM_FAULTS_IN_THREAD;
	mm->uffd = uhmm_uffd_open(UHMM_UFFD_WANT_FEATURES | (mm->faults_in_thread ? UFFD_FEATURE_SIGBUS : 0),
				  &mm->uffd_features);
	if (mm->uffd < 0) {
		ret = mm->uffd;
		goto err_free;
	}
	if (mm->faults_in_thread && !(mm->uffd_features & UFFD_FEATURE_SIGBUS)) {
		ret = -EOPNOTSUPP;
		goto err_free;
	}
	mm->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mm->stop_efd < 0) {
		ret = -errno;
		goto err_free;
	}
	ret = uhmm_service_start(mm);
	if (ret)
		goto err_free;
	if (mm->faults_in_thread)
		uhmm_thread_faults_start();	/* before anything is registered */
	*out = mm;
	return 0;

err_free:
	mm_free(mm);
	return ret;
}

UHMM_EXPORT int uhmm_mm_get(struct uhmm_mm **out)
{
	const struct uhmm_features *kf;
	int ret = 0;

	if (!out)
		return -EINVAL;
	kf = uhmm_kfeatures();
	if (!(kf->flags & UHMM_FEAT_UFFD))
		return kf->uffd_error ? kf->uffd_error : -ENOSYS;
	pthread_once(&atfork_once, mm_install_atfork);

	pthread_mutex_lock(&mm_global_lock);
	/* A child created without fork() handlers (raw clone) drops the parent's. */
	if (mm_current && !uhmm_mm_is_current(mm_current))
		mm_current = NULL;
	if (mm_current)
		atomic_fetch_add(&mm_current->refs, 1);
	else
		ret = mm_create(&mm_current);
	if (!ret)
		*out = mm_current;
	pthread_mutex_unlock(&mm_global_lock);
	return ret;
}

/*
 * Unregister first: once nothing is registered no thread can raise an event
 * that only the (stopping) reader could complete. Then stop the threads.
 * Notifiers hold references, so none is left.
 */
static void mm_destroy(struct uhmm_mm *mm)
{
	uhmm_excl_fini(mm);	/* needs the userfaultfd and the threads */
	pthread_mutex_lock(&mm->lock);
	for (size_t i = 0; i < mm->registered.n; i++)
		uhmm_uffd_unregister(mm->uffd, mm->registered.v[i].start, mm->registered.v[i].end);
	mm->registered.n = 0;
	pthread_mutex_unlock(&mm->lock);
	if (mm->faults_in_thread)
		uhmm_thread_faults_stop();	/* nothing registered: no SIGBUS of uhmm's comes any more */
	uhmm_service_stop(mm);
	mm_free(mm);
}

UHMM_EXPORT void uhmm_mm_put(struct uhmm_mm *mm)
{
	if (!mm)
		return;
	if (!uhmm_mm_is_current(mm))
		return;	/* the parent's mm seen from a child: abandoned */
	pthread_mutex_lock(&mm_global_lock);
	if (atomic_fetch_sub(&mm->refs, 1) != 1) {
		pthread_mutex_unlock(&mm_global_lock);
		return;
	}
	if (mm_current == mm)
		mm_current = NULL;
	pthread_mutex_unlock(&mm_global_lock);
	mm_destroy(mm);
}

/*
 * Process exit: like the kernel's mmu_notifier_release(), every notifier
 * hears UHMM_NOTIFY_RELEASE. The mm itself stays: other threads may still
 * run until exit_group().
 */
__attribute__((destructor)) static void mm_at_exit(void)
{
	struct uhmm_mm *mm = uhmm_mm_peek();

	if (mm)
		uhmm_invalidate(mm, 0, UINT64_MAX, UHMM_NOTIFY_RELEASE, NULL);
}

/* ---- registration ---- */

static int mm_register_vma(struct uhmm_mm *mm, const struct uhmm_vma *v, uint64_t s, uint64_t e)
{
	int ret;

	if ((v->flags & UHMM_VMA_SPECIAL) || uhmm_kmem_owns(s, e))
		return 0;
	/*
	 * Under the lock, so that teardown's unregister-all cannot miss it;
	 * only the gaps, so that a MISSING|WP span is never downgraded.
	 */
	pthread_mutex_lock(&mm->lock);
	ret = 0;
	for (uint64_t gs = s, ge; !ret && uhmm_spanset_next_gap(&mm->registered, gs, e, &gs, &ge); gs = ge) {
		ret = uhmm_uffd_register(mm->uffd, gs, ge, UFFDIO_REGISTER_MODE_WP, NULL);
		if (ret == 0)
			ret = uhmm_spanset_add(&mm->registered, gs, ge);
	}
	pthread_mutex_unlock(&mm->lock);
	if (ret == 0)
		return 0;
	/*
	 * EBUSY: another userfaultfd (the application's own) has this VMA.
	 * EINVAL: a kind of memory userfaultfd cannot watch (a regular file
	 * mapping): changes to it reach uhmm only through the interposed calls.
	 */
	if (ret == -EBUSY)
		return -EEXIST;
	return 0;
}

int uhmm_mm_unify_registration(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	uint64_t mode = UFFDIO_REGISTER_MODE_WP;
	struct uhmm_vma v[2];
	int n, ret = -ENOENT;

	start = uhmm_align_down(start, UHMM_PAGE_SIZE);
	end = uhmm_align_up(end, UHMM_PAGE_SIZE);
	if (end <= start || uhmm_kmem_owns(start, end))
		return -EINVAL;
	/* The kernel's VMAs, not uhmm's sets: those lag behind unmap events. */
	n = uhmm_vma_list(start, end, v, 2);
	if (n < 2 || (v[0].flags & UHMM_VMA_SPECIAL))
		return n < 0 ? n : -ENOENT;
	pthread_mutex_lock(&mm->lock);
	if (uhmm_spanset_intersects(&mm->registered, start, end)) {
		if (uhmm_spanset_intersects(&mm->missing, start, end))
			mode |= UFFDIO_REGISTER_MODE_MISSING;
		ret = uhmm_uffd_register(mm->uffd, start, end, mode, NULL);
		if (ret == 0)
			ret = uhmm_spanset_add(&mm->registered, start, end);
		if (ret == 0 && (mode & UFFDIO_REGISTER_MODE_MISSING))
			ret = uhmm_spanset_add(&mm->missing, start, end);
	}
	pthread_mutex_unlock(&mm->lock);
	return ret;
}

/*
 * Register exactly the mapped parts of [start, end). Rounding out (to keep
 * VMA splits down) was tried and dropped: anonymous VMAs merge, so a
 * rounded span can reach memory nobody asked uhmm to watch (a malloc
 * arena, a sanitizer's shadow), whose later munmap would then wait on
 * uhmm's reader. Adjacent registrations merge back into one VMA.
 */
static int mm_register_range(struct uhmm_mm *mm, uint64_t start, uint64_t end, struct uhmm_vma *v, int cap)
{
	uint64_t cursor = start;
	int n, ret;

	while (cursor < end) {
		n = uhmm_vma_list(cursor, end, v, cap);
		if (n <= 0)
			return n;
		for (int i = 0; i < n && i < cap; i++) {
			uint64_t s = v[i].start > start ? v[i].start : start;
			uint64_t e = v[i].end < end ? v[i].end : end;

			ret = mm_register_vma(mm, &v[i], s, e);
			if (ret)
				return ret;
			cursor = v[i].end;
		}
		if (n <= cap)
			break;
	}
	return 0;
}

int uhmm_mm_register(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct uhmm_vma v[32];
	bool covered;
	int ret;

	/* The set is exact only once the events read so far are handled. */
	uhmm_service_sync(mm);
	pthread_mutex_lock(&mm->lock);
	covered = uhmm_spanset_covers(&mm->registered, start, end);
	pthread_mutex_unlock(&mm->lock);
	if (covered)
		return 0;
	pthread_rwlock_rdlock(&mm->mmap_lock);
	ret = mm_register_range(mm, start, end, v, (int)UHMM_ARRAY_SIZE(v));
	pthread_rwlock_unlock(&mm->mmap_lock);
	return ret;
}

void uhmm_mm_forget(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	pthread_mutex_lock(&mm->lock);
	uhmm_spanset_remove(&mm->registered, start, end);
	uhmm_spanset_remove(&mm->missing, start, end);
	pthread_mutex_unlock(&mm->lock);
}

UHMM_EXPORT int uhmm_mm_sync(struct uhmm_mm *mm)
{
	if (!mm || !uhmm_mm_is_current(mm))
		return -EINVAL;
	uhmm_service_sync(mm);
	return 0;
}
