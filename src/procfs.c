// SPDX-License-Identifier: MIT
/*
 * Cached /proc file descriptors. /proc/self is resolved when a file is
 * opened, so a descriptor inherited across fork() still describes the
 * parent: each descriptor is tagged with the pid that opened it and reopened
 * in a child.
 */
#include <errno.h>
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
	pid_t pid = uhmm_self_pid();
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

/*
 * Lines of a /proc file, read with read(2) into the caller's buffer: stdio
 * would allocate its FILE and buffer from the libc heap, which a migration
 * can take while a service thread needs it (see kmem.c).
 */
int uhmm_lines_open(struct uhmm_lines *l, const char *path)
{
	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	l->len = l->pos = 0;
	return l->fd < 0 ? -errno : 0;
}

/* The next line without its newline, cut to @size - 1 bytes; false at the end. */
bool uhmm_lines_next(struct uhmm_lines *l, char *line, size_t size)
{
	size_t n = 0;
	bool got = false;	/* a byte read, even an empty line's newline */

	for (;;) {
		if (l->pos == l->len) {
			ssize_t r = read(l->fd, l->buf, sizeof(l->buf));

			if (r <= 0)
				break;
			l->len = (size_t)r;
			l->pos = 0;
		}
		char c = l->buf[l->pos++];

		got = true;
		if (c == '\n')
			break;
		if (n + 1 < size)
			line[n++] = c;
	}
	line[n] = 0;
	return got;
}

void uhmm_lines_close(struct uhmm_lines *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
}
