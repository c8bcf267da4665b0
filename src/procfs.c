// SPDX-License-Identifier: MIT
/*
 * Cached /proc file descriptors. /proc/self is resolved when a file is
 * opened, so a descriptor inherited across fork() still describes the
 * parent: each descriptor is tagged with the pid that opened it and reopened
 * in a child.
 */
#include <fcntl.h>
#include <unistd.h>

#include "internal.h"

static const char *const proc_paths[] = {
	[UHMM_PROC_PAGEMAP] = "/proc/self/pagemap",
	[UHMM_PROC_MAPS] = "/proc/self/maps",
	[UHMM_PROC_KPAGEFLAGS] = "/proc/kpageflags",
};

static struct {
	int fd;
	pid_t pid;
} proc_fds[UHMM_ARRAY_SIZE(proc_paths)];
static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;

int uhmm_proc_fd(enum uhmm_proc_file which)
{
	pid_t pid = getpid();
	int fd;

	pthread_mutex_lock(&proc_lock);
	if (proc_fds[which].pid != pid || proc_fds[which].fd <= 0) {
		/* The stale fd belongs to the parent's image of this table: close it. */
		if (proc_fds[which].fd > 0)
			close(proc_fds[which].fd);
		fd = open(proc_paths[which], O_RDONLY | O_CLOEXEC);
		proc_fds[which].fd = fd < 0 ? 0 : fd;
		proc_fds[which].pid = pid;
	}
	fd = proc_fds[which].fd > 0 ? proc_fds[which].fd : -ENOENT;
	pthread_mutex_unlock(&proc_lock);
	return fd;
}

/* fork() may have copied the lock held by another thread: start afresh. */
void uhmm_procfs_after_fork_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;

	proc_lock = fresh;
}
