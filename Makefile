# uhmm: plain GNU make.
#   make              libraries, the uhmm command, examples
#   make demo         build and run the demonstration
#   make check        build and run the whole test suite (ends "N passed, N failed")
#   make install PREFIX=/usr/local DESTDIR=
# Variants: CC=clang, WERROR=1, SAN=asan (ASan+UBSan) or SAN=tsan; each
# variant builds in its own directory (BUILD=...).

VERSION := 0.1.0
SOVERSION := 0
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=

CC ?= cc
SAN ?=
BUILD ?= build$(if $(SAN),-$(SAN))$(if $(filter clang%,$(notdir $(CC))),-clang)

Q := $(if $(V),,@)
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CFLAGS ?= -O2 -g
BASE_CFLAGS := -std=gnu11 -D_GNU_SOURCE -pthread -fPIC -fvisibility=hidden $(WARN) \
	-Isrc/include -Isrc -Iopencl/include
ifeq ($(WERROR),1)
BASE_CFLAGS += -Werror
endif
ifeq ($(SAN),asan)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ifeq ($(SAN),tsan)
SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
endif
# libFuzzer (clang): the library instrumented for coverage, under ASan+UBSan.
ifeq ($(SAN),fuzz)
SAN_FLAGS := -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ALL_CFLAGS = $(BASE_CFLAGS) $(SAN_FLAGS) $(CFLAGS)
LDLIBS := -pthread

LIB_SRCS := $(wildcard src/*.c src/lib/*.c sim/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
TEST_SRCS := $(wildcard test/*.c test/conformance/*.c) test/stress/stress.c
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/%.o)
TOOL_SRCS := $(wildcard tools/*.c bench/*.c)
TOOL_OBJS := $(TOOL_SRCS:%.c=$(BUILD)/%.o)
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

STATIC := $(BUILD)/libuhmm.a
SHARED := $(BUILD)/libuhmm.so.$(VERSION)

# uhmm-opencl (opencl/): built when the OpenCL headers and ICD loader are
# installed (Debian: ocl-icd-opencl-dev; a device: pocl-opencl-icd).
HAVE_OPENCL ?= $(shell test -f /usr/include/CL/cl.h && $(CC) -print-file-name=libOpenCL.so | grep -q / && echo 1)
CL_SRCS := $(wildcard opencl/*.c)
CL_OBJS := $(CL_SRCS:%.c=$(BUILD)/%.o)
CL_STATIC := $(BUILD)/libuhmm-opencl.a
CL_SHARED := $(BUILD)/libuhmm-opencl.so.$(VERSION)
CL_LDLIBS := -lOpenCL -lm $(LDLIBS)
CL_TEST_SRCS := test/harness.c test/util.c $(wildcard test/opencl/*.c)
CL_TEST_OBJS := $(CL_TEST_SRCS:%.c=$(BUILD)/%.o)
CL_EXAMPLES := $(patsubst examples/opencl/%.c,$(BUILD)/examples/opencl/%,$(wildcard examples/opencl/*.c))
CL_ALL := $(if $(HAVE_OPENCL),$(CL_STATIC) $(CL_SHARED) $(CL_EXAMPLES) $(BUILD)/uhmm-cl-bench)

all: $(STATIC) $(SHARED) $(BUILD)/uhmm $(EXAMPLES) $(CL_ALL)

$(BUILD)/%.o: %.c $(wildcard src/*.h src/include/*.h src/include/uhmm/*.h src/uapi/*.h src/lib/*.h sim/*.h test/*.h tools/*.h bench/*.h opencl/*.h opencl/include/uhmm/*.h examples/opencl/*.h)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(STATIC): $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJS) src/uhmm.map
	$(CC) $(ALL_CFLAGS) -shared -Wl,-soname,libuhmm.so.$(SOVERSION) \
		-Wl,--version-script=src/uhmm.map -o $@ $(LIB_OBJS) $(LDLIBS)
	ln -sf libuhmm.so.$(VERSION) $(BUILD)/libuhmm.so.$(SOVERSION)
	ln -sf libuhmm.so.$(SOVERSION) $(BUILD)/libuhmm.so

$(BUILD)/uhmm: $(TOOL_OBJS) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $(TOOL_OBJS) $(STATIC) $(LDLIBS)

$(BUILD)/uhmm-tests: $(TEST_OBJS) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_OBJS) $(STATIC) $(LDLIBS)

$(BUILD)/uhmm-stress: $(BUILD)/test/stress/main.o $(BUILD)/test/stress/stress.o $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/uhmm-fuzz: $(BUILD)/fuzz/api.o $(STATIC)
	$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

$(BUILD)/examples/%: examples/%.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(LDLIBS)

$(CL_STATIC): $(CL_OBJS)
	rm -f $@
	ar rcs $@ $^

$(CL_SHARED): $(CL_OBJS) $(SHARED) opencl/uhmm-opencl.map
	$(CC) $(ALL_CFLAGS) -shared -Wl,-soname,libuhmm-opencl.so.$(SOVERSION) \
		-Wl,--version-script=opencl/uhmm-opencl.map -o $@ $(CL_OBJS) -L$(BUILD) -luhmm $(CL_LDLIBS)
	ln -sf libuhmm-opencl.so.$(VERSION) $(BUILD)/libuhmm-opencl.so.$(SOVERSION)
	ln -sf libuhmm-opencl.so.$(SOVERSION) $(BUILD)/libuhmm-opencl.so

$(BUILD)/uhmm-cl-tests: $(CL_TEST_OBJS) $(CL_STATIC) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $(CL_TEST_OBJS) $(CL_STATIC) $(STATIC) $(CL_LDLIBS)

$(BUILD)/uhmm-cl-bench: $(BUILD)/bench/opencl/bench_cl.o $(CL_STATIC) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(CL_LDLIBS)

$(BUILD)/examples/opencl/%: examples/opencl/%.c examples/opencl/kernels.h $(CL_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(CL_STATIC) $(STATIC) $(CL_LDLIBS)

demo: $(BUILD)/uhmm
	$(BUILD)/uhmm demo

# Benchmarks: uhmm's paths next to the raw mechanisms, same run (docs/performance.md).
bench: $(BUILD)/uhmm
	$(BUILD)/uhmm bench $(BENCHFLAGS)

# Every test, in three modes: fast paths, forced fallbacks, unprivileged.
# TSan refuses to start threads in the child of a multi-threaded fork unless
# told not to; the fork tests do exactly that, on purpose.
# Then uhmm-opencl's tests, on the OpenCL device (PoCL in CI): with SVM
# device memory where the device has it, and again with cl_mem buffers.
check: $(BUILD)/uhmm-tests $(if $(HAVE_OPENCL),$(BUILD)/uhmm-cl-tests)
	TSAN_OPTIONS="die_after_fork=0 $(TSAN_OPTIONS)" $(BUILD)/uhmm-tests $(TESTFLAGS)
ifeq ($(HAVE_OPENCL),1)
	TSAN_OPTIONS="die_after_fork=0 $(TSAN_OPTIONS)" $(BUILD)/uhmm-cl-tests $(TESTFLAGS)
	@echo "uhmm-opencl again, with cl_mem buffers instead of SVM (UHMM_CL_SVM=0):"
	UHMM_CL_SVM=0 TSAN_OPTIONS="die_after_fork=0 $(TSAN_OPTIONS)" $(BUILD)/uhmm-cl-tests $(TESTFLAGS)
else
	@echo "note: uhmm-opencl not built (no OpenCL headers/loader: apt-get install ocl-icd-opencl-dev pocl-opencl-icd)"
endif

# uhmm-opencl next to hand-written OpenCL and SVM (docs/performance.md).
bench-cl: $(BUILD)/uhmm-cl-bench
	$(BUILD)/uhmm-cl-bench $(BENCHFLAGS)

# Every scenario of the kernel's HMM self-test next to uhmm's result, per mode.
conformance: $(BUILD)/uhmm-tests
	TSAN_OPTIONS="die_after_fork=0 $(TSAN_OPTIONS)" tools/conformance.sh $(BUILD)

# The model-checked stress test, long (make check runs five 2-second ones).
# STRESSFLAGS: -s SEED -t SECONDS -T THREADS -r REGIONS -p PAGES -n OPS -F
# (no fork) -C (no chaos thread) -x OPS (leave out) -m (trace marks) -i RULES
# (inject failures) -H (2 MiB regions, units); build/uhmm-stress -h lists them.
stress: $(BUILD)/uhmm-stress
	$(BUILD)/uhmm-stress $(STRESSFLAGS)

# libFuzzer on the public API (fuzz/api.c), clang only, bounded in time.
# FUZZ_SECONDS (default 60); the corpus grows in build-fuzz-clang/corpus, and
# a crash is left as build-fuzz-clang/crash-* (rerun: uhmm-fuzz FILE).
FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) SAN=fuzz CC=clang build-fuzz-clang/uhmm-fuzz
	mkdir -p build-fuzz-clang/corpus
	build-fuzz-clang/uhmm-fuzz -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096 \
		-artifact_prefix=build-fuzz-clang/ -print_final_stats=1 build-fuzz-clang/corpus fuzz/seeds

# uhmm.pc is made at install time: it must name this install's PREFIX.
install: $(STATIC) $(SHARED) $(BUILD)/uhmm $(if $(HAVE_OPENCL),$(CL_STATIC) $(CL_SHARED))
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' uhmm.pc.in > $(BUILD)/uhmm.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/uhmm $(DESTDIR)$(BINDIR)
	install -m 644 src/include/uhmm.h $(DESTDIR)$(INCLUDEDIR)/uhmm.h
	install -m 644 src/include/uhmm/dmirror.h $(DESTDIR)$(INCLUDEDIR)/uhmm/dmirror.h
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libuhmm.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libuhmm.so.$(VERSION)
	ln -sf libuhmm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuhmm.so.$(SOVERSION)
	ln -sf libuhmm.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libuhmm.so
	install -m 644 $(BUILD)/uhmm.pc $(DESTDIR)$(LIBDIR)/pkgconfig/uhmm.pc
	install -m 755 $(BUILD)/uhmm $(DESTDIR)$(BINDIR)/uhmm
	for s in 1 3 7; do for f in man/*.$$s; do [ -e "$$f" ] || continue; \
		install -d $(DESTDIR)$(MANDIR)/man$$s; install -m 644 $$f $(DESTDIR)$(MANDIR)/man$$s/; done; done
	for f in man/*.3; do for a in $$(sh tools/man-aliases.sh $$f); do \
		echo ".so man3/$$(basename $$f)" > $(DESTDIR)$(MANDIR)/man3/$$a.3; done; done
ifeq ($(HAVE_OPENCL),1)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' opencl/uhmm-opencl.pc.in > $(BUILD)/uhmm-opencl.pc
	install -m 644 opencl/include/uhmm/opencl.h $(DESTDIR)$(INCLUDEDIR)/uhmm/opencl.h
	install -m 644 $(CL_STATIC) $(DESTDIR)$(LIBDIR)/libuhmm-opencl.a
	install -m 755 $(CL_SHARED) $(DESTDIR)$(LIBDIR)/libuhmm-opencl.so.$(VERSION)
	ln -sf libuhmm-opencl.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuhmm-opencl.so.$(SOVERSION)
	ln -sf libuhmm-opencl.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libuhmm-opencl.so
	install -m 644 $(BUILD)/uhmm-opencl.pc $(DESTDIR)$(LIBDIR)/pkgconfig/uhmm-opencl.pc
endif

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/uhmm.h $(DESTDIR)$(INCLUDEDIR)/uhmm/dmirror.h $(DESTDIR)$(INCLUDEDIR)/uhmm/opencl.h
	-rmdir $(DESTDIR)$(INCLUDEDIR)/uhmm
	rm -f $(DESTDIR)$(LIBDIR)/libuhmm.a $(DESTDIR)$(LIBDIR)/libuhmm.so*
	rm -f $(DESTDIR)$(LIBDIR)/libuhmm-opencl.a $(DESTDIR)$(LIBDIR)/libuhmm-opencl.so*
	rm -f $(DESTDIR)$(LIBDIR)/pkgconfig/uhmm.pc $(DESTDIR)$(LIBDIR)/pkgconfig/uhmm-opencl.pc $(DESTDIR)$(BINDIR)/uhmm
	for f in man/*.1 man/*.3 man/*.7; do [ -e "$$f" ] || continue; \
		rm -f $(DESTDIR)$(MANDIR)/man$${f##*.}/$$(basename $$f); done
	for f in man/*.3; do for a in $$(sh tools/man-aliases.sh $$f); do rm -f $(DESTDIR)$(MANDIR)/man3/$$a.3; done; done

clean:
	rm -rf build build-*

.PHONY: all demo bench bench-cl check conformance stress fuzz install uninstall clean
