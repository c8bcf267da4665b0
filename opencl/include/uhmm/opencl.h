/* SPDX-License-Identifier: MIT */
/*
 * uhmm-opencl: OpenCL kernels on ordinary memory.
 *
 * A device driver on uhmm's public API for any OpenCL 1.2+ device. Kernel
 * pointer arguments are host pointers (malloc'ed, stack or mmap'ed private
 * memory); uhmm-opencl migrates their pages into device buffers (cl_mem)
 * before the kernel runs, leaves the results there, and a CPU touch brings
 * them back, as kernel HMM does for a GPU driver. See uhmm_cl(3).
 */
#ifndef UHMM_OPENCL_H
#define UHMM_OPENCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_cl;	/* opaque: one device, its memory and its queues */

/* uhmm_cl_context_create() options; a NULL config takes every default. */
struct uhmm_cl_config {
	size_t size;		/* sizeof(struct uhmm_cl_config): for growth */
	unsigned int platform;	/* index in clGetPlatformIDs() order (0) */
	unsigned int device;	/* index among the platform's devices (0) */
	size_t device_bytes;	/* device memory uhmm-opencl may use (0: a quarter of
				   CL_DEVICE_GLOBAL_MEM_SIZE, at most 1 GiB) */
	size_t chunk_bytes;	/* size of each device buffer allocated (0: 64 MiB);
				   a range bigger than this gets a buffer of its own */
	int memory;		/* UHMM_CL_MEMORY_*: what device memory is made of */
};

/* struct uhmm_cl_config.memory */
#define UHMM_CL_MEMORY_AUTO	0	/* fine-grained SVM buffers if the device has them, else buffers */
#define UHMM_CL_MEMORY_BUFFERS	1	/* cl_mem buffers (OpenCL 1.2); also UHMM_CL_SVM=0 in the environment */

/**
 * uhmm_cl_context_create() - open an OpenCL device for uhmm
 * @out: the context
 * @config: NULL, or options (size must be set)
 *
 * Creates an OpenCL context and two in-order queues on the device (one for
 * launches and migrations to the device, one for CPU fault-back), and a
 * uhmm pagemap of device_bytes / page size pages whose backing store is
 * the device buffers. Return: 0; -EINVAL (NULL @out, a bad config);
 * -ENODEV (no such platform or device); -ENOMEM; -ENOSYS/-EPERM (no
 * userfaultfd, see uhmm_query_features()); -EIO (the runtime refused);
 * -EOPNOTSUPP if this process serves faults in the faulting thread
 * (uhmm_set_fault_mode(3)): the CPU fault-back calls the OpenCL runtime,
 * which cannot run in a signal handler.
 */
int uhmm_cl_context_create(struct uhmm_cl **out, const struct uhmm_cl_config *config);

/**
 * uhmm_cl_context_destroy() - bring every page back and close the device
 * Every page still on the device is migrated back first: nothing is lost.
 */
void uhmm_cl_context_destroy(struct uhmm_cl *ctx);

cl_context uhmm_cl_get_context(const struct uhmm_cl *ctx);
cl_device_id uhmm_cl_get_device(const struct uhmm_cl *ctx);

/**
 * uhmm_cl_program_build() - compile OpenCL C source for the device
 * @src: the source; @options: build options or NULL; @out: the program
 * Return: 0; -EINVAL; -ENOEXEC if the build failed (the log goes to stderr).
 */
int uhmm_cl_program_build(struct uhmm_cl *ctx, const char *src, const char *options, cl_program *out);

enum uhmm_cl_arg_kind {
	UHMM_CL_ARG_PTR = 1,	/* a host pointer and the bytes the kernel may touch */
	UHMM_CL_ARG_VALUE,	/* a value of @size bytes at @ptr (clSetKernelArg) */
	UHMM_CL_ARG_LOCAL,	/* @size bytes of __local memory */
	UHMM_CL_ARG_PTR_WO,	/* as PTR, and the kernel writes every byte before it reads any
				   (CL_MEM_WRITE_ONLY's promise): the old contents of pages that
				   migrate for it are not copied to the device */
};

struct uhmm_cl_arg {
	enum uhmm_cl_arg_kind kind;
	const void *ptr;
	size_t size;
};

#define UHMM_CL_PTR(p, bytes) ((struct uhmm_cl_arg){ UHMM_CL_ARG_PTR, (p), (bytes) })
#define UHMM_CL_VALUE(v) ((struct uhmm_cl_arg){ UHMM_CL_ARG_VALUE, &(v), sizeof(v) })
#define UHMM_CL_LOCAL(bytes) ((struct uhmm_cl_arg){ UHMM_CL_ARG_LOCAL, NULL, (bytes) })
#define UHMM_CL_PTR_WO(p, bytes) ((struct uhmm_cl_arg){ UHMM_CL_ARG_PTR_WO, (p), (bytes) })

/**
 * uhmm_cl_launch() - run a kernel whose pointer arguments are host memory
 * @kernel: a kernel of a program built for this context
 * @dims: 1, 2 or 3; @global: work size per dimension; @local: NULL or the
 *        work-group size per dimension
 * @args: the kernel's arguments in order; @nargs: how many (at most 64)
 *
 * Every UHMM_CL_PTR argument's pages are made device-resident (migrated
 * from system memory; pages already there stay) in one contiguous device
 * region, and the kernel gets that region as a buffer starting at the
 * pointer. Returns when the kernel has finished; its results stay on the
 * device until the CPU touches them, another launch needs the space, or
 * uhmm_cl_prefetch() brings them back. Two pointer arguments may be the
 * same (pointer, size); otherwise their bytes must not overlap. A
 * UHMM_CL_PTR_WO argument is an output the kernel overwrites whole: what
 * it held is not copied to the device (bytes the kernel then leaves
 * unwritten are undefined, as with CL_MEM_WRITE_ONLY).
 *
 * Return: 0; -EINVAL (NULL ctx/kernel/global, bad dims or nargs, an argument
 * without a pointer or size, overlapping pointer arguments, a runtime
 * CL_INVALID_* error); -EFAULT (a pointer argument is not private,
 * anonymous, readable and writable memory of this process: MAP_SHARED,
 * file pages, unmapped, or uhmm's own); -E2BIG (a pointer argument larger
 * than the device memory); -ENOMEM (the device memory cannot hold every
 * pointer argument at once); -EBUSY (the pages kept changing under the
 * launch for a second); -EIO (the runtime failed a command). On an error
 * no page is lost: each is in system memory or on the device.
 */
int uhmm_cl_launch(struct uhmm_cl *ctx, cl_kernel kernel, unsigned int dims, const size_t *global,
		   const size_t *local, const struct uhmm_cl_arg *args, unsigned int nargs);

enum uhmm_cl_where {
	UHMM_CL_TO_DEVICE = 1,
	UHMM_CL_TO_HOST,
};

/**
 * uhmm_cl_prefetch() - move [ptr, ptr + len) now (cudaMemPrefetchAsync)
 * @where: UHMM_CL_TO_DEVICE: make the whole pages of the range device-
 *         resident, as a launch would; UHMM_CL_TO_HOST: bring every page
 *         of the range that is on this device back to system memory.
 * Return: as uhmm_cl_launch() (to the device), or 0 / -EINVAL (to the host).
 */
int uhmm_cl_prefetch(struct uhmm_cl *ctx, const void *ptr, size_t len, enum uhmm_cl_where where);

struct uhmm_cl_stats {
	uint64_t launches;
	uint64_t pages_to_device;	/* migrated in (launches and prefetches) */
	uint64_t pages_to_host;		/* migrated back (CPU touches, prefetch, eviction) */
	uint64_t faults;		/* CPU touches that brought pages back */
	uint64_t evictions;		/* regions evicted to make room */
	uint64_t edge_bytes;		/* bytes copied for partly covered pages */
	uint64_t resident_pages;	/* device pages holding data now */
	uint64_t buffers;		/* device buffers allocated now */
	uint64_t buffer_bytes;		/* and their total size */
	uint64_t readonly_bytes;	/* bytes of read-only (const) arguments copied to the device */
};

/** uhmm_cl_stats() - 0, or -EINVAL for NULL. */
int uhmm_cl_stats(struct uhmm_cl *ctx, struct uhmm_cl_stats *out);

#ifdef __cplusplus
}
#endif
#endif
