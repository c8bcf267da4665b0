// SPDX-License-Identifier: MIT
/*
 * Opening a userfaultfd and registering ranges with it.
 *
 * Three ways to get one, tried in order (QEMU and CRIU do the same):
 * userfaultfd(2) with full kernel-mode fault handling (root, or
 * vm.unprivileged_userfaultfd=1); /dev/userfaultfd (access to the node);
 * userfaultfd(UFFD_USER_MODE_ONLY), always allowed but kernel-mode accesses
 * to a trapping range then fail with EFAULT instead of waiting.
 */
#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "../uapi/uhmm_uapi.h"

static int uffd_open_raw(enum uhmm_uffd_source src)
{
	int fd, dev;

	switch (src) {
	case UHMM_UFFD_SYSCALL:
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		return fd < 0 ? -errno : fd;
	case UHMM_UFFD_DEVICE:
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev < 0)
			return -errno;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		fd = fd < 0 ? -errno : fd;
		close(dev);
		return fd;
	case UHMM_UFFD_USER_MODE_ONLY:
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		return fd < 0 ? -errno : fd;
	default:
		return -EINVAL;
	}
}

/*
 * Open a userfaultfd from the best source that works. On success returns the
 * fd and stores the source in *@src; on failure the -errno of the last try.
 */
int uhmm_uffd_open_any(enum uhmm_uffd_source *src)
{
	static const enum uhmm_uffd_source order[] = {
		UHMM_UFFD_SYSCALL, UHMM_UFFD_DEVICE, UHMM_UFFD_USER_MODE_ONLY,
	};
	int fd = -ENOSYS;

	for (size_t i = 0; i < UHMM_ARRAY_SIZE(order); i++) {
		fd = uffd_open_raw(order[i]);
		if (fd >= 0) {
			*src = order[i];
			return fd;
		}
	}
	return fd;
}

/*
 * Open a userfaultfd and enable @want_features (those the kernel lacks are
 * left out). Returns the fd or -errno; *@got_features gets what was enabled.
 */
int uhmm_uffd_open(uint64_t want_features, uint64_t *got_features)
{
	const struct uhmm_features *kf = uhmm_kfeatures();
	struct uffdio_api api = { .api = UFFD_API };
	enum uhmm_uffd_source src;
	int fd;

	fd = uhmm_uffd_open_any(&src);
	if (fd < 0)
		return fd;
	api.features = want_features & kf->uffd_features;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	*got_features = api.features;
	return fd;
}

int uhmm_uffd_register(int uffd, uint64_t start, uint64_t end, uint64_t mode, uint64_t *ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = end - start },
		.mode = mode,
	};

	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if (ioctls)
		*ioctls = reg.ioctls;
	return 0;
}

/* A userfaultfd ioctl, EAGAIN retried (UHMM_EAGAIN_TRIES). Returns 0 or -errno. */
int uhmm_uffd_ioctl(int uffd, unsigned long request, void *arg)
{
	for (int tries = 0; ioctl(uffd, request, arg) < 0; tries++) {
		if (errno != EAGAIN || tries == UHMM_EAGAIN_TRIES)
			return -errno;
		sched_yield();
	}
	return 0;
}

int uhmm_uffd_unregister(int uffd, uint64_t start, uint64_t end)
{
	struct uffdio_range r = { .start = start, .len = end - start };

	return ioctl(uffd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}
