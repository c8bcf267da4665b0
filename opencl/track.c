// SPDX-License-Identifier: MIT
/*
 * Write tracking for read-only arguments.
 *
 * A kernel argument declared `const __global T *` is only read by the
 * device: migrating it would take the pages away from the CPU for nothing
 * (and a CPU that rewrites its inputs would fetch the old contents back
 * first). uhmm-opencl copies such an argument to the device instead and
 * keeps the copy while the CPU does not write the pages: the pages are
 * registered with a userfaultfd of the driver's own in asynchronous
 * write-protect mode (UFFD_FEATURE_WP_ASYNC, 6.7+: the kernel resolves a
 * write itself, no event, no thread), and before each launch one
 * PAGEMAP_SCAN lists the pages written since and write-protects them again
 * (PM_SCAN_WP_MATCHING): only those are copied again. Without the feature,
 * or where another userfaultfd (uhmm's, after a migration) holds the range,
 * the argument migrates as any other.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "uapi/uhmm_uapi.h"

#define SCAN_VEC 64

void ucl_track_open(struct uhmm_cl *ctx)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

	ctx->track_fd = ctx->pagemap_fd = -1;
	if (fd < 0)
		return;
	if (ioctl(fd, UFFDIO_API, &api) || !(api.features & UFFD_FEATURE_WP_ASYNC)) {
		close(fd);
		return;
	}
	ctx->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (ctx->pagemap_fd < 0) {
		close(fd);
		return;
	}
	ctx->track_fd = fd;
}

void ucl_track_close(struct uhmm_cl *ctx)
{
	if (ctx->track_fd >= 0)
		close(ctx->track_fd);
	if (ctx->pagemap_fd >= 0)
		close(ctx->pagemap_fd);
	ctx->track_fd = ctx->pagemap_fd = -1;
}

static int protect(struct uhmm_cl *ctx, uint64_t start, uint64_t end)
{
	struct uffdio_writeprotect wp = { .range = { start, end - start }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	return ioctl(ctx->track_fd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

/* Watch @r's pages for writes, from now on. false: cannot (the argument migrates instead). */
bool ucl_track_start(struct uhmm_cl *ctx, struct ucl_region *r)
{
	struct uffdio_register reg = { .range = { r->a, r->b - r->a }, .mode = UFFDIO_REGISTER_MODE_WP };

	if (r->tracked)
		return true;
	if (ctx->track_fd < 0 || ioctl(ctx->track_fd, UFFDIO_REGISTER, &reg))
		return false;	/* EBUSY: another userfaultfd (uhmm's) holds part of it */
	if (protect(ctx, r->a, r->b)) {
		ucl_track_stop(ctx, r);
		return false;
	}
	r->tracked = true;
	return true;
}

void ucl_track_stop(struct uhmm_cl *ctx, struct ucl_region *r)
{
	struct uffdio_range range = { r->a, r->b - r->a };

	if (ctx->track_fd >= 0)
		(void)ioctl(ctx->track_fd, UFFDIO_UNREGISTER, &range);	/* ENOENT/EINVAL if unmapped since */
	r->tracked = false;
	r->copy_valid = false;
}

/*
 * Call @fn for every run of @r's pages written since the last call (each
 * protected again as it is reported). Returns 0, or -errno: then the
 * caller must treat every page as written.
 */
int ucl_track_written(struct uhmm_cl *ctx, struct ucl_region *r,
		      int (*fn)(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t start, uint64_t end, void *arg),
		      void *arg)
{
	struct page_region vec[SCAN_VEC];
	struct pm_scan_arg scan = {
		.size = sizeof(scan), .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = r->a, .end = r->b, .vec = (uintptr_t)vec, .vec_len = SCAN_VEC,
		.category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
	};

	for (;;) {
		long n = ioctl(ctx->pagemap_fd, PAGEMAP_SCAN, &scan);

		if (n < 0)
			return -errno;
		for (long i = 0; i < n; i++) {
			int ret = fn(ctx, r, vec[i].start, vec[i].end, arg);

			if (ret)
				return ret;
		}
		if (scan.walk_end >= r->b || n < SCAN_VEC)
			return 0;
		scan.start = scan.walk_end;
	}
}
