# apigw: `make run` (demo) and `make test` (everything CI runs).
# Both install what is missing on a Debian bookworm machine (as root).

SHELL   := /bin/bash
PY      := /usr/bin/python3
BUILD   := $(CURDIR)/build
MODULE  := $(BUILD)/ngx_http_apigw_module.so
KEYS    := $(BUILD)/apigw-keys
NGX_SRC ?= /usr/share/nginx/src

DEBS := nginx nginx-dev libhiredis-dev libjansson-dev libssl-dev \
        libcmocka-dev redis-server redis-tools python3-pytest \
        python3-requests python3-redis gcc make curl faketime \
        libnginx-mod-http-perl libnginx-mod-http-geoip \
        libnginx-mod-http-image-filter libnginx-mod-http-xslt-filter \
        libnginx-mod-mail libnginx-mod-stream libnginx-mod-stream-geoip

CORE_SRCS  := $(sort $(wildcard src/core/*.c))
CORE_HDRS  := $(wildcard src/core/*.h)
NGX_SRCS   := $(wildcard src/*.c) $(wildcard src/*.h) config
UNIT_SRCS  := $(sort $(wildcard t/unit/test_*.c))
UNIT_BINS  := $(patsubst t/unit/%.c,$(BUILD)/unit/%,$(UNIT_SRCS))
# small programs the integration tests drive (e.g. dumping a Lua script)
TTOOL_SRCS := $(sort $(wildcard t/tools/*.c))
TTOOL_BINS := $(patsubst t/tools/%.c,$(BUILD)/tools/%,$(TTOOL_SRCS))

CFLAGS     ?= -O2 -g
CORE_CFLAGS := $(CFLAGS) -std=gnu99 -Wall -Wextra -Werror -Wno-unused-parameter \
               -Isrc/core
CORE_LIBS  := -ljansson -lcrypto

# installs those of the packages given that are not installed yet
install_missing = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: all deps build module tools unit integration test run clean

all: build

deps:
	@$(call install_missing,$(DEBS))

build: module tools $(TTOOL_BINS)

module: $(MODULE)

# nginx-dev ships the headers and configure of Debian's nginx; configure it
# with Debian's flags so the .so loads into /usr/sbin/nginx.
$(MODULE): $(CORE_SRCS) $(CORE_HDRS) $(NGX_SRCS)
	@mkdir -p $(BUILD)
	@if [ ! -f $(BUILD)/nginx/objs/Makefile ] || [ config -nt $(BUILD)/nginx/objs/Makefile ]; then \
	  rm -rf $(BUILD)/nginx && cp -r $(NGX_SRC) $(BUILD)/nginx && \
	  cd $(BUILD)/nginx && source ./conf_flags && \
	  ./configure "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(CURDIR) \
	    > $(BUILD)/configure.log 2>&1 || { tail -20 $(BUILD)/configure.log; exit 1; }; \
	fi
	$(MAKE) -s -C $(BUILD)/nginx -f objs/Makefile modules
	@# a new inode: nginx processes that mapped the old .so keep running
	cp $(BUILD)/nginx/objs/ngx_http_apigw_module.so $(MODULE).tmp
	mv -f $(MODULE).tmp $(MODULE)

tools: $(KEYS)

# the key-management CLI: synchronous hiredis is fine outside nginx
$(KEYS): tools/apigw-keys.c $(CORE_SRCS) $(CORE_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CORE_CFLAGS) -o $@ tools/apigw-keys.c $(CORE_SRCS) $(CORE_LIBS) -lhiredis

$(BUILD)/unit/%: t/unit/%.c $(CORE_SRCS) $(CORE_HDRS)
	@mkdir -p $(BUILD)/unit
	$(CC) $(CORE_CFLAGS) -o $@ $< $(CORE_SRCS) $(CORE_LIBS) -lcmocka

$(BUILD)/tools/%: t/tools/%.c $(CORE_SRCS) $(CORE_HDRS)
	@mkdir -p $(BUILD)/tools
	$(CC) $(CORE_CFLAGS) -o $@ $< $(CORE_SRCS) $(CORE_LIBS)

unit: $(UNIT_BINS)
	@rc=0; for t in $(UNIT_BINS); do echo "== $$t"; $$t || rc=1; done; exit $$rc

integration: build
	cd t/integration && APIGW_ROOT=$(CURDIR) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: deps
	$(MAKE) build
	$(MAKE) unit
	$(MAKE) integration

run: deps
	$(MAKE) build
	$(PY) tools/demo.py

clean:
	rm -rf $(BUILD)

# nginx's own test suite (../shared/nginx-tests, see its run.sh) against
# Debian's nginx, without and with apigw: `nginx-tests` with `apigw on` and
# the differences listed in t/nginx-tests.expected, `nginx-tests-off` with
# the module loaded and off, where nothing may differ.  About 8 minutes
# each on 2 cores.
SHARED ?= $(CURDIR)/../shared
.PHONY: nginx-tests nginx-tests-off

nginx-tests: build
	bash $(SHARED)/nginx-tests/run.sh $(MODULE) t/nginx-tests.expected

nginx-tests-off: build
	APIGW_HTTP="apigw off;" bash $(SHARED)/nginx-tests/run.sh $(MODULE)

# Benchmark (not part of `make test`): see bench/README.md.  The script
# installs what it needs (wrk, the Lua peer's packages) and runs make build.
# BENCH_ARGS passes options, e.g. BENCH_ARGS="-d 2 -r 1 --workers 1".
.PHONY: bench bench-soak

bench:
	$(PY) bench/bench.py $(BENCH_ARGS)

bench-soak:
	$(PY) bench/bench.py --soak $(BENCH_ARGS)

# ---- fuzzing and sanitizers (fuzz/README.md) ------------------------------
# Not part of `make test`.  `make fuzz` runs every libFuzzer target of
# fuzz/ for FUZZ_SECONDS each, `make fuzz-ci` for 20 s each; `make
# test-asan` runs the integration suite against an ASan+UBSan build of the
# module; `make test-valgrind` runs the Redis-fault tests with nginx under
# valgrind.  Everything is built under build/.
.PHONY: deps-sanitizers fuzz-build fuzz fuzz-ci asan-module test-asan \
        test-valgrind

SAN_DEBS := clang libclang-rt-14-dev valgrind

deps-sanitizers: deps
	@$(call install_missing,$(SAN_DEBS))

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_TARGETS := $(patsubst fuzz/fuzz_%.c,%,$(sort $(wildcard fuzz/fuzz_*.c)))
FUZZ_BINS    := $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_TARGETS))
FUZZ_OBJS    := $(patsubst src/core/%.c,$(FUZZ_DIR)/obj/%.o,$(CORE_SRCS))
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=all -std=gnu99 -Wall -Wextra -Werror \
                -Wno-unused-parameter -Wno-unused-function -Isrc/core

$(FUZZ_DIR)/obj/%.o: src/core/%.c $(CORE_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_common.h $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJS) \
	  $(CORE_LIBS) -lhiredis

# kept: make would otherwise delete them as intermediates and rebuild
.SECONDARY: $(FUZZ_OBJS)

fuzz-build: $(FUZZ_BINS)

fuzz: deps-sanitizers
	$(MAKE) fuzz-build
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_TARGETS)

fuzz-ci: deps-sanitizers
	$(MAKE) fuzz-build
	fuzz/run.sh 20 $(FUZZ_DIR) $(FUZZ_TARGETS)

# The module with ASan+UBSan, configured like the normal build (Debian's
# flags) plus the sanitizer flags, in build/asan/.  /usr/sbin/nginx is not
# instrumented: the harness preloads the sanitizer runtime of the same
# compiler into nginx (APIGW_NGINX_PRELOAD) and loads this .so
# (APIGW_MODULE).  clang's runtime holds ASan and UBSan in one library;
# with ASAN_CC=gcc (libasan + libubsan) reports ignore log_path and land in
# error.log, where the harness finds them too.
ASAN_CC     ?= clang
ASAN_DIR    := $(BUILD)/asan
ASAN_MODULE := $(ASAN_DIR)/ngx_http_apigw_module.so
ASAN_FLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_CCOPT   = $(ASAN_FLAGS) -O1 -g $(if $(findstring clang,$(ASAN_CC)),$\
                 -fsanitize-ignorelist=$(CURDIR)/t/asan/ignorelist.txt)
ASAN_RTLIB   = $(if $(findstring clang,$(ASAN_CC)),$\
                 libclang_rt.asan-x86_64.so,libasan.so)
ASAN_RT      = $(shell $(ASAN_CC) -print-file-name=$(ASAN_RTLIB))
# nginx frees its pools only partly at exit: no leak check on nginx
ASAN_RUN_OPTIONS  := detect_leaks=0:abort_on_error=1:disable_coredump=1:$\
                     detect_stack_use_after_return=1
UBSAN_RUN_OPTIONS := print_stacktrace=1:halt_on_error=0

asan-module: $(ASAN_MODULE)

# the compiler of the last build: another one rebuilds from configure on
$(ASAN_DIR)/cc: asan-cc-check
	@:
.PHONY: asan-cc-check
asan-cc-check:
	@mkdir -p $(ASAN_DIR)
	@[ "$$(cat $(ASAN_DIR)/cc 2>/dev/null)" = "$(ASAN_CC)" ] \
	  || echo "$(ASAN_CC)" > $(ASAN_DIR)/cc

$(ASAN_MODULE): $(ASAN_DIR)/cc t/asan/ignorelist.txt $(CORE_SRCS) \
                $(CORE_HDRS) $(NGX_SRCS)
	@if [ ! -f $(ASAN_DIR)/nginx/objs/Makefile ] \
	    || [ config -nt $(ASAN_DIR)/nginx/objs/Makefile ] \
	    || [ $(ASAN_DIR)/cc -nt $(ASAN_DIR)/nginx/objs/Makefile ] \
	    || [ t/asan/ignorelist.txt -nt $(ASAN_DIR)/nginx/objs/Makefile ]; \
	then \
	  rm -rf $(ASAN_DIR)/nginx && cp -r $(NGX_SRC) $(ASAN_DIR)/nginx && \
	  cd $(ASAN_DIR)/nginx && source ./conf_flags && \
	  ASAN_OPTIONS=detect_leaks=0 ./configure "$${NGX_CONF_FLAGS[@]}" \
	    --with-cc=$(ASAN_CC) --with-cc-opt="$(ASAN_CCOPT)" \
	    --with-ld-opt="$(ASAN_FLAGS)" --add-dynamic-module=$(CURDIR) \
	    > $(ASAN_DIR)/configure.log 2>&1 \
	    || { tail -20 $(ASAN_DIR)/configure.log; exit 1; }; \
	fi
	ASAN_OPTIONS=detect_leaks=0 $(MAKE) -s -C $(ASAN_DIR)/nginx \
	  -f objs/Makefile modules
	cp $(ASAN_DIR)/nginx/objs/ngx_http_apigw_module.so $(ASAN_MODULE)

# the whole integration suite; a sanitizer report fails the test that made
# it (t/integration/harness.py, check_instances)
test-asan: deps-sanitizers
	$(MAKE) build
	$(MAKE) asan-module
	cd t/integration && APIGW_ROOT=$(CURDIR) APIGW_MODULE=$(ASAN_MODULE) \
	  APIGW_NGINX_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=$(ASAN_RUN_OPTIONS) \
	  UBSAN_OPTIONS=$(UBSAN_RUN_OPTIONS) \
	  $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the Redis-fault tests (auth, and rate-limit batches left by their
# clients) with nginx (one process, master_process off) under valgrind;
# t/valgrind/run.py judges the valgrind logs
test-valgrind: deps-sanitizers
	$(MAKE) build
	$(PY) t/valgrind/run.py --root $(CURDIR) --out $(BUILD)/valgrind \
	  $(PYTEST_ARGS)

# ---- soak (tools/soak.py; not part of `make test`) ------------------------
# SOAK_SECONDS of wrk load through auth + rate limit + idempotency while
# redis-server is restarted, SIGSTOPped and the upstreams flap (the fault
# schedule scales with the duration); then: no worker crash, every error an
# envelope with a designed code, no Idempotency-Key executed twice, worker
# RSS flat.  Summary in bench/results/soak.txt, files in build/soak/.
# SOAK_ARGS passes options, e.g. SOAK_ARGS="--rate 1500 --nice 10".
SOAK_SECONDS ?= 300
SOAK_ARGS    ?=

.PHONY: soak

soak: deps
	@command -v wrk >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends wrk; }
	$(MAKE) build
	$(PY) tools/soak.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)
