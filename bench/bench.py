#!/usr/bin/python3
"""apigw benchmark: `make bench` (and `make bench-soak`).

One run on loopback, as root on Debian bookworm:

  1. installs what is missing (the project's packages through `make deps`,
     then wrk and the Lua peer's packages), builds the module (`make build`);
  2. starts a private redis-server (free port, no persistence), an upstream
     (a separate nginx answering `return 200 '{"ok":true}'`) and one nginx
     under test per configuration;
  3. loads each with wrk (fixed connection count, a warm-up first)
     in rounds where every run of a configuration sits between two runs of
     its reference (B id B auth B ... B), for worker_processes 1 and then 2;
     a ratio is the median over the rounds of run / adjacent reference runs;
  4. prints the table with the SPEC's targets (PASS/FAIL), writes
     bench/results/results.csv, bench/results/results.svg and the raw wrk
     outputs under bench/results/raw/.

`--soak` instead sends 1,000,000 requests through apigw-auth-rl and reports
the worker's RSS before and after.  See bench/README.md.

Everything it starts is stopped by pid when it ends (also on Ctrl-C or a
SIGTERM); children also get SIGTERM through PR_SET_PDEATHSIG should this
process be killed outright.
"""

import argparse
import csv
import hashlib
import html
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the integration tests' process helpers: popen, terminate, free_port, ...
sys.path.insert(0, os.path.join(ROOT, "t", "integration"))
import harness as H  # noqa: E402
BENCH = os.path.join(ROOT, "bench")
RESULTS = os.path.join(BENCH, "results")
RAW = os.path.join(RESULTS, "raw")
TMP = os.path.join(RESULTS, "tmp")
MODULE = os.path.join(ROOT, "build", "ngx_http_apigw_module.so")
KEYS_TOOL = os.path.join(ROOT, "build", "apigw-keys")
SCRIPT_TOOL = os.path.join(ROOT, "build", "tools", "apigw_script")
WRK_SCRIPT = os.path.join(BENCH, "wrk", "bench.lua")
LUA_DIR = os.path.join(BENCH, "lua")
NGINX = "/usr/sbin/nginx"
NGX_MODULES = "/usr/lib/nginx/modules"
LUA_SO = ("ndk_http_module.so", "ngx_http_lua_module.so")

# what the bench needs on top of the project's own packages (make deps)
BENCH_DEBS = ("wrk", "libnginx-mod-http-lua", "lua-nginx-redis",
              "lua-nginx-string")


# the single rate-limit policy: far above anything loopback reaches, so no
# request is ever refused (a 429 would be counted as an error by the check)
RL_POLICY = "bench"
RL_RATE = 1000000          # tokens per second
RL_BURST = 1000000

# SPEC "Performance"
TARGET_IDS = 0.95
TARGET_AUTH = 0.90
TARGET_AUTH_RL = 0.60
TARGET_VS_LUA = 2.0
TARGET_P99_ADDED_MS = 1.0

START_TIMEOUT = 15.0
# more CPU than this (in cores) used by other processes during a measured
# run, and the row is flagged: its figures are not those of a quiet machine
NOISY_CORES = 0.10
STOP_TIMEOUT = 10.0


class BenchError(H.HarnessError):
    """Ends the bench with a message.  A HarnessError, so that a wait on
    something that has failed (H.wait_for) stops at once."""


def log(msg=""):
    print(msg, flush=True)


# -- processes ---------------------------------------------------------------

_live = []     # every Popen still to be stopped, newest last


def popen(argv, logfile, env=None):
    p = H.popen(argv, logfile, env)
    _live.append(p)
    return p


def terminate(p, first=signal.SIGTERM, timeout=STOP_TIMEOUT):
    H.terminate(p, first, timeout)
    if p in _live:
        _live.remove(p)


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children_of(ppid, needle=None):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) != ppid:
                continue
            if needle:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if needle.encode() not in f.read():
                        continue
        except (OSError, ValueError, IndexError):
            continue
        out.append(int(d))
    return sorted(out)


def vm_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError("no VmRSS for pid %d" % pid)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot():
    """(busy ticks of the whole machine,
    {pid: (ppid, utime+stime ticks, nice, cutime+cstime ticks)})

    Busy is user + nice + system + irq + softirq: the kernel charges the
    loopback's softirq work to whichever process it interrupts (so it is in
    the processes' stime) but counts it apart in /proc/stat, and how much
    of it there is differs from one row to the next."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    total = (int(v[1]) + int(v[2]) + int(v[3]) + int(v[6]) + int(v[7]))
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]),
                             int(rest[16]), int(rest[13]) + int(rest[14]))
        except (OSError, ValueError, IndexError):
            continue
    return total, procs


def foreign_cpu(before, after, seconds):
    """(cores, niced cores) used by processes outside this script's tree
    between two snapshots: the machine's busy time minus our tree's.  A
    quiet machine shows ~0; a test suite or a build next to the bench shows
    in the first; a niced job (a fuzzer at nice 19) mostly takes what the
    bench leaves idle, and shows in the second."""
    me = os.getpid()
    ours = {me}
    procs = after[1]
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _, _) in procs.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    mine = niced = 0
    for pid, (ppid, ticks, nice, reaped) in procs.items():
        old = before[1].get(pid)
        delta = ticks - (old[1] if old else 0)
        if pid in ours:
            # + the children it waited for meanwhile: the run's wrk
            mine += delta + reaped - (old[3] if old else 0)
        elif nice > 0:
            niced += delta
    busy = after[0] - before[0]
    return (max(0.0, (busy - mine - niced) / CLK_TCK / seconds),
            max(0.0, niced / CLK_TCK / seconds))


def dpkg_installed(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return b"ok installed" in p.stdout


class NoServiceStart:
    """While apt installs nginx-extras, keep its maintainer scripts from
    starting the system nginx on port 80: a policy-rc.d that says no, only
    if there is none already (Debian containers usually ship one)."""
    PATH = "/usr/sbin/policy-rc.d"

    def __enter__(self):
        self.made = False
        if not os.path.exists(self.PATH):
            with open(self.PATH, "w") as f:
                f.write("#!/bin/sh\n# written by apigw bench/bench.py "
                        "during apt-get install\nexit 101\n")
            os.chmod(self.PATH, 0o755)
            self.made = True
        return self

    def __exit__(self, *exc):
        if self.made:
            try:
                os.unlink(self.PATH)
            except OSError:
                pass


def install_and_build(args):
    if not args.no_install:
        if os.geteuid() != 0:
            raise BenchError("installing packages needs root "
                             "(or run with --no-install)")
        with NoServiceStart():
            log("== make deps")
            subprocess.run(["make", "-s", "-C", ROOT, "deps"], check=True)
            missing = [p for p in BENCH_DEBS if not dpkg_installed(p)]
            if missing:
                log("== installing: " + " ".join(missing))
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                subprocess.run(["apt-get", "update", "-qq"], check=True,
                               env=env)
                subprocess.run(["apt-get", "install", "-y", "-qq",
                                "--no-install-recommends"] + missing,
                               check=True, env=env)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise BenchError("%s is not installed" % tool)
    if not args.no_build:
        log("== make build")
        p = subprocess.run(["make", "-s", "-C", ROOT, "build"])
        if p.returncode != 0:
            raise BenchError("make build failed (rc=%d); --no-build benches "
                             "the module already in build/" % p.returncode)
    for f in (MODULE, KEYS_TOOL, SCRIPT_TOOL):
        if not os.path.exists(f):
            raise BenchError("%s is missing: run make build" % f)


# -- redis ---------------------------------------------------------------------

def resp_encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def resp_read(f):
    line = f.readline()
    if not line:
        raise BenchError("redis closed the connection")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise BenchError("redis: " + rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise BenchError("redis: bad reply %r" % line)


def redis_cmd(port, *args):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(resp_encode(*args))
        with s.makefile("rb") as f:
            return resp_read(f)


class Redis:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = H.free_port()
        self.proc = None

    def start(self):
        self.proc = popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", self.dir, "--logfile", "",
             "--maxclients", "1000"],
            os.path.join(self.dir, "redis.log"))

        def up():
            if self.proc.poll() is not None:
                raise BenchError("redis-server exited:\n" + H.tail(
                    os.path.join(self.dir, "redis.log")))
            try:
                return redis_cmd(self.port, "PING") == "PONG"
            except (OSError, BenchError):
                return False
        H.wait_for(up, START_TIMEOUT, what="redis-server")
        return self

    def cmd(self, *args):
        return redis_cmd(self.port, *args)

    def used_memory(self):
        info = self.cmd("INFO", "memory")
        m = re.search(r"^used_memory:(\d+)", info, re.M)
        return int(m.group(1)) if m else None

    def stop(self):
        terminate(self.proc)


# -- nginx ---------------------------------------------------------------------

TEMP_PATHS = """\
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
"""


class Nginx:
    def __init__(self, workdir, name, conf_text, port):
        self.name = name
        self.prefix = os.path.join(workdir, name)
        os.makedirs(self.prefix, exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.port = port
        self.proc = None
        self.workers_seen = set()
        with open(self.conf, "w") as f:
            f.write(conf_text)

    def argv(self, *extra):
        return [NGINX, "-p", self.prefix + "/", "-c", self.conf] + list(extra)

    def test(self):
        """(ok, message) of nginx -t"""
        p = subprocess.run(self.argv("-t", "-q", "-e", "stderr"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode("utf-8", "replace").strip()
        if p.returncode == 0:
            return True, out
        m = re.search(r"\[emerg\][^\n]*", out)
        if m:   # the message without the long path of the conf file
            return False, re.sub(r" in \S+nginx\.conf:(\d+)$",
                                 r" (nginx.conf line \1)", m.group(0))
        return False, (out.splitlines() or ["nginx -t failed"])[-1]

    def log_offset(self):
        try:
            return os.path.getsize(os.path.join(self.prefix, "error.log"))
        except OSError:
            return 0

    def log_errors(self, offset):
        """error.log lines of level error and worse written since offset,
        and among them the worker crashes"""
        try:
            with open(os.path.join(self.prefix, "error.log"), "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return [], []
        errs = [ln for ln in text.splitlines()
                if re.search(r"\[(error|crit|alert|emerg)\]", ln)]
        crashes = [ln for ln in errs if "exited on signal" in ln]
        return errs, crashes

    def start(self, workers):
        self.proc = popen(self.argv("-e", os.path.join(self.prefix,
                                                       "error.log")),
                          os.path.join(self.prefix, "stdout.log"))

        def up():
            if self.proc.poll() is not None:
                raise BenchError("nginx %s exited:\n%s" % (
                    self.name, H.tail(os.path.join(self.prefix, "error.log"))))
            return (H.port_open(self.port)
                    and len(self.worker_pids()) >= workers)
        H.wait_for(up, START_TIMEOUT, what="nginx %s" % self.name)
        return self

    def worker_pids(self):
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids = children_of(self.proc.pid, "worker process")
        self.workers_seen.update(pids)
        return pids

    def stop(self):
        if self.proc is None:
            return
        self.worker_pids()
        terminate(self.proc, signal.SIGQUIT)
        for pid in self.workers_seen:       # orphans after a SIGKILL
            if os.path.exists("/proc/%d" % pid):
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        if b"nginx" in f.read():
                            kill_pid(pid)
                except OSError:
                    pass
        self.proc = None


def nginx_main(workers, http_body, modules=()):
    lines = []
    for m in modules:
        lines.append("load_module %s;" % m)
    if os.geteuid() == 0:
        lines.append("user root;")
    lines += [
        "daemon off;",
        "master_process on;",
        "worker_processes %d;" % workers,
        "pid nginx.pid;",
        "error_log error.log warn;",
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        TEMP_PATHS.rstrip("\n"),
        "    keepalive_requests 1000000;",
        "    keepalive_timeout 300s;",
        http_body.rstrip("\n"),
        "}",
        "",
    ]
    return "\n".join(lines)


def upstream_conf(port):
    return nginx_main(1, """\
    default_type application/json;
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / {
            return 200 '{"ok":true}';
        }
    }
""" % port)


# -- the configurations under test ------------------------------------------

PATH = "/v1/items"
IDEM_REPLAY_KEY = "bench-replay-key"


class Instance:
    """One nginx under test; several rows may load the same instance."""

    def __init__(self, name, modules, http_extra, loc_extra, needs):
        self.name = name
        self.modules = modules
        self.http_extra = http_extra
        self.loc_extra = loc_extra
        self.needs = needs         # what n/a means here (for the report)


class Row:
    def __init__(self, name, instance, mode, auth, ratio_base, target=None,
                 p99_target=False, desc=""):
        self.name = name
        self.instance = instance
        self.mode = mode            # wrk BENCH_MODE
        self.auth = auth            # send the Authorization header
        self.ratio_base = ratio_base
        self.target = target        # (minimum ratio to baseline) or None
        self.p99_target = p99_target
        self.desc = desc


def instances(ctx):
    r = ctx["redis_port"]
    apigw = [ctx["module"]]
    lua = [os.path.join(NGX_MODULES, so) for so in LUA_SO]
    redis_http = ("    apigw_redis 127.0.0.1:%d;\n"
                  "    apigw_auth_cache zone=bench_keys:10m ttl=30s "
                  "negative_ttl=5s;\n" % r)
    peer_init = {
        "redis_host": "127.0.0.1", "redis_port": r, "timeout_ms": 50,
        "keepalive_ms": 60000, "pool_size": 64, "prefix": "apigw:",
        "cache_ttl": 30, "negative_ttl": 5, "policy": RL_POLICY,
        "capacity": RL_BURST, "tokens": RL_RATE, "period_ms": 1000,
        "script_file": ctx["tb_script_file"], "script_sha": ctx["tb_sha"],
    }
    peer_init_lua = ", ".join('%s = %s' % (k, json.dumps(v))
                              for k, v in sorted(peer_init.items()))
    return {
        "baseline": Instance("baseline", [], "", "", None),
        "apigw-id": Instance(
            "apigw-id", apigw, "    apigw on;\n", "", None),
        "apigw-auth": Instance(
            "apigw-auth", apigw, "    apigw on;\n" + redis_http,
            "            apigw_auth on;\n", None),
        "apigw-auth-rl": Instance(
            "apigw-auth-rl", apigw,
            "    apigw on;\n" + redis_http +
            "    apigw_rate_limit_zone %s rate=%dr/s burst=%d;\n"
            "    apigw_rate_limit_headers legacy;\n"
            % (RL_POLICY, RL_RATE, RL_BURST),
            "            apigw_auth on;\n"
            "            apigw_rate_limit %s;\n" % RL_POLICY,
            "apigw_rate_limit_zone / apigw_rate_limit"),
        "apigw-idem": Instance(
            "apigw-idem", apigw, "    apigw on;\n" + redis_http,
            "            apigw_auth on;\n"
            "            apigw_idempotency on;\n"
            "            proxy_ignore_client_abort on;\n",
            "apigw_idempotency"),
        "lua-auth-rl": Instance(
            "lua-auth-rl", lua,
            '    lua_package_path "%s/?.lua;;";\n'
            "    lua_shared_dict peer_keys 10m;\n"
            "    lua_socket_log_errors on;\n"
            "    init_by_lua_block {\n"
            '        require("apigw_peer").init({ %s })\n'
            "    }\n" % (LUA_DIR, peer_init_lua),
            "            add_header X-Request-Id $request_id always;\n"
            "            proxy_set_header X-Request-Id $request_id;\n"
            "            access_by_lua_block {\n"
            '                require("apigw_peer").access()\n'
            "            }\n"
            "            header_filter_by_lua_block {\n"
            '                require("apigw_peer").header_filter()\n'
            "            }\n",
            "libnginx-mod-http-lua, lua-nginx-redis, lua-nginx-string"),
    }


ROWS = [
    Row("baseline", "baseline", "get", False, "baseline",
        desc="module not loaded, plain proxy_pass"),
    Row("apigw-id", "apigw-id", "get", False, "baseline", TARGET_IDS, True,
        desc="apigw on: request ids + envelopes"),
    Row("apigw-auth", "apigw-auth", "get", True, "baseline", TARGET_AUTH,
        True, desc="+ apigw_auth on, auth cache hit"),
    Row("apigw-auth-rl", "apigw-auth-rl", "get", True, "baseline",
        TARGET_AUTH_RL, True,
        desc="+ one Redis token bucket per request"),
    Row("lua-auth-rl", "lua-auth-rl", "get", True, "baseline",
        desc="Lua peer: lua-resty-redis auth + EVALSHA bucket"),
    Row("baseline-post", "baseline", "post", False, "baseline-post",
        desc="POST with a JSON body, module not loaded"),
    Row("apigw-idem", "apigw-idem", "fresh", True, "baseline-post",
        desc="auth + Idempotency-Key, a fresh key per request"),
    Row("apigw-idem-replay", "apigw-idem", "replay", True, "baseline-post",
        desc="auth + Idempotency-Key, the same key: replays"),
]


def conf_for(inst, workers, port, upstream_port):
    loc = inst.loc_extra
    body = """\
    upstream backend {
        server 127.0.0.1:%d;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
%s
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
%s        }
    }
""" % (upstream_port, inst.http_extra, port, loc)
    return nginx_main(workers, body, inst.modules)


# -- checks before measuring ---------------------------------------------------

def http_req(port, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def check_row(row, inst_name, port, api_key):
    """(error or None, [warnings]) of one request as the row sends it."""
    warn = []
    auth = {"Authorization": "Bearer " + api_key} if row.auth else {}
    body = b'{"amount":1000,"currency":"usd","description":"bench"}'
    if row.mode == "get":
        st, h, data = http_req(port, "GET", PATH, auth)
    elif row.mode == "post":
        st, h, data = http_req(port, "POST", PATH, dict(
            auth, **{"Content-Type": "application/json"}), body)
    else:
        # the replay row's check also stores the response wrk replays, so
        # its 32 connections do not start by racing for one in-flight key
        key = (IDEM_REPLAY_KEY if row.mode == "replay" else
               "bench-check-%s-%d" % (row.name, time.time_ns()))
        hdr = dict(auth, **{"Content-Type": "application/json",
                            "Idempotency-Key": key})
        st, h, data = http_req(port, "POST", PATH, hdr, body)
        if st == 200 and row.mode == "replay":
            st, h, data = http_req(port, "POST", PATH, hdr, body)
            if h.get("idempotent-replayed") != "true":
                warn.append("no Idempotent-Replayed: true on a replay")
    if st != 200 or b'"ok":true' not in data:
        return ("%s %s answered %d %s" % (
            "POST" if row.mode != "get" else "GET", PATH, st,
            data[:200].decode("utf-8", "replace")), warn)
    if inst_name != "baseline" and "x-request-id" not in h:
        warn.append("no X-Request-Id on the response")
    if inst_name.endswith("-rl") and "x-ratelimit-remaining" not in h:
        warn.append("no X-RateLimit-Remaining on the response")
    if row.auth:
        st, h, data = http_req(port, "GET", PATH)
        if st != 401:
            return ("a request without a key answered %d, not 401: auth is "
                    "not enforced" % st, warn)
    return None, warn


# -- wrk ---------------------------------------------------------------------

def parse_duration_us(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[m.group(2)]


def parse_wrk(text):
    res = {}
    m = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if m:
        res.update(json.loads(m.group(1)))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m:
        raise BenchError("no Requests/sec in wrk's output:\n" + text[-2000:])
    res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        if key not in res:
            m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, text, re.M)
            if m:
                res[key] = parse_duration_us(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


def wait_markers(p, n, timeout):
    """wrk's output; once n threads have printed BENCH_SOAK_DONE (their
    request count reached), SIGINT makes wrk stop and print its summary
    (wrk itself would wait out the whole -d duration)."""
    buf = b""
    signalled = False
    deadline = time.monotonic() + timeout
    fd = p.stdout.fileno()
    while True:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(p.args, timeout)
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if not signalled and buf.count(b"BENCH_SOAK_DONE") >= n:
            H.signal_proc(p, signal.SIGINT)
            signalled = True
    p.wait(timeout=max(1.0, deadline - time.monotonic()))
    return buf


def run_wrk(port, row, api_key, seconds, args, raw_name=None,
            extra_env=None, timeout_s=None, stop_after_markers=0):
    env = dict(os.environ)
    env["BENCH_MODE"] = row.mode if row else "get"
    env["BENCH_RUN_ID"] = "%d%04d" % (time.time_ns() // 1000,
                                      os.getpid() % 10000)
    env["BENCH_IDEM_KEY"] = IDEM_REPLAY_KEY
    if extra_env:
        env.update(extra_env)
    argv = ["wrk", "-t%d" % args.threads, "-c%d" % args.connections,
            "-d%ds" % seconds, "--latency", "--timeout", "5s",
            "-s", WRK_SCRIPT]
    if api_key and (row is None or row.auth):
        argv += ["-H", "Authorization: Bearer " + api_key]
    argv.append("http://127.0.0.1:%d%s" % (port, PATH))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env,
                         start_new_session=True, **H.death_signal_kw())
    _live.append(p)
    try:
        if stop_after_markers:
            out = wait_markers(p, stop_after_markers,
                               timeout_s or seconds + 60)
        else:
            out, _ = p.communicate(timeout=timeout_s or seconds + 60)
    except subprocess.TimeoutExpired:
        terminate(p, signal.SIGKILL)
        raise BenchError("wrk did not finish in time")
    except BaseException:
        terminate(p, signal.SIGTERM, 5.0)   # interrupted: leave no wrk
        raise
    finally:
        if p in _live:
            _live.remove(p)
    text = out.decode("utf-8", "replace")
    if raw_name:
        os.makedirs(RAW, exist_ok=True)
        with open(os.path.join(RAW, raw_name), "w") as f:
            f.write("$ " + " ".join(
                a if "Bearer" not in a else "'Authorization: Bearer <key>'"
                for a in argv) + "\n" + text)
    if p.returncode != 0:
        raise BenchError("wrk failed (rc=%d):\n%s" % (p.returncode, text))
    return parse_wrk(text)


# -- one pass (one worker_processes value) -----------------------------------

def fmt_num(v, nd=2):
    return "-" if v is None else ("%.*f" % (nd, v))


def run_pass(workers, ctx, args, rows):
    workdir = ctx["workdir"]
    insts = instances(ctx)
    used = []
    for row in rows:
        if row.instance not in used:
            used.append(row.instance)

    results = {row.name: {"row": row, "status": "ok", "note": "",
                          "runs": [], "paced": []} for row in rows}
    running = {}
    try:
        for name in used:
            inst = insts[name]
            if name == "lua-auth-rl" and not all(
                    os.path.exists(os.path.join(NGX_MODULES, so))
                    for so in LUA_SO):
                reason = "Lua module not installed (%s)" % inst.needs
                for row in rows:
                    if row.instance == name:
                        results[row.name].update(status="n/a", note=reason)
                continue
            port = H.free_port()
            ngx = Nginx(workdir, "%s-w%d" % (name, workers),
                        conf_for(inst, workers, port,
                                 ctx["upstream_port"]), port)
            ok, msg = ngx.test()
            if not ok:
                reason = "nginx -t: " + msg
                if inst.needs:
                    reason = "not in the built module yet (%s): %s" % (
                        inst.needs, msg)
                for row in rows:
                    if row.instance == name:
                        results[row.name].update(status="n/a", note=reason)
                log("  %-18s n/a: %s" % (name, reason))
                continue
            ngx.start(workers)
            running[name] = ngx

        # one request per row, as wrk will send it
        for row in rows:
            res = results[row.name]
            if res["status"] != "ok":
                continue
            err, warns = check_row(row, row.instance,
                                   running[row.instance].port, ctx["api_key"])
            if err:
                res.update(status="error", note="check failed: " + err)
                log("  %-18s ERROR: %s" % (row.name, err))
            elif warns:
                res["note"] = "; ".join(warns)
                log("  %-18s warning: %s" % (row.name, res["note"]))

        live_rows = [r for r in rows if results[r.name]["status"] == "ok"]
        measure(workers, ctx, args, running, results, round_order(live_rows),
                args.runs, "runs", warmup=True)

        # latency: the p99 rows again at one fixed pace, far below
        # saturation, so that what p99 adds is the work and the waits of a
        # request, not the queue a closed loop builds when throughput drops
        # (and the Lua peer: what the same Redis hop costs it)
        lat_rows = [r for r in live_rows
                    if r.p99_target or r.name == "lua-auth-rl"
                    or any(x.p99_target and x.ratio_base == r.name
                           for x in live_rows)]
        if args.pace_ms > 0 and any(r.p99_target for r in lat_rows):
            measure(workers, ctx, args, running, results,
                    round_order(lat_rows), args.latency_runs, "paced",
                    extra_env={"BENCH_PACE_MS": str(args.pace_ms)})
        for row in live_rows:
            res = results[row.name]
            notes = [res["note"]] if res["note"] else []
            if res.get("crashes"):
                res["status"] = "error"
                notes.append("%d worker crash(es) during the runs: %s" % (
                    res["crashes"], res.get("last_error", "")[:160]))
            elif res.get("errors"):
                notes.append("%d error line(s) in error.log, last: %s" % (
                    res["errors"], res.get("last_error", "")[:160]))
            if any(w.get("requests", 1) == 0 or w["rps"] == 0
                   for w in res["runs"]):
                res["status"] = "error"
                notes.append("a run completed no request")
            res["note"] = "; ".join(notes)
    finally:
        for ngx in running.values():
            ngx.stop()
    return summarize(results, rows)


def measure(workers, ctx, args, running, results, order, rounds, kind,
            warmup=False, extra_env=None):
    """rounds rounds of the runs in order, each run stored under
    results[row][kind] ("runs": throughput, "paced": latency) and paired
    with the reference runs beside it.  Every run is checked alike: other
    processes' CPU, the nginx's error.log (crashes, errors), the nginx
    still running."""
    label = "run" if kind == "runs" else kind
    raw = "" if kind == "runs" else kind + "-"
    warmed = set()
    for run in range(1, rounds + 1):
        seq = []
        for k, row in enumerate(order):
            ngx = running[row.instance]
            # later rounds find everything warm: connections to the
            # upstream and Redis open, the auth cache filled
            if warmup and args.warmup > 0 and row.name not in warmed:
                run_wrk(ngx.port, row, ctx["api_key"], args.warmup, args)
                warmed.add(row.name)
            before = ngx.log_offset()
            snap0, t0 = cpu_snapshot(), time.monotonic()
            w = run_wrk(ngx.port, row, ctx["api_key"], args.duration,
                        args, raw_name="w%d-%sr%d-%02d-%s.txt" % (
                            workers, raw, run, k, row.name),
                        extra_env=extra_env)
            w["round"] = run
            seq.append((row, w))
            w["other_cpu"], w["other_cpu_niced"] = foreign_cpu(
                snap0, cpu_snapshot(), time.monotonic() - t0)
            res = results[row.name]
            res[kind].append(w)
            errs, crashes = ngx.log_errors(before)
            res["errors"] = res.get("errors", 0) + len(errs)
            res["crashes"] = res.get("crashes", 0) + len(crashes)
            if errs:
                res["last_error"] = errs[-1]
            bad = w.get("non2xx", 0)
            log("  w=%d %s %d %-18s %9.0f req/s  p50 %6s ms  "
                "p99 %6s ms  other CPU %.2f (niced %.2f)%s%s%s" % (
                    workers, label, run, row.name, w["rps"],
                    fmt_num(w.get("p50_us", 0) / 1e3),
                    fmt_num(w.get("p99_us", 0) / 1e3), w["other_cpu"],
                    w["other_cpu_niced"],
                    ("  NON-2xx: %d" % bad) if bad else "",
                    ("  CRASHED WORKERS: %d" % len(crashes))
                    if crashes else "",
                    ("  error.log: %d line(s)" % len(errs))
                    if errs else ""))
            if ngx.proc.poll() is not None:
                raise BenchError("nginx %s died during the run:\n%s" % (
                    ngx.name, H.tail(os.path.join(ngx.prefix,
                                                  "error.log"))))
        pair_with_reference(seq)


def round_order(rows):
    """The runs of one round.  Every run of a measured row sits between two
    runs of its reference (baseline, or baseline-post for the POST rows):
    B id B auth B ... B  Bp idem Bp replay Bp.  This machine drifts by
    +-10 % within a minute, so a row is compared with what its reference
    did seconds before and after, not with the reference's average."""
    order = []
    for ref in [r for r in rows if r.ratio_base == r.name]:
        order.append(ref)
        for r in rows:
            if r.ratio_base == ref.name and r is not ref:
                order += [r, ref]
    # a row whose reference is not running still gets its requests/s
    order += [r for r in rows if r not in order]
    return order


def pair_with_reference(seq):
    """Gives each measured run of a round the mean requests/s and p99 of
    the reference runs next to it (both neighbours, by round_order)."""
    for i, (row, w) in enumerate(seq):
        if row.ratio_base == row.name:
            continue
        refs = [seq[j][1] for j in (i - 1, i + 1)
                if 0 <= j < len(seq) and seq[j][0].name == row.ratio_base]
        if refs:
            w["pair_rps"] = statistics.mean(x["rps"] for x in refs)
            w["pair_p99_us"] = statistics.mean(x["p99_us"] for x in refs)


def paired(runs):
    """Per-run ratio to the adjacent reference runs, by round."""
    return {w["round"]: w["rps"] / w["pair_rps"] for w in runs
            if w.get("pair_rps")}


def ratios_and_latency(s, res, lua_x):
    row = s["row"]
    runs = res["runs"]
    if row.ratio_base == row.name:
        x = {w["round"]: 1.0 for w in runs}
    else:
        x = paired(runs)
        added = [w["p99_us"] - w["pair_p99_us"] for w in runs
                 if w.get("pair_p99_us") is not None]
        if added:
            s["p99_added_ms"] = statistics.median(added) / 1e3
    if x:
        s["x_base_runs"] = [x[k] for k in sorted(x)]
        s["x_base"] = statistics.median(s["x_base_runs"])
        s["x_base_lo"] = min(s["x_base_runs"])
        s["x_base_hi"] = max(s["x_base_runs"])
    # against the peer, round by round, through the same baseline
    both = [x[k] / lua_x[k] for k in x if lua_x.get(k)]
    if row.ratio_base == "baseline" and both:
        s["x_lua"] = statistics.median(both)
    paced = res["paced"]
    if paced:
        s["paced_rps"] = statistics.mean(w["rps"] for w in paced)
        s["paced_p50_ms"] = statistics.mean(w["p50_us"] for w in paced) / 1e3
        s["paced_p99_ms"] = statistics.mean(w["p99_us"] for w in paced) / 1e3
        added = [w["p99_us"] - w["pair_p99_us"] for w in paced
                 if w.get("pair_p99_us") is not None]
        if added:
            s["paced_p99_added_ms"] = statistics.median(added) / 1e3


def summarize(results, rows):
    out = []
    for row in rows:
        res = results[row.name]
        runs = res["runs"]
        s = {"config": row.name, "desc": row.desc, "status": res["status"],
             "note": res["note"], "runs": len(runs), "row": row,
             "rps": None, "rps_runs": [], "p50_ms": None, "p99_ms": None,
             "non2xx": 0, "other_cpu": None, "other_cpu_niced": None}
        if runs:
            s["rps_runs"] = [w["rps"] for w in runs]
            s["rps"] = statistics.mean(s["rps_runs"])
            s["p50_ms"] = statistics.mean(w["p50_us"] for w in runs) / 1e3
            s["p99_ms"] = statistics.mean(w["p99_us"] for w in runs) / 1e3
            s["other_cpu"] = max(w.get("other_cpu", 0) for w in runs)
            s["other_cpu_niced"] = max(w.get("other_cpu_niced", 0)
                                       for w in runs)
            if s["other_cpu"] > NOISY_CORES:
                s["note"] = ((s["note"] + "; ") if s["note"] else "") + \
                    "machine busy: up to %.2f cores used by other " \
                    "processes during a run" % s["other_cpu"]
            s["non2xx"] = sum(w.get("non2xx", 0) for w in runs)
            if s["non2xx"]:
                s["note"] = ((s["note"] + "; ") if s["note"] else "") + \
                    "%d non-2xx responses" % s["non2xx"]
        out.append(s)
    # ratios only between rows whose runs are valid: the median over the
    # rounds of each run's ratio to the reference runs beside it
    by = {s["config"]: s for s in out if s["status"] == "ok"}
    lua = by.get("lua-auth-rl")
    lua_x = paired(results[lua["config"]]["runs"]) if lua else {}
    for s in out:
        row = s["row"]
        s["x_base"] = s["x_base_lo"] = s["x_base_hi"] = None
        s["x_lua"] = s["p99_added_ms"] = None
        s["paced_rps"] = s["paced_p50_ms"] = s["paced_p99_ms"] = None
        s["paced_p99_added_ms"] = None
        s["x_base_runs"] = []
        if s["status"] == "ok" and row.ratio_base in by:
            ratios_and_latency(s, results[row.name], lua_x)
        s["target_x"] = row.target
        s["verdict_x"] = verdict(s["x_base"], row.target)
        s["target_lua"] = TARGET_VS_LUA if row.name == "apigw-auth-rl" \
            else None
        s["verdict_lua"] = verdict(s["x_lua"], s["target_lua"])
        # the latency target is judged at the fixed pace when it ran
        added = s["paced_p99_added_ms"]
        if added is None:
            added = s["p99_added_ms"]
        s["p99_judged_ms"] = added
        s["verdict_p99"] = None
        if row.p99_target:
            if added is None:
                s["verdict_p99"] = "n/a"
            else:
                s["verdict_p99"] = ("PASS" if added < TARGET_P99_ADDED_MS
                                    else "FAIL")
    return out


def verdict(value, target):
    if target is None:
        return None
    if value is None:
        return "n/a"
    return "PASS" if value >= target else "FAIL"


# -- reporting ---------------------------------------------------------------

def print_table(workers, summary, args):
    log("")
    log("worker_processes %d  (wrk -t%d -c%d, %d rounds of %d s runs, "
        "%d s warm-up first; req/s = mean of runs; x = median over the "
        "rounds of each run's ratio to the reference runs beside it, "
        "[lowest-highest])"
        % (workers, args.threads, args.connections, args.runs,
           args.duration, args.warmup))
    hdr = ("%-18s %9s %7s %7s  %-17s %-11s %-17s %-15s" % (
        "config", "req/s", "p50 ms", "p99 ms", "x baseline", "[range]",
        "x lua-auth-rl", "p99 added ms"))
    log(hdr)
    log("-" * len(hdr))
    for s in summary:
        if s["status"] != "ok":
            log("%-18s %9s   %s" % (s["config"], s["status"], s["note"]))
            continue
        xb = fmt_num(s["x_base"])
        if s["row"].ratio_base != "baseline":
            xb += "†"
        if s["verdict_x"]:
            xb += " %s>=%.2f" % (s["verdict_x"], s["target_x"])
        xl = fmt_num(s["x_lua"])
        if s["verdict_lua"]:
            xl += " %s>=%.1f" % (s["verdict_lua"], s["target_lua"])
        pa = "-" if s["p99_added_ms"] is None else "%+.3f" % s["p99_added_ms"]
        if s["verdict_p99"]:
            pa += " %s<1" % s["verdict_p99"]
        rng = "-"
        if s["x_base_lo"] is not None and s["row"].ratio_base != s["config"]:
            rng = "%.2f-%.2f" % (s["x_base_lo"], s["x_base_hi"])
        log("%-18s %9.0f %7.3f %7.3f  %-17s %-11s %-17s %-15s%s" % (
            s["config"], s["rps"], s["p50_ms"], s["p99_ms"], xb, rng, xl, pa,
            ("  [" + s["note"] + "]") if s["note"] else ""))
    log("† relative to baseline-post (the same POST without the module)")
    paced = [s for s in summary if s["status"] == "ok" and s["paced_rps"]]
    if paced:
        log("")
        log("latency at one pace: every connection waits %d ms before each "
            "request, %d rounds of %d s; p99 added = median over the rounds "
            "of p99 minus that of the baseline runs beside it"
            % (args.pace_ms, args.latency_runs, args.duration))
        hdr = "%-18s %9s %7s %7s  %-15s" % ("config", "req/s", "p50 ms",
                                              "p99 ms", "p99 added ms")
        log(hdr)
        log("-" * len(hdr))
        for s in paced:
            pa = "-"
            if s["paced_p99_added_ms"] is not None:
                pa = "%+.3f" % s["paced_p99_added_ms"]
                if s["verdict_p99"]:
                    pa += " %s<1" % s["verdict_p99"]
            log("%-18s %9.0f %7.3f %7.3f  %-15s" % (
                s["config"], s["paced_rps"], s["paced_p50_ms"],
                s["paced_p99_ms"], pa))


def targets_lines(summary):
    by = {s["config"]: s for s in summary}
    lines = []

    def add(label, s, key, target, vkey, fmt):
        # a config left out with --only has no row or no ratio to compare
        if s is None or (s["status"] == "ok" and s.get(key) is None):
            return
        if s["status"] != "ok":
            lines.append("%-44s n/a (%s)" % (label, s["status"]))
            return
        lines.append("%-44s %s  -> %s" % (label, fmt % s[key], s[vkey]))
    add("ids-only        >= 0.95x baseline req/s", by.get("apigw-id"),
        "x_base", TARGET_IDS, "verdict_x", "%.3fx")
    add("auth cache hit  >= 0.90x baseline req/s", by.get("apigw-auth"),
        "x_base", TARGET_AUTH, "verdict_x", "%.3fx")
    add("auth + rl       >= 0.60x baseline req/s", by.get("apigw-auth-rl"),
        "x_base", TARGET_AUTH_RL, "verdict_x", "%.3fx")
    add("auth + rl       >= 2x lua-auth-rl req/s", by.get("apigw-auth-rl"),
        "x_lua", TARGET_VS_LUA, "verdict_lua", "%.3fx")
    for name in ("apigw-id", "apigw-auth", "apigw-auth-rl"):
        add("p99 added < 1 ms (%s)" % name, by.get(name), "p99_judged_ms",
            TARGET_P99_ADDED_MS, "verdict_p99", "%+.3f ms")
    return lines


def write_csv(all_summaries, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workers", "config", "status", "runs", "rps_mean",
                    "rps_runs", "p50_ms", "p99_ms", "ratio_base",
                    "ratio_runs", "ratio_lowest", "ratio_highest",
                    "ratio_to", "ratio_lua_auth_rl", "p99_added_ms",
                    "target_ratio", "verdict_ratio", "verdict_vs_lua",
                    "verdict_p99", "paced_rps", "paced_p50_ms",
                    "paced_p99_ms", "paced_p99_added_ms",
                    "other_cpu_cores_max",
                    "other_niced_cpu_cores_max", "description",
                    "note"])
        for workers, summary in all_summaries:
            for s in summary:
                def r(v, nd=4):
                    return "" if v is None else round(v, nd)
                w.writerow([
                    workers, s["config"], s["status"], s["runs"],
                    r(s["rps"], 1),
                    ";".join("%.1f" % v for v in s["rps_runs"]),
                    r(s["p50_ms"], 3), r(s["p99_ms"], 3), r(s["x_base"]),
                    ";".join("%.4f" % v for v in s["x_base_runs"]),
                    r(s["x_base_lo"]), r(s["x_base_hi"]),
                    s["row"].ratio_base, r(s["x_lua"]),
                    r(s["p99_added_ms"], 3),
                    "" if s["target_x"] is None else s["target_x"],
                    s["verdict_x"] or "", s["verdict_lua"] or "",
                    s["verdict_p99"] or "", r(s["paced_rps"], 1),
                    r(s["paced_p50_ms"], 3), r(s["paced_p99_ms"], 3),
                    r(s["paced_p99_added_ms"], 3), r(s["other_cpu"], 2),
                    r(s["other_cpu_niced"], 2), s["desc"],
                    s["note"]])


def svg_chart(all_summaries, args, path, meta):
    """A horizontal bar chart per pass: req/s relative to baseline, with
    the SPEC's target lines.  Hand-written SVG."""
    W = 1360
    label_w = 150
    bar_x0 = label_w + 10
    bar_w = 540
    bar_h = 28
    gap = 8
    max_ratio = 1.2
    for _, summary in all_summaries:
        for s in summary:
            if s["x_base"]:
                max_ratio = max(max_ratio, s["x_base"] * 1.05)

    def X(ratio):
        return bar_x0 + bar_w * ratio / max_ratio

    esc = html.escape
    parts = []
    y = 20
    parts.append('<text x="%d" y="%d" class="title">apigw benchmark: '
                 'requests/s relative to baseline (same run)</text>'
                 % (10, y + 8))
    y += 26
    # the run's description, wrapped to the chart's width
    line = ""
    for word in meta.split(" "):
        if line and len(line) + 1 + len(word) > 170:
            parts.append('<text x="10" y="%d" class="sub">%s</text>' % (
                y, esc(line)))
            y += 14
            line = word
        else:
            line = (line + " " + word) if line else word
    parts.append('<text x="10" y="%d" class="sub">%s</text>' % (
        y, esc(line)))
    y += 14
    targets = [(TARGET_AUTH_RL, "0.6 auth+rl", 0),
               (TARGET_AUTH, "0.9 auth", 1),
               (TARGET_IDS, "0.95 ids", 2)]
    colors = {"PASS": "#2e7d32", "FAIL": "#c62828"}
    for workers, summary in all_summaries:
        y += 26
        parts.append('<text x="10" y="%d" class="h">worker_processes %d'
                     '</text>' % (y, workers))
        y += 40
        top = y - 6
        n = len(summary)
        bottom = top + n * (bar_h + gap) + 4
        # axis ticks
        t = 0.0
        while t <= max_ratio + 1e-9:
            parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" '
                         'class="grid"/>' % (X(t), top, X(t), bottom))
            parts.append('<text x="%.1f" y="%d" class="tick">%.1fx</text>'
                         % (X(t), bottom + 13, t))
            t += 0.2
        for value, label, k in targets:
            parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" '
                         'class="target"/>' % (X(value), top - 4,
                                               X(value), bottom))
            parts.append('<text x="%.1f" y="%d" class="tlabel">%s</text>'
                         % (X(value), top - 7 - 11 * k, esc(label)))
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" '
                     'class="base"/>' % (X(1.0), top - 4, X(1.0), bottom))
        for s in summary:
            yy = y + 0
            name = s["config"]
            parts.append('<text x="%d" y="%d" class="label">%s</text>' % (
                label_w, yy + bar_h - 10, esc(name)))
            if s["status"] != "ok" or not s["x_base"]:
                parts.append('<text x="%d" y="%d" class="na">%s</text>' % (
                    bar_x0 + 4, yy + bar_h - 10,
                    esc(("%s: " % s["status"] + (s["note"] or ""))[:160])))
                y += bar_h + gap
                continue
            checks = [c for c in (
                s["verdict_x"] and "%s >=%.2fx" % (s["verdict_x"],
                                                   s["target_x"]),
                s["verdict_lua"] and "%s >=2x lua" % s["verdict_lua"],
                s["verdict_p99"] and "%s p99 +<1ms" % s["verdict_p99"])
                if c]
            v = None
            if checks:
                v = "FAIL" if any(c.startswith("FAIL") for c in checks) \
                    else "PASS"
            color = colors.get(v, "#9e9e9e" if name.startswith("baseline")
                               else ("#ef6c00" if name.startswith("lua")
                                     else "#1565c0"))
            parts.append('<rect x="%d" y="%d" width="%.1f" height="%d" '
                         'fill="%s"/>' % (bar_x0, yy, X(s["x_base"]) - bar_x0,
                                          bar_h, color))
            if s["x_base_lo"] is not None and s["x_base_hi"] > s["x_base_lo"]:
                parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" '
                             'class="range"/>' % (
                                 X(s["x_base_lo"]), yy + bar_h // 2,
                                 X(s["x_base_hi"]), yy + bar_h // 2))
            txt = "%.2fx%s · %s req/s · p50 %.2f ms · p99 %.2f ms" % (
                s["x_base"], "†" if s["row"].ratio_base != "baseline" else "",
                "{:,.0f}".format(s["rps"]), s["p50_ms"], s["p99_ms"])
            if s["p99_added_ms"] is not None and s["row"].ratio_base != \
                    s["config"]:
                txt += " (%+.2f)" % s["p99_added_ms"]
            if s["x_lua"] and name != "lua-auth-rl":
                txt += " · %.2fx lua" % s["x_lua"]
            if s["paced_p99_added_ms"] is not None:
                txt += " · paced p99 %+.2f" % s["paced_p99_added_ms"]
            # the labels start past the bar and past its range line
            tx = X(max(s["x_base"], s["x_base_hi"] or 0)) + 5
            if checks:
                parts.append('<text x="%.1f" y="%d" class="val">%s</text>'
                             % (tx, yy + 11, esc(txt)))
                parts.append('<text x="%.1f" y="%d" class="chk">%s</text>'
                             % (tx, yy + 24,
                                esc(", ".join(checks))))
            else:
                parts.append('<text x="%.1f" y="%d" class="val">%s</text>'
                             % (tx, yy + bar_h - 9,
                                esc(txt)))
            y += bar_h + gap
        y = bottom + 22
    y += 8
    notes = [
        "Bars: median over the rounds of each run's requests/s divided by "
        "that of the baseline runs just before and after it (GET rows) or "
        "baseline-post's (†, POST rows); thin line: lowest to highest round.",
        "Dashed lines: SPEC targets (ids only >= 0.95, auth cache hit >= "
        "0.9, auth + rate limit >= 0.6 and >= 2x lua-auth-rl); solid: 1.0.",
        "Green: every target of the row met, red: one missed (see the "
        "second line; p99 +<1ms: p99 added over baseline at one pace "
        "below saturation, \"paced p99\"), "
        "blue/orange/grey: no target (apigw / Lua peer / baseline).",
    ]
    for line in notes:
        parts.append('<text x="10" y="%d" class="note">%s</text>' % (
            y, esc(line)))
        y += 15
    H = y + 10
    style = """<style>
  text { font-family: DejaVu Sans, Arial, Helvetica, sans-serif; fill: #212121; }
  .title { font-size: 17px; font-weight: bold; }
  .sub { font-size: 11px; fill: #555; }
  .h { font-size: 14px; font-weight: bold; }
  .label { font-size: 12px; text-anchor: end; }
  .val { font-size: 11px; paint-order: stroke; stroke: white;
         stroke-width: 3px; stroke-linejoin: round; }
  .chk { font-size: 10px; font-weight: bold; fill: #37474f;
         paint-order: stroke; stroke: white; stroke-width: 3px; }
  .na { font-size: 11px; fill: #757575; font-style: italic; }
  .tick { font-size: 10px; text-anchor: middle; fill: #555; }
  .tlabel { font-size: 10px; fill: #6a1b9a; text-anchor: middle; }
  .note { font-size: 11px; fill: #444; }
  .grid { stroke: #e0e0e0; stroke-width: 1; }
  .target { stroke: #6a1b9a; stroke-width: 1.2; stroke-dasharray: 5,3; }
  .base { stroke: #424242; stroke-width: 1.2; }
  .range { stroke: #212121; stroke-width: 1.5; }
</style>"""
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d">\n%s\n<rect width="100%%" height="100%%" '
           'fill="white"/>\n%s\n</svg>\n' % (W, H, W, H, style,
                                             "\n".join(parts)))
    with open(path, "w") as f:
        f.write(svg)


# -- environment: redis, key, upstream ----------------------------------------

def prepare(args):
    if os.path.isdir(TMP):
        shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP, exist_ok=True)
    ctx = {"workdir": TMP}

    # nginx maps the .so: a `make build` elsewhere rewriting build/'s copy
    # in place would crash the running workers (SIGSEGV) mid-run.  Bench a
    # private copy, and say which build it is.
    ctx["module"] = os.path.join(TMP, "ngx_http_apigw_module.so")
    shutil.copyfile(MODULE, ctx["module"])
    with open(ctx["module"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    log("== module: %s (sha256 %s…, built %s), benched from a private copy"
        % (os.path.relpath(MODULE, ROOT), digest, time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(MODULE)))))
    ctx["module_id"] = digest

    redis = Redis(TMP).start()
    ctx["redis"] = redis
    ctx["redis_port"] = redis.port
    log("== redis-server on 127.0.0.1:%d (pid %d)" % (redis.port,
                                                     redis.proc.pid))

    # a real key, made by the project's own tool; no per-key rate override
    p = subprocess.run([KEYS_TOOL, "--redis", "127.0.0.1:%d" % redis.port,
                        "--json", "create", "--tenant", "bench",
                        "--scopes", "orders:read orders:write",
                        "--key-id", "key_bench", "--prefix", "bench_"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise BenchError("apigw-keys create failed: %s" %
                         p.stderr.decode("utf-8", "replace"))
    created = json.loads(p.stdout.decode())
    ctx["api_key"] = created["key"]
    sha = hashlib.sha256(ctx["api_key"].encode()).hexdigest()
    if redis.cmd("HGET", "apigw:key:" + sha, "key_id") != "key_bench":
        raise BenchError("the key record is not where the peer looks")

    # the token-bucket script, byte for byte what the module loads
    p = subprocess.run([SCRIPT_TOOL, "token_bucket"], stdout=subprocess.PIPE,
                       check=True)
    ctx["tb_script_file"] = os.path.join(TMP, "token_bucket.lua")
    with open(ctx["tb_script_file"], "wb") as f:
        f.write(p.stdout)
    ctx["tb_sha"] = redis.cmd("SCRIPT", "LOAD", p.stdout)
    if ctx["tb_sha"] != hashlib.sha1(p.stdout).hexdigest():
        raise BenchError("SCRIPT LOAD answered another SHA-1")

    up_port = H.free_port()
    up = Nginx(TMP, "upstream", upstream_conf(up_port), up_port)
    ok, msg = up.test()
    if not ok:
        raise BenchError("upstream nginx -t: " + msg)
    up.start(1)
    ctx["upstream"] = up
    ctx["upstream_port"] = up_port
    log("== upstream nginx on 127.0.0.1:%d (pid %d)" % (up_port,
                                                       up.proc.pid))
    return ctx


def teardown(ctx):
    if not ctx:
        return
    if ctx.get("upstream"):
        ctx["upstream"].stop()
    if ctx.get("redis"):
        ctx["redis"].stop()


def stop_everything():
    for p in list(reversed(_live)):
        terminate(p, signal.SIGTERM, 5.0)


# -- main ---------------------------------------------------------------------

def bench(args):
    rows = ROWS
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {r.name for r in ROWS}
        if unknown:
            raise BenchError("unknown config(s): %s" % ", ".join(
                sorted(unknown)))
        # the ratios need their references
        want |= {"baseline"} | ({"baseline-post"} if want & {
            "apigw-idem", "apigw-idem-replay"} else set())
        rows = [r for r in ROWS if r.name in want]
    workers_list = [int(w) for w in args.workers.split(",")]
    if args.runs < 2:
        log("note: --runs %d (the SPEC's figures need at least 2)" %
            args.runs)
    ctx = None
    all_summaries = []
    try:
        ctx = prepare(args)
        if os.path.isdir(RAW):
            shutil.rmtree(RAW, ignore_errors=True)
        os.makedirs(RAW, exist_ok=True)
        for workers in workers_list:
            log("== pass: worker_processes %d" % workers)
            all_summaries.append((workers, run_pass(workers, ctx, args,
                                                    rows)))
    finally:
        teardown(ctx)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for workers, summary in all_summaries:
        print_table(workers, summary, args)
        log("")
        log("SPEC targets, worker_processes %d:" % workers)
        for line in targets_lines(summary):
            log("  " + line)
    noisy = max([s["other_cpu"] or 0 for _, summary in all_summaries
                 for s in summary] or [0])
    niced = max([s["other_cpu_niced"] or 0 for _, summary in all_summaries
                 for s in summary] or [0])
    if niced > NOISY_CORES:
        log("")
        log("note: niced processes (e.g. a fuzzer) used up to %.2f cores "
            "during the measured runs, mostly CPU the bench left idle; "
            "a quiet machine is still better" % niced)
    if noisy > NOISY_CORES:
        log("")
        log("WARNING: other processes used up to %.2f cores during the "
            "measured runs: the machine was not quiet, the figures and "
            "ratios are not reliable" % noisy)
    os.makedirs(RESULTS, exist_ok=True)
    csv_path = os.path.join(RESULTS, "results.csv")
    svg_path = os.path.join(RESULTS, "results.svg")
    write_csv(all_summaries, csv_path)
    meta = ("%s, %d cores, wrk -t%d -c%d, %d round(s) of %d s runs (%d s "
            "warm-up first), each between two reference runs, loopback" % (
                started, os.cpu_count() or 0, args.threads,
                args.connections, args.runs, args.duration, args.warmup))
    meta += ", module sha256 %s…" % ctx["module_id"]
    if noisy > NOISY_CORES:
        meta += ("; NOT QUIET: other processes used up to %.2f cores"
                 % noisy)
    svg_chart(all_summaries, args, svg_path, meta)
    log("")
    log("wrote %s, %s and %s/" % (os.path.relpath(csv_path, ROOT),
                                   os.path.relpath(svg_path, ROOT),
                                   os.path.relpath(RAW, ROOT)))
    return 0


def soak(args):
    row = next(r for r in ROWS if r.name == "apigw-auth-rl")
    ctx = None
    ngx = None
    try:
        ctx = prepare(args)
        inst = instances(ctx)["apigw-auth-rl"]
        port = H.free_port()
        ngx = Nginx(TMP, "soak", conf_for(inst, 1, port,
                                          ctx["upstream_port"]), port)
        ok, msg = ngx.test()
        if not ok:
            raise BenchError("apigw-auth-rl cannot run: %s" % msg)
        ngx.start(1)
        err, warns = check_row(row, "apigw-auth-rl", port, ctx["api_key"])
        if err:
            raise BenchError("check failed: " + err)
        worker = ngx.worker_pids()[0]
        log("== soak: %d requests through apigw-auth-rl (worker pid %d)" % (
            args.soak_requests, worker))
        run_wrk(port, row, ctx["api_key"], max(args.warmup, 2), args)
        rss0 = vm_rss_kb(worker)
        redis0 = ctx["redis"].used_memory()
        samples = [rss0]
        stop = threading.Event()

        def sample():
            while not stop.wait(1.0):
                try:
                    samples.append(vm_rss_kb(worker))
                except (OSError, BenchError):
                    return
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        soak_row = Row("soak", "apigw-auth-rl", "soak", True, "baseline")
        per_thread = -(-args.soak_requests // args.threads)
        try:
            w = run_wrk(port, soak_row, ctx["api_key"], 3600, args,
                        raw_name="soak.txt",
                        extra_env={"BENCH_SOAK_REQUESTS": str(per_thread)},
                        timeout_s=3700, stop_after_markers=args.threads)
        finally:
            stop.set()
            t.join()
        time.sleep(0.5)
        if worker not in ngx.worker_pids():
            raise BenchError("the worker (pid %d) is gone: it crashed or "
                             "was replaced" % worker)
        rss1 = vm_rss_kb(worker)
        redis1 = ctx["redis"].used_memory()
        delta = rss1 - rss0
        log("requests: %d in %.1f s (%.0f req/s), non-2xx %d, p99 %.3f ms" % (
            w.get("requests", 0), w.get("duration_us", 0) / 1e6, w["rps"],
            w.get("non2xx", 0), w.get("p99_us", 0) / 1e3))
        log("worker VmRSS after warm-up: %d kB" % rss0)
        log("worker VmRSS after %d requests: %d kB (max seen %d kB)" % (
            w.get("requests", 0), rss1, max(samples + [rss1])))
        log("delta: %+d kB  -> %s (tolerance %d kB)" % (
            delta, "PASS" if delta <= args.soak_tolerance_kb else "FAIL",
            args.soak_tolerance_kb))
        if redis0 is not None and redis1 is not None:
            log("redis used_memory: %d -> %d bytes" % (redis0, redis1))
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "soak.csv"), "w", newline="") as f:
            cw = csv.writer(f)
            cw.writerow(["config", "requests", "seconds", "rps",
                         "non2xx", "rss_before_kb", "rss_after_kb",
                         "rss_max_kb", "rss_delta_kb", "verdict",
                         "redis_used_before", "redis_used_after"])
            cw.writerow(["apigw-auth-rl", w.get("requests", 0),
                         round(w.get("duration_us", 0) / 1e6, 2),
                         round(w["rps"], 1), w.get("non2xx", 0), rss0, rss1,
                         max(samples + [rss1]), delta,
                         "PASS" if delta <= args.soak_tolerance_kb
                         else "FAIL", redis0, redis1])
        log("wrote bench/results/soak.csv")
        return 0 if delta <= args.soak_tolerance_kb else 1
    finally:
        if ngx:
            ngx.stop()
        teardown(ctx)


def main():
    ap = argparse.ArgumentParser(
        description="apigw benchmark (see bench/README.md)")
    ap.add_argument("-d", "--duration", type=int,
                    default=int(os.environ.get("BENCH_DURATION", 3)),
                    help="seconds of each measured run (default 3)")
    ap.add_argument("-w", "--warmup", type=int,
                    default=int(os.environ.get("BENCH_WARMUP", 2)),
                    help="seconds of warm-up before the first run of each "
                         "configuration (default 2)")
    ap.add_argument("-r", "--runs", type=int,
                    default=int(os.environ.get("BENCH_RUNS", 10)),
                    help="rounds: measured runs per configuration "
                         "(default 10)")
    ap.add_argument("-c", "--connections", type=int, default=32)
    ap.add_argument("--pace-ms", type=int,
                    default=int(os.environ.get("BENCH_PACE_MS", 1)),
                    help="latency runs: each connection waits this long "
                         "before each request (default 1: about a third "
                         "of baseline's rate; 0: no latency runs, p99 "
                         "judged at saturation)")
    ap.add_argument("--latency-runs", type=int, default=5,
                    help="rounds of the latency runs (default 5)")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--workers", default="1,2",
                    help="worker_processes of the passes (default 1,2)")
    ap.add_argument("--only", default="",
                    help="comma-separated configs (baseline is always run)")
    ap.add_argument("--soak", action="store_true",
                    help="the 1M-request memory run instead of the table")
    ap.add_argument("--soak-requests", type=int, default=1000000)
    ap.add_argument("--soak-tolerance-kb", type=int, default=1024,
                    help="largest RSS growth still reported PASS")
    ap.add_argument("--no-install", action="store_true",
                    help="do not install packages")
    ap.add_argument("--no-build", action="store_true",
                    help="use the module already in build/")
    args = ap.parse_args()
    if args.duration < 1 or args.runs < 1 or args.connections < 1:
        ap.error("duration, runs and connections must be positive")

    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        install_and_build(args)
        return soak(args) if args.soak else bench(args)
    except BenchError as e:
        log("bench: %s" % e)
        return 1
    except subprocess.CalledProcessError as e:
        log("bench: %s" % e)
        return 1
    except KeyboardInterrupt as e:
        log("bench: interrupted%s" % ((" (%s)" % e) if str(e) else ""))
        if os.environ.get("BENCH_DEBUG"):
            raise
        return 130
    finally:
        stop_everything()


if __name__ == "__main__":
    sys.exit(main())
