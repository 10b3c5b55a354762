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
        python3-requests python3-redis gcc make curl

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

.PHONY: all deps build module tools unit integration test run clean

all: build

deps:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi

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
	cp $(BUILD)/nginx/objs/ngx_http_apigw_module.so $(MODULE)

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
