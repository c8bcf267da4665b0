// SPDX-License-Identifier: MIT
/*
 * The library never prints: messages go to a callback the program installs.
 */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static void (*log_fn)(void *arg, int level, const char *msg);
static void *log_arg;

UHMM_EXPORT void uhmm_set_logger(void (*fn)(void *arg, int level, const char *msg), void *arg)
{
	log_arg = arg;
	__atomic_store_n(&log_fn, fn, __ATOMIC_RELEASE);
}

void uhmm_log(int level, const char *fmt, ...)
{
	void (*fn)(void *, int, const char *) = __atomic_load_n(&log_fn, __ATOMIC_ACQUIRE);
	char line[256];
	va_list ap;

	if (!fn)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fn(log_arg, level, line);
}
