#!/usr/bin/python3
"""apigw soak: wrk load through auth + rate limit + idempotency while Redis
restarts, pauses and the upstreams flap; then checks that nothing crashed,
every error was an envelope with a designed code, no Idempotency-Key ran
twice and the workers' memory stayed flat.

    make soak                          # SOAK_SECONDS=300 (5 minutes)
    make soak SOAK_SECONDS=40          # a short run: the fault schedule
                                       # is derived from the duration
    make soak SOAK_ARGS="--rate 1500 --nice 10"
    /usr/bin/python3 tools/soak.py --help

Not part of `make test`.  Python 3 stdlib (+ python3-redis through the test
harness); reuses RedisServer / Upstream / Nginx of t/integration/harness.py.
Everything runs on 127.0.0.1 on free ports (never 80 or 6379) and is stopped
by pid at the end, on Ctrl-C / SIGTERM too; children get SIGTERM should this
script be killed (PR_SET_PDEATHSIG, as in the harness: the orchestrator
stays single-threaded for that, the side checker is a child process).

What runs (files under --workdir, default build/soak/):

  redis-server   --appendonly yes --appendfsync always, its data directory
                 on tmpfs (/dev/shm) so fsync costs nothing and the disk of
                 this shared machine is not hammered; a restart (SIGTERM or
                 SIGKILL, alternately) keeps every acknowledged write: API
                 keys and completed idempotency records survive, so "never
                 executed twice" is a meaningful check across restarts.
  fast upstream  a plain nginx (no module, 1 worker) answering GET /api/...
                 with return 200: the GET path (the bulk of the load) must
                 not be limited by a Python server.
  counting       tools/demo_upstream.py's handler (its /count/<name>
  upstream       endpoint) behind POST /pay/<key>: counts executions per
                 Idempotency-Key.  Run through this script
                 (--_counting-upstream) only to keep its counters across a
                 flap: on SIGTERM it saves them under the counters' lock and
                 exits at once (in-flight requests are cut, as in a crash),
                 and loads them when started again.  It sees only first
                 executions (replays never reach it): tens per second.
  nginx          the module, 2 workers: apigw_auth + apigw_auth_cache, one
                 rate-limit policy (high rate) with a low-rate tenant (per-
                 key rate override: 429s), apigw_idempotency (required) on
                 POST /pay/ with proxy_ignore_client_abort on.
  wrk            tools/soak.lua: the request mix (see there), status and
                 envelope-code counters per request kind, a sample of
                 non-2xx bodies written to files and validated here.
  side checker   this script (--_side-checker): a few threads sending the
                 same kinds of requests, validating EVERY response they get.

Faults (one timeline, derived from --seconds unless given): Redis restarted
every --restart-every s, SIGSTOPped for --pause-seconds every --pause-every
s, both upstreams stopped for --flap-seconds every --flap-every s; none in
the first --warmup and the last --cooldown seconds.

Idempotency lock ttl: apigw_idempotency_lock_ttl is set above the whole run
(--seconds + 120 s).  A flap cuts POSTs the upstream already counted: nginx
answers 502 and, by design, keeps the key locked until the lock expires (the
backend may have run); after that a retry would run again.  With the lock
outliving the run, any key executed twice is a bug, not that documented
trade-off.  Complete/release failures that would have made a key runnable
again later are counted from the error log ("giving up") and reported.

Checks (exit status 1 if any fails; the summary goes to --out, default
bench/results/soak.txt): no "exited on signal" / [alert] / [crit] / [emerg]
in nginx's error log, the same worker pids at the end; every validated
non-2xx (side checker: all of its; wrk: a sample, plus a cheap check of all
in Lua) is a valid error_object envelope with a designed code matching its
status, X-Request-Id equal to the body's request_id (and to the id sent);
every code allowed for the kind of request; every non-2xx nginx logged has a
designed code; every Idempotency-Key executed at most once (upstream
counters, and the "n" the upstream returned); requests without a valid key
never reach the upstream; good-key GETs succeed again after the last fault;
no wrk socket errors; each worker's VmRSS at the end within --rss-tolerance
percent of its value after the warm-up.
"""

import argparse
import hashlib
import heapq
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
SELF = os.path.abspath(__file__)
WRK_LUA = os.path.join(TOOLS, "soak.lua")
KEYS_TOOL = os.path.join(ROOT, "build", "apigw-keys")
BUILT_MODULE = os.path.join(ROOT, "build", "ngx_http_apigw_module.so")

sys.path.insert(0, os.path.join(ROOT, "t", "integration"))
sys.path.insert(0, TOOLS)

# ---- the designed codes (README "Codes"): code -> (status, type) ----------

_IRE = "invalid_request_error"
CODES = {
    "missing_credentials": (401, "authentication_error"),
    "invalid_credentials": (401, "authentication_error"),
    "account_disabled": (401, "authentication_error"),
    "scope_required": (403, "permission_error"),
    "auth_unavailable": (503, "api_error"),
    "rate_limited": (429, "rate_limit_error"),
    "rate_limiter_unavailable": (503, "api_error"),
    "idempotency_key_required": (400, _IRE),
    "idempotency_key_invalid": (400, _IRE),
    "idempotency_key_mismatch": (422, _IRE),
    "idempotency_key_in_progress": (409, _IRE),
    "idempotency_unavailable": (503, "api_error"),
    "idempotency_replay_unavailable": (409, _IRE),
    "invalid_request": (400, _IRE),
    "unauthorized": (401, "authentication_error"),
    "forbidden": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "method_not_allowed": (405, _IRE),
    "not_acceptable": (406, _IRE),
    "request_timeout": (408, _IRE),
    "conflict": (409, _IRE),
    "gone": (410, _IRE),
    "length_required": (411, _IRE),
    "precondition_failed": (412, _IRE),
    "payload_too_large": (413, _IRE),
    "uri_too_long": (414, _IRE),
    "unsupported_media_type": (415, _IRE),
    "range_not_satisfiable": (416, _IRE),
    "unprocessable_entity": (422, _IRE),
    "too_many_requests": (429, "rate_limit_error"),
    "internal_error": (500, "api_error"),
    "not_implemented": (501, "api_error"),
    "upstream_unavailable": (502, "api_error"),
    "service_unavailable": (503, "api_error"),
    "upstream_timeout": (504, "api_error"),
    "client_error": (None, _IRE),      # any other 4xx
    "server_error": (None, "api_error"),  # any other 5xx
}

# codes that carry Retry-After
RETRY_AFTER_CODES = {"rate_limited", "auth_unavailable",
                     "rate_limiter_unavailable", "idempotency_unavailable",
                     "idempotency_key_in_progress"}

# request kind (tools/soak.lua, the side checker) -> the codes it may get.
# Outages explain auth_unavailable (Redis down, key not cached), the
# idempotency codes and upstream_*; anything else is a failed check.
_UP = {"upstream_unavailable", "upstream_timeout"}
_POST = {"auth_unavailable", "idempotency_key_in_progress",
         "idempotency_key_mismatch", "idempotency_unavailable"} | _UP
ALLOWED = {
    "ok": {"auth_unavailable"} | _UP,
    "low": {"auth_unavailable", "rate_limited"} | _UP,
    "nokey": {"missing_credentials"},
    "badkey": {"invalid_credentials", "auth_unavailable"},
    "malformed": {"invalid_credentials"},
    "revoked": {"invalid_credentials", "auth_unavailable"},
    "disabled": {"account_disabled", "auth_unavailable"},
    "noscope": {"scope_required", "auth_unavailable"},
    "notfound": {"not_found"},
    "post": _POST,
    "mismatch": _POST,
    "noidem": {"idempotency_key_required", "auth_unavailable"},
    "badidem": {"idempotency_key_invalid", "auth_unavailable"},
}
SUCCESS_KINDS = {"ok", "low", "post", "mismatch"}

ENVELOPE_ERROR_MEMBERS = {"type", "code", "message", "param", "doc_url",
                          "details", "errors", "correlation_id"}

BODY_OK = b'{"amount":1000,"currency":"usd","soak":true}'
BODY_OTHER = b'{"amount":9999,"currency":"usd","soak":"mismatch"}'


def check_envelope(status, ctype, body, rid_header, sent_rid=None,
                   retry_after=None):
    """-> (code or None, [problems]) for one non-2xx response (the
    error_object format, README "Envelope formats")."""
    problems = []
    if not (ctype or "").lower().startswith("application/json"):
        problems.append("Content-Type %r" % ctype)
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, problems + ["not JSON (%s): %r" % (e, body[:200])]
    if not isinstance(doc, dict) or set(doc) != {"error", "request_id"}:
        return None, problems + ["not an error_object envelope: %r"
                                 % body[:300]]
    err = doc["error"]
    if not isinstance(err, dict):
        return None, problems + ["error is not an object"]
    extra = set(err) - ENVELOPE_ERROR_MEMBERS
    if extra:
        problems.append("unknown error members %s" % sorted(extra))
    code = err.get("code")
    for m in ("type", "code", "message"):
        if not isinstance(err.get(m), str) or not err.get(m):
            problems.append("error.%s missing or not a string" % m)
    if code not in CODES:
        problems.append("code %r is not a designed code" % (code,))
    else:
        want_status, want_type = CODES[code]
        if want_status is not None and want_status != status:
            problems.append("code %s with status %d (designed: %d)"
                            % (code, status, want_status))
        if code == "client_error" and not 400 <= status < 500 or \
                code == "server_error" and not 500 <= status < 600:
            problems.append("code %s with status %d" % (code, status))
        if err.get("type") != want_type:
            problems.append("code %s with type %r (designed: %s)"
                            % (code, err.get("type"), want_type))
    for m, t in (("details", dict), ("param", str), ("doc_url", str),
                 ("errors", list)):
        if m in err and not isinstance(err[m], t):
            problems.append("error.%s is not a %s" % (m, t.__name__))
    rid = doc.get("request_id")
    if not isinstance(rid, str) or not rid:
        problems.append("request_id missing")
    elif rid != rid_header:
        problems.append("X-Request-Id %r != body request_id %r"
                        % (rid_header, rid))
    if sent_rid is not None and rid_header != sent_rid:
        problems.append("X-Request-Id %r is not the id sent (%r)"
                        % (rid_header, sent_rid))
    if status >= 500 and err.get("correlation_id") != rid:
        problems.append("5xx without correlation_id = request_id")
    if code in RETRY_AFTER_CODES and retry_after is not None:
        if not retry_after or not retry_after.isdigit() or \
                int(retry_after) < 1:
            problems.append("%s with Retry-After %r" % (code, retry_after))
    if code == "rate_limited":
        d = err.get("details") or {}
        if not isinstance(d.get("retry_after"), int) or d["retry_after"] < 1:
            problems.append("rate_limited without details.retry_after >= 1")
    return code, problems


# =========================================================================
# child mode 1: the counting upstream (demo_upstream's handler, counters
# kept across restarts)
# =========================================================================

def counting_upstream_main(a):
    import demo_upstream as du
    try:
        with open(a.counts_file) as f:
            du._counts.update(json.load(f))
    except FileNotFoundError:
        pass

    def on_term(signum, frame):
        # under the counters' lock, and never released: no handler thread
        # can count a request after the snapshot
        du._lock.acquire()
        tmp = a.counts_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(du._counts, f)
        os.rename(tmp, a.counts_file)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    srv = du.Server((a.host, a.port), du.Handler)
    print("counting upstream on %s:%d, %d counters loaded" % (
        a.host, a.port, len(du._counts)), flush=True)
    srv.serve_forever(poll_interval=0.2)
    return 0


# =========================================================================
# child mode 2: the side checker
# =========================================================================

SIDE_MIX = {"ok": 25, "low": 8, "nokey": 5, "badkey": 5, "malformed": 3,
            "revoked": 3, "disabled": 3, "noscope": 3, "notfound": 3,
            "post": 30, "mismatch": 3, "noidem": 3, "badidem": 3}


class SideChecker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.counts = {}          # "kind status" -> n
        self.codes = {}           # "kind code" -> n
        self.failures = []        # (t, kind, status, problem, excerpt)
        self.nfail = 0
        self.transport = {}       # "kind error" -> n
        self.timeline = []        # [t, kind, status]  (status 0: transport)
        self.fresh = {}           # idem key -> first non-replayed body
        self.replay_bodies = {}   # (key, variant) -> body
        self.replays = 0
        self.fresh_n = 0
        self.keys_2xx = set()
        self.validated = 0
        kinds = sorted(SIDE_MIX)
        self.kinds = kinds
        self.weights = [SIDE_MIX[k] for k in kinds]

    def fail(self, t, kind, status, problem, body=b""):
        with self.lock:
            self.nfail += 1
            if len(self.failures) < 200:
                self.failures.append([round(t, 3), kind, status, problem,
                                      body[:300].decode("utf-8", "replace")])

    def pool_key(self, rnd, now):
        c = self.cfg
        w = int((now - c["t0"]) // c["window"])
        if rnd.random() < 0.5:
            i = rnd.randrange(c["side_hot"])
        else:
            i = rnd.randrange(c["side_pool"])
        return "pc-%s-%d-%d" % (c["run"], w, i)

    def build(self, kind, rnd):
        c = self.cfg
        h = {}
        method, path, body = "GET", "/api/ok", None
        keys = c["keys"]
        if kind == "ok":
            h["Authorization"] = "Bearer " + keys["ok"]
        elif kind == "low":
            h["Authorization"] = "Bearer " + keys["low"]
        elif kind == "badkey":
            h["Authorization"] = "Bearer soak_unknown_key_%04d" % \
                rnd.randrange(50)
        elif kind == "malformed":
            h["Authorization"] = "Bearer short"
        elif kind == "revoked":
            h["Authorization"] = "Bearer " + keys["revoked"]
        elif kind == "disabled":
            h["Authorization"] = "Bearer " + keys["disabled"]
        elif kind == "noscope":
            h["Authorization"] = "Bearer " + keys["ok"]
            path = "/admin/ok"
        elif kind == "notfound":
            path = "/nope/side"
        elif kind in ("post", "mismatch", "noidem", "badidem"):
            method = "POST"
            h["Authorization"] = "Bearer " + keys["ok"]
            h["Content-Type"] = "application/json"
            body = BODY_OK
            k = self.pool_key(rnd, time.time())
            path = "/pay/%s?sleep=%d" % (k, c["sleep_ms"])
            if kind == "post":
                h["Idempotency-Key"] = k
            elif kind == "mismatch":
                h["Idempotency-Key"] = k
                body = BODY_OTHER
            elif kind == "noidem":
                path = "/pay/noidem-%s?sleep=0" % c["run"]
            else:
                h["Idempotency-Key"] = "has spaces side"
                path = "/pay/badidem-%s?sleep=0" % c["run"]
            return method, path, h, body, k
        return method, path, h, body, None

    def judge(self, t, kind, status, hdrs, body, sent_rid, idem_key,
              variant):
        rid = hdrs.get("x-request-id")
        ck = "%s %d" % (kind, status)
        with self.lock:
            self.counts[ck] = self.counts.get(ck, 0) + 1
            self.timeline.append([round(t, 3), kind, status])
        if 200 <= status < 300:
            if rid != sent_rid:
                self.fail(t, kind, status, "2xx X-Request-Id %r, sent %r"
                          % (rid, sent_rid))
            if kind not in SUCCESS_KINDS:
                self.fail(t, kind, status, "2xx for a request that must "
                          "be refused", body)
            if idem_key is not None and kind in ("post", "mismatch"):
                self.judge_idem(t, kind, status, hdrs, body, idem_key,
                                variant)
            return
        with self.lock:
            self.validated += 1
        code, problems = check_envelope(
            status, hdrs.get("content-type"), body, rid, sent_rid,
            hdrs.get("retry-after"))
        cc = "%s %s" % (kind, code or "-")
        with self.lock:
            self.codes[cc] = self.codes.get(cc, 0) + 1
        if code is not None and code not in ALLOWED.get(kind, ()):
            problems.append("code %s is not expected for a %s request"
                            % (code, kind))
        for p in problems:
            self.fail(t, kind, status, p, body)

    def judge_idem(self, t, kind, status, hdrs, body, key, variant):
        replayed = hdrs.get("idempotent-replayed") == "true"
        try:
            n = json.loads(body.decode()).get("n")
        except (UnicodeDecodeError, ValueError, AttributeError):
            n = None
        if n != 1:
            self.fail(t, kind, status, "upstream counter n=%r for key %s "
                      "(executed more than once?)" % (n, key), body)
        with self.lock:
            self.keys_2xx.add(key)
            if replayed:
                self.replays += 1
                prev = self.replay_bodies.setdefault((key, variant), body)
            else:
                self.fresh_n += 1
                dup = key in self.fresh
                self.fresh.setdefault(key, body)
                self.replay_bodies.setdefault((key, variant), body)
        if replayed:
            if prev != body:
                self.fail(t, kind, status, "replay of %s differs from an "
                          "earlier answer" % key, body)
        elif dup:
            self.fail(t, kind, status, "key %s answered un-replayed twice "
                      "(executed twice)" % key, body)

    def worker(self, no, deadline):
        c = self.cfg
        rnd = random.Random(c["t0"] * 1000 + no)
        conn = None
        seq = 0
        while time.time() < deadline:
            kind = rnd.choices(self.kinds, self.weights)[0]
            method, path, h, body, idem_key = self.build(kind, rnd)
            seq += 1
            sent_rid = "sc%s-%d-%d" % (kind, no, seq)
            h["X-Request-Id"] = sent_rid
            t = time.time() - c["t0"]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", c["port"], timeout=c["timeout"])
                conn.request(method, path, body=body, headers=h)
                r = conn.getresponse()
                data = r.read()
                hdrs = {}
                for k, v in r.getheaders():
                    hdrs.setdefault(k.lower(), v)
                if hdrs.get("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                name = type(e).__name__
                with self.lock:
                    k = "%s %s" % (kind, name)
                    self.transport[k] = self.transport.get(k, 0) + 1
                    self.timeline.append([round(t, 3), kind, 0])
                    if len(self.failures) < 200:
                        self.failures.append([round(t, 3), kind, 0,
                                              "transport: %r" % e, ""])
                time.sleep(0.05)
                continue
            variant = "other" if kind == "mismatch" else "ok"
            self.judge(t, kind, r.status, hdrs, data, sent_rid, idem_key,
                       variant)
            time.sleep(c["interval"] * (0.5 + rnd.random()))
        if conn is not None:
            conn.close()

    def run(self):
        c = self.cfg
        deadline = c["t0"] + c["seconds"]
        ts = [threading.Thread(target=self.worker, args=(i, deadline),
                               daemon=True) for i in range(c["threads"])]
        for t in ts:
            t.start()
        for t in ts:
            t.join(c["seconds"] + 60)
        out = {
            "counts": self.counts, "codes": self.codes,
            "failures": self.failures, "nfail": self.nfail,
            "transport": self.transport, "timeline": self.timeline,
            "validated_non2xx": self.validated, "replays": self.replays,
            "fresh": self.fresh_n, "keys_2xx": sorted(self.keys_2xx),
        }
        tmp = c["out"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.rename(tmp, c["out"])


def side_checker_main(a):
    with open(a.config) as f:
        cfg = json.load(f)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(3))
    SideChecker(cfg).run()
    return 0


# =========================================================================
# the orchestrator
# =========================================================================

def log(msg):
    print(msg, flush=True)


class SoakError(Exception):
    pass


def import_harness():
    import harness as H
    return H


def make_classes(H):
    class PersistentRedis(H.RedisServer):
        """RedisServer with an append-only file fsynced on every write,
        its data dir given apart from its log dir"""

        def __init__(self, datadir, logdir, port=None):
            super().__init__(datadir, port=port)
            self.log = os.path.join(logdir, "redis.log")

        def start(self):
            if self.running:
                return self
            argv = [H.REDIS_BIN, "--port", str(self.port), "--bind",
                    self.host, "--save", "", "--appendonly", "yes",
                    "--appendfsync", "always", "--dir", self.dir,
                    "--daemonize", "no", "--logfile", self.log,
                    "--protected-mode", "no"]
            self.proc = H.popen(argv, self.log + ".stdout")

            def up():
                if self.proc.poll() is not None:
                    raise H.HarnessError("redis-server exited rc=%s\n%s" % (
                        self.proc.returncode, H.tail(self.log)))
                return self.ping()
            try:
                H.wait_for(up, 30.0, what="redis-server on %d" % self.port)
            except H.HarnessError:
                self.kill()
                raise
            return self

        def kill_restart(self):
            self.kill()
            H.wait_for(lambda: not H.port_open(self.port), 5.0,
                       what="redis port %d to close" % self.port)
            return self.start()

    class CountingUpstream(H.Upstream):
        """tools/demo_upstream.py's handler, its counters kept in a file
        across stop/start (see counting_upstream_main)"""

        def __init__(self, tmpdir, counts_file, port=None):
            super().__init__(tmpdir, port=port)
            self.counts_file = counts_file

        def start(self):
            if self.running:
                return self
            self.proc = H.popen(
                [H.PYTHON, SELF, "--_counting-upstream", "--host", self.host,
                 "--port", str(self.port), "--counts-file",
                 self.counts_file], self.log)

            def up():
                if self.proc.poll() is not None:
                    raise H.HarnessError("counting upstream exited rc=%s\n%s"
                                         % (self.proc.returncode,
                                            H.tail(self.log)))
                return self._get("GET", "/ok", 0.5)[0] == 200
            try:
                H.wait_for(up, H.START_TIMEOUT, what="upstream on %d"
                           % self.port)
            except H.HarnessError:
                self.kill()
                raise
            return self

    return PersistentRedis, CountingUpstream


NGINX_CONF = r"""
    apigw_redis {redis_addr} timeout=50ms connect_timeout=100ms;
    apigw_auth_cache zone=soak_keys:4m ttl=30s negative_ttl=5s;
    apigw on;
    apigw_error_format error_object;

    # one policy, high enough that the main tenant never meets it; the
    # soak-low tenant's key overrides it (rate/burst in its record): 429s
    apigw_rate_limit_zone soak rate=100000r/s burst=100000;
    apigw_rate_limit_headers legacy;

    # above the whole run: see "Idempotency lock ttl" in tools/soak.py
    apigw_idempotency_lock_ttl {lock_ttl}s;

    map $status $soak_non2xx {
        ~^2     0;
        default 1;
    }
    log_format soak '$msec $status "$request_method $uri" '
                    'rid=$apigw_request_id err=$apigw_error_code '
                    'idem=$apigw_idempotency_status up=$upstream_status';

    upstream soak_fast {
        server 127.0.0.1:{fast_port};
        keepalive 64;
    }
    upstream soak_counting {
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }

    server {
        listen 127.0.0.1:{port};
        access_log {tmp}/non2xx.log soak if=$soak_non2xx;
        keepalive_requests 1000000;
        client_max_body_size 64k;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 1s;
        proxy_read_timeout 10s;

        location /api/ {
            apigw_auth on;
            apigw_rate_limit soak;
            proxy_pass http://soak_fast/;
        }
        location /admin/ {
            apigw_auth on;
            apigw_require_scope admin;
            apigw_rate_limit soak;
            proxy_pass http://soak_fast/;
        }
        location /pay/ {
            apigw_auth on;
            apigw_rate_limit soak;
            apigw_idempotency on;
            apigw_idempotency_required on;
            proxy_ignore_client_abort on;
            proxy_pass http://soak_counting/count/;
        }
        location = /metrics {
            apigw off;
            allow 127.0.0.1;
            deny all;
            apigw_metrics;
        }
        location / {
            return 404;
        }
    }
"""

FAST_CONF = r"""
    server {
        listen 127.0.0.1:{port};
        access_log off;
        keepalive_requests 1000000;
        default_type application/json;
        location / {
            return 200 '{"ok":true}';
        }
    }
"""


class Schedule:
    """the fault timeline, derived from the duration"""

    def __init__(self, a):
        d = float(a.seconds)
        s = d / 300.0
        self.seconds = d
        self.warmup = a.warmup if a.warmup is not None else \
            max(5.0, min(30.0, 30.0 * s))
        self.cooldown = a.cooldown if a.cooldown is not None else \
            max(5.0, min(20.0, 20.0 * s))
        self.restart_every = a.restart_every or max(4.0, 30.0 * s)
        self.pause_every = a.pause_every or max(8.0, 60.0 * s)
        self.pause_seconds = a.pause_seconds
        self.flap_every = a.flap_every or max(6.0, 40.0 * s)
        # a flap long enough for POSTs to pile up on a dead upstream
        self.flap_seconds = a.flap_seconds or max(1.5, min(3.0, 9.0 * s))
        self.fault_end = d - self.cooldown
        if self.fault_end <= self.warmup + 1:
            raise SoakError("--seconds %s leaves no time for faults after "
                            "a %.0f s warm-up and a %.0f s cool-down"
                            % (a.seconds, self.warmup, self.cooldown))

    def events(self):
        ev = []

        def series(first, every, kind, length):
            t = first
            while t + length < self.fault_end:
                ev.append((t, kind))
                t += every
        series(self.warmup + 0.5, self.restart_every, "redis_restart", 1.0)
        # pauses half-way between restarts; flaps on their own beat, so
        # they sometimes overlap a Redis fault and sometimes do not
        series(self.warmup + self.restart_every / 2.0, self.pause_every,
               "redis_pause", self.pause_seconds)
        series(self.warmup + max(1.0, 8.0 * self.seconds / 300.0),
               self.flap_every, "upstream_flap", self.flap_seconds)
        return sorted(ev)

    def describe(self):
        ev = self.events()
        n = {k: sum(1 for _, x in ev if x == k)
             for k in ("redis_restart", "redis_pause", "upstream_flap")}
        return ("warm-up %.0f s, faults until t=%.0f s, cool-down %.0f s; "
                "redis restart every %.1f s (%d), SIGSTOP %.1f s every "
                "%.1f s (%d), upstream flap %.1f s every %.1f s (%d)" % (
                    self.warmup, self.fault_end, self.cooldown,
                    self.restart_every, n["redis_restart"],
                    self.pause_seconds, self.pause_every, n["redis_pause"],
                    self.flap_seconds, self.flap_every, n["upstream_flap"]))


def vm_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        return None
    return out


def http_get(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def http_req(port, method, path, headers, body=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def create_key(redis, tenant, key_id, *extra):
    p = subprocess.run([KEYS_TOOL, "--redis", redis.addr, "--json", "create",
                        "--tenant", tenant, "--key-id", key_id,
                        "--prefix", "soak_"] + list(extra),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    if p.returncode != 0:
        raise SoakError("apigw-keys create %s failed: %s" % (
            key_id, p.stderr.decode("utf-8", "replace")))
    return json.loads(p.stdout.decode())["key"]


def keys_cmd(redis, *args):
    p = subprocess.run([KEYS_TOOL, "--redis", redis.addr] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    if p.returncode != 0:
        raise SoakError("apigw-keys %s failed: %s" % (
            " ".join(args), p.stderr.decode("utf-8", "replace")))


def parse_samples(path):
    """wrk-<n>.samples -> [(status, kind, why, rid, ctype, body)]"""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        head = data[pos:nl].decode("latin-1").split()
        if len(head) != 7 or head[0] != "SAMPLE":
            raise SoakError("%s: bad sample header at %d: %r"
                            % (path, pos, data[pos:nl][:80]))
        status, kind, why = int(head[1]), head[2], head[3]
        lr, lc, lb = int(head[4]), int(head[5]), int(head[6])
        p = nl + 1
        rid = data[p:p + lr].decode("latin-1")
        p += lr
        ctype = data[p:p + lc].decode("latin-1")
        p += lc
        body = data[p:p + lb]
        p += lb
        if len(body) != lb:  # a truncated last record (wrk stopped)
            break
        out.append((status, kind, why, rid, ctype, body))
        pos = p + 1
    return out


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "_bucket{" in name:
            continue
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def normalize_log_line(line):
    m = re.match(r"\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)", line)
    if not m:
        return "?", line[:160]
    level, msg = m.group(1), m.group(2)
    msg = re.sub(r", client: .*", "", msg)
    msg = re.sub(r'"(?:wk|pc)-[^"]*"', '"<key>"', msg)
    msg = re.sub(r'"[^"]*idem:[^"]*"', '"<key>"', msg)
    msg = re.sub(r"\d+", "N", msg)
    return level, msg[:200]


class Soak:
    def __init__(self, a):
        self.a = a
        self.H = import_harness()
        self.sched = Schedule(a)
        self.procs = {}
        self.faults = []          # dicts: t, kind, seconds, note
        self.rss = []             # (t, {pid: status})
        self.notes = []
        self.cleanup_done = False
        try:
            with open("/proc/loadavg") as f:
                self.loadavg = " ".join(f.read().split()[:3])
        except OSError:
            self.loadavg = "?"

    # -- setup ---------------------------------------------------------

    def setup(self):
        a, H = self.a, self.H
        for tool in ("wrk", "redis-server"):
            if shutil.which(tool) is None:
                raise SoakError("%s is not installed (apt-get install %s)"
                                % (tool, tool))
        for f in (BUILT_MODULE, KEYS_TOOL):
            if not os.path.exists(f):
                raise SoakError("%s is missing: run make build" % f)
        self.work = os.path.abspath(a.workdir)
        if os.path.isdir(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.work)
        self.samples_dir = os.path.join(self.work, "samples")
        os.makedirs(self.samples_dir)

        # nginx maps the .so: run a private copy, so that a `make build`
        # elsewhere can never change the module under a running soak
        self.module = os.path.join(self.work, "ngx_http_apigw_module.so")
        shutil.copyfile(BUILT_MODULE, self.module)
        H.MODULE = self.module
        with open(self.module, "rb") as f:
            self.module_sha = hashlib.sha256(f.read()).hexdigest()[:12]
        log("== module %s (sha256 %s…, built %s), run from a private copy"
            % (os.path.relpath(BUILT_MODULE, ROOT), self.module_sha,
               time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(
                   os.path.getmtime(BUILT_MODULE)))))

        PersistentRedis, CountingUpstream = make_classes(H)
        base = a.redis_dir or ("/dev/shm" if os.path.isdir("/dev/shm")
                               else self.work)
        # data dirs of earlier soaks that were SIGKILLed (their pid gone)
        for name in os.listdir(base):
            m = re.match(r"apigw-soak-(\d+)$", name)
            if m and not os.path.exists("/proc/" + m.group(1)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        self.redis_dir = os.path.join(base, "apigw-soak-%d" % os.getpid())
        if os.path.isdir(self.redis_dir):
            shutil.rmtree(self.redis_dir)
        os.makedirs(self.redis_dir)
        self.redis = PersistentRedis(self.redis_dir, self.work).start()
        log("== redis-server 127.0.0.1:%d pid %d, AOF (fsync always) in %s"
            % (self.redis.port, self.redis.pid, self.redis_dir))

        self.keys = {
            "ok": create_key(self.redis, "soak", "key_soak_ok",
                             "--scopes", "orders:read orders:write"),
            "low": create_key(self.redis, "soak-low", "key_soak_low",
                              "--scopes", "orders:read", "--rate",
                              "%dr/s" % a.low_rate, "--burst",
                              str(a.low_rate)),
            "revoked": create_key(self.redis, "soak", "key_soak_revoked"),
            "disabled": create_key(self.redis, "soak-off",
                                   "key_soak_disabled"),
        }
        keys_cmd(self.redis, "revoke", "key_soak_revoked")
        keys_cmd(self.redis, "disable-account", "soak-off")

        self.fast = H.Nginx(os.path.join(self.work, "fast"), FAST_CONF,
                            module=False, worker_processes=1,
                            log_level="warn").start()
        log("== fast upstream nginx 127.0.0.1:%d pid %d" % (
            self.fast.port, self.fast.pid))
        self.counts_file = os.path.join(self.work, "upstream-counts.json")
        self.counting = CountingUpstream(os.path.join(self.work, "counting"),
                                         self.counts_file).start()
        log("== counting upstream 127.0.0.1:%d pid %d" % (
            self.counting.port, self.counting.pid))

        self.lock_ttl = a.lock_ttl or int(a.seconds) + 120
        self.nginx = H.Nginx(
            os.path.join(self.work, "nginx"), NGINX_CONF,
            worker_processes=2, log_level="notice", redis=self.redis,
            upstream=self.counting.port,
            vars={"fast_port": self.fast.port, "lock_ttl": self.lock_ttl})
        rc, out = self.nginx.test_config()
        if rc != 0:
            raise SoakError("nginx -t failed:\n" + out)
        self.nginx.start()
        self.workers0 = self.nginx.worker_pids()
        log("== nginx 127.0.0.1:%d master %d workers %s" % (
            self.nginx.port, self.nginx.pid, self.workers0))
        self.preflight()

    def preflight(self):
        port = self.nginx.port
        st, h, b = http_req(port, "GET", "/api/ok", {
            "Authorization": "Bearer " + self.keys["ok"]})
        if st != 200 or b != b'{"ok":true}' or "x-request-id" not in h:
            raise SoakError("preflight GET: %d %r %r" % (st, h, b[:200]))
        k = "preflight-%d" % os.getpid()
        hd = {"Authorization": "Bearer " + self.keys["ok"],
              "Idempotency-Key": k, "Content-Type": "application/json"}
        st, h, b = http_req(port, "POST", "/pay/" + k, hd, BODY_OK)
        st2, h2, b2 = http_req(port, "POST", "/pay/" + k, hd, BODY_OK)
        if st != 201 or st2 != 201 or b != b2 or \
                h2.get("idempotent-replayed") != "true":
            raise SoakError("preflight POST/replay: %d %r / %d %r %r" % (
                st, b[:200], st2, h2, b2[:200]))
        st, h, b = http_req(port, "GET", "/api/ok", {})
        code, problems = check_envelope(st, h.get("content-type"), b,
                                        h.get("x-request-id"))
        if st != 401 or code != "missing_credentials" or problems:
            raise SoakError("preflight 401: %d %s %s" % (st, code, problems))
        log("== preflight: GET 200, POST 201 + replay, 401 envelope: ok")

    # -- the run -------------------------------------------------------

    def start_load(self):
        a, H = self.a, self.H
        self.t0 = time.time()
        self.run_id = "%x" % int(self.t0)
        delay = 0
        if a.rate:
            delay = max(1, int(1000.0 * a.connections / a.rate))
        env = dict(os.environ)
        env.update({
            "SOAK_KEY_OK": self.keys["ok"], "SOAK_KEY_LOW": self.keys["low"],
            "SOAK_KEY_REVOKED": self.keys["revoked"],
            "SOAK_KEY_DISABLED": self.keys["disabled"],
            "SOAK_RUN": self.run_id, "SOAK_T0": str(int(self.t0)),
            "SOAK_WINDOW": str(a.window), "SOAK_POOL": str(a.pool),
            "SOAK_HOT": str(a.hot), "SOAK_HOT_SHARE": str(a.hot_share),
            "SOAK_SLEEP_MS": str(a.sleep_ms), "SOAK_DELAY_MS": str(delay),
            "SOAK_SAMPLE_DIR": self.samples_dir,
        })
        self.wrk_out = os.path.join(self.work, "wrk.out")
        argv = ["wrk", "-t%d" % a.threads, "-c%d" % a.connections,
                "-d%ds" % int(a.seconds), "--timeout", "10s", "-s", WRK_LUA,
                "http://127.0.0.1:%d" % self.nginx.port]
        with open(self.wrk_out, "w") as f:
            f.write("# %s\n" % " ".join(argv))
        self.procs["wrk"] = H.popen(argv, self.wrk_out, env=env)
        self.wrk_delay = delay

        self.side_out = os.path.join(self.work, "side.json")
        cfg = {"port": self.nginx.port, "keys": self.keys, "t0": self.t0,
               "run": self.run_id, "seconds": a.seconds - 0.5,
               "threads": a.side_threads, "interval": a.side_interval,
               "window": a.window, "side_pool": 30, "side_hot": 3,
               "sleep_ms": a.sleep_ms, "timeout": 10.0, "out": self.side_out}
        cfg_path = os.path.join(self.work, "side-config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        self.procs["side"] = H.popen(
            [H.PYTHON, SELF, "--_side-checker", "--config", cfg_path],
            os.path.join(self.work, "side.log"))
        log("== load: wrk -t%d -c%d for %d s%s, side checker %d threads"
            % (a.threads, a.connections, a.seconds,
               " (delay %d ms/connection, ~%d req/s cap)" % (delay, a.rate)
               if delay else " (unthrottled)", a.side_threads))

    def sample_rss(self, t):
        snap = {}
        for pid in self.workers0:
            s = vm_status(pid)
            if s is not None:
                snap[pid] = s
        self.rss.append((round(t, 1), snap))
        return snap

    def fault(self, t, kind, seconds=0.0, note=""):
        self.faults.append({"t": round(t, 2), "kind": kind,
                            "seconds": round(seconds, 2), "note": note})

    def run(self):
        a, H, sc = self.a, self.H, self.sched
        self.start_load()
        q = []
        seq = 0
        for t, kind in sc.events():
            heapq.heappush(q, (t, seq, kind))
            seq += 1
        paused_until = 0.0
        flapped = False
        next_rss = 0.0
        next_progress = 10.0
        self.rss_warm = None
        self.rss_end = None
        self.last_fault_end = 0.0
        wrk = self.procs["wrk"]
        deadline = a.seconds + 30
        while True:
            now = time.time() - self.t0
            if wrk.poll() is not None:
                break
            if now > deadline:
                self.notes.append("wrk did not end after %d s: killed"
                                  % deadline)
                H.terminate(wrk, signal.SIGINT, 5.0)
                break
            if now >= next_rss:
                snap = self.sample_rss(now)
                if self.rss_warm is None and now >= sc.warmup:
                    self.rss_warm = (round(now, 1), snap)
                if now <= a.seconds - 2:
                    self.rss_end = (round(now, 1), snap)
                next_rss += 1.0
            if now >= next_progress:
                snap = self.rss[-1][1] if self.rss else {}
                log("   t=%3.0fs  worker VmRSS %s kB  faults so far %d" % (
                    now, "/".join(str(s.get("VmRSS")) for s in snap.values()),
                    len(self.faults)))
                next_progress += 10.0
            if q and q[0][0] <= now:
                t, _, kind = heapq.heappop(q)
                if kind == "redis_restart" and now < paused_until + 0.5:
                    heapq.heappush(q, (paused_until + 0.5, seq, kind))
                    seq += 1
                    continue
                if kind == "redis_pause" and now < paused_until or \
                        kind == "upstream_flap" and flapped:
                    continue
                self.do_event(kind, now)
                if kind == "redis_pause":
                    paused_until = now + sc.pause_seconds
                    heapq.heappush(q, (paused_until, seq, "redis_resume"))
                    seq += 1
                elif kind == "upstream_flap":
                    flapped = True
                    heapq.heappush(q, (now + sc.flap_seconds, seq,
                                       "upstream_back"))
                    seq += 1
                elif kind == "upstream_back":
                    flapped = False
                continue
            time.sleep(0.05)
        # faults never outlive the load
        while q:
            t, _, kind = heapq.heappop(q)
            if kind in ("redis_resume", "upstream_back"):
                self.do_event(kind, time.time() - self.t0)

    def do_event(self, kind, now):
        t0 = time.time()
        if kind == "redis_restart":
            kill = sum(1 for f in self.faults
                       if f["kind"] == "redis_restart") % 2 == 1
            if kill:
                self.redis.kill_restart()
            else:
                self.redis.restart()
            down = time.time() - t0
            self.fault(now, kind, down, "SIGKILL" if kill else "SIGTERM")
            self.last_fault_end = now + down
            log("   t=%3.0fs  redis restart (%s), down %.2f s, pid %d" % (
                now, "SIGKILL" if kill else "SIGTERM", down, self.redis.pid))
        elif kind == "redis_pause":
            self.redis.pause()
            self.fault(now, kind, self.sched.pause_seconds, "SIGSTOP")
            log("   t=%3.0fs  redis SIGSTOP" % now)
        elif kind == "redis_resume":
            self.redis.resume()
            self.last_fault_end = now
            log("   t=%3.0fs  redis SIGCONT" % now)
        elif kind == "upstream_flap":
            self.counting.stop()
            self.fast.stop()
            self.fault(now, kind, self.sched.flap_seconds,
                       "both upstreams stopped")
            log("   t=%3.0fs  upstreams stopped" % now)
        elif kind == "upstream_back":
            self.fast.start()
            self.counting.start()
            self.last_fault_end = time.time() - self.t0
            log("   t=%3.0fs  upstreams started (fast pid %d, counting pid "
                "%d)" % (now, self.fast.pid, self.counting.pid))

    # -- after the run -------------------------------------------------

    def collect(self):
        H = self.H
        side = self.procs.get("side")
        if side is not None:
            try:
                side.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.notes.append("side checker did not end: killed")
                H.terminate(side, signal.SIGTERM, 5.0)
        # the POSTs wrk abandoned at its end still settle
        time.sleep(2.0)
        self.workers_end = self.nginx.worker_pids()
        self.rss_final = {p: vm_status(p) for p in self.workers_end}
        try:
            self.counts = json.loads(http_get(self.counting.port,
                                              "/__counts")[1])
        except (OSError, ValueError) as e:
            raise SoakError("cannot read the upstream's /__counts: %r" % e)
        with open(os.path.join(self.work, "upstream-counts-final.json"),
                  "w") as f:
            json.dump(self.counts, f, indent=0, sort_keys=True)
        try:
            self.metrics = parse_metrics(http_get(
                self.nginx.port, "/metrics")[1].decode())
        except (OSError, ValueError) as e:
            self.metrics = {}
            self.notes.append("metrics scrape failed: %r" % e)
        try:
            info = self.redis.client().info()
            self.redis_info = {k: info.get(k) for k in (
                "used_memory_human", "aof_current_size", "aof_rewrites",
                "total_commands_processed", "loading")}
            self.redis_info["dbsize"] = self.redis.client().dbsize()
        except Exception as e:  # noqa: BLE001
            self.redis_info = {"error": repr(e)}

    def stop_all(self):
        if self.cleanup_done:
            return
        self.cleanup_done = True
        H = self.H
        for name in ("wrk", "side"):
            p = self.procs.get(name)
            if p is not None:
                H.terminate(p, signal.SIGTERM, 5.0)
        for obj in ("nginx", "fast", "counting", "redis"):
            o = getattr(self, obj, None)
            if o is not None:
                try:
                    o.stop()
                except Exception as e:  # noqa: BLE001
                    self.notes.append("stopping %s: %r" % (obj, e))
        rd = getattr(self, "redis_dir", None)
        if rd and rd.startswith("/dev/shm/"):
            shutil.rmtree(rd, ignore_errors=True)

    # -- analysis ------------------------------------------------------

    def analyze(self):
        a = self.a
        checks = []        # (name, ok, detail)

        def check(name, ok, detail=""):
            checks.append((name, bool(ok), detail))

        # wrk
        wrk_text = open(self.wrk_out, encoding="utf-8",
                        errors="replace").read()
        m = re.search(r"^SOAK_JSON (.*)$", wrk_text, re.M)
        if not m:
            raise SoakError("wrk printed no SOAK_JSON line:\n" +
                            wrk_text[-3000:])
        w = json.loads(m.group(1))
        self.wrk = w
        side = {}
        if os.path.exists(self.side_out):
            with open(self.side_out) as f:
                side = json.load(f)
        self.side = side

        # nginx error log
        elog = self.nginx.error_log()
        crashes = [ln for ln in elog.splitlines()
                   if "exited on signal" in ln]
        severe = [ln for ln in elog.splitlines()
                  if re.search(r"\[(alert|crit|emerg)\]", ln)]
        check("no worker crash (no 'exited on signal' in error.log)",
              not crashes, "\n".join(crashes[:10]))
        check("no [alert]/[crit]/[emerg] in error.log", not severe,
              "\n".join(severe[:10]))
        check("same nginx workers at the end (no respawn)",
              sorted(self.workers0) == sorted(self.workers_end),
              "start %s, end %s" % (self.workers0, self.workers_end))
        levels, patterns = {}, {}
        for ln in elog.splitlines():
            lv, msg = normalize_log_line(ln)
            levels[lv] = levels.get(lv, 0) + 1
            if lv in ("warn", "error", "crit", "alert", "emerg"):
                k = "[%s] %s" % (lv, msg)
                patterns[k] = patterns.get(k, 0) + 1
        self.log_levels = levels
        self.log_patterns = sorted(patterns.items(), key=lambda x: -x[1])
        giving_up = sum(1 for ln in elog.splitlines()
                        if "giving up" in ln and "apigw idempotency" in ln)
        self.giving_up = giving_up

        # wrk responses: statuses, codes, cheap checks of every response
        by_status, by_kind, by_code = {}, {}, {}
        bad_kind_codes, bad_2xx = {}, {}
        for k, n in w["counts"].items():
            kind, st = k.split(" ")
            st = int(st)
            by_status[st] = by_status.get(st, 0) + n
            by_kind.setdefault(kind, {})
            by_kind[kind][st] = by_kind[kind].get(st, 0) + n
            if 200 <= st < 300 and kind not in SUCCESS_KINDS:
                bad_2xx[k] = n
        for k, n in w["codes"].items():
            kind, code = k.split(" ")
            by_code[code] = by_code.get(code, 0) + n
            if code not in CODES or code not in ALLOWED.get(kind, ()):
                bad_kind_codes[k] = n
        self.by_status, self.by_kind, self.by_code = by_status, by_kind, \
            by_code
        foreign = {k: v for k, v in by_kind.items() if k not in ALLOWED}
        check("wrk: every response carried our X-Request-Id back",
              not foreign and not w["checks"].get("no_request_id"),
              "responses of unknown kind: %s" % foreign if foreign else "")
        for name in ("non2xx_without_code", "non2xx_request_id_mismatch",
                     "post_2xx_n_not_1"):
            check("wrk: %s = 0 (all %d responses checked in Lua)"
                  % (name, w["requests"]), not w["checks"].get(name),
                  "%d" % w["checks"].get(name, 0))
        check("wrk: every envelope code designed and expected for its "
              "request kind", not bad_kind_codes,
              json.dumps(bad_kind_codes))
        check("wrk: no 2xx for a request that must be refused",
              not bad_2xx, json.dumps(bad_2xx))
        sock_err = w["err_connect"] + w["err_read"] + w["err_write"]
        check("wrk: no socket errors (connect/read/write) or timeouts",
              sock_err == 0 and w["err_timeout"] == 0,
              "connect %d read %d write %d timeout %d" % (
                  w["err_connect"], w["err_read"], w["err_write"],
                  w["err_timeout"]))

        # wrk samples: full validation
        samples = []
        for name in sorted(os.listdir(self.samples_dir)):
            samples += parse_samples(os.path.join(self.samples_dir, name))
        bad_samples = []
        n2 = 0
        for st, kind, why, rid, ctype, body in samples:
            if 200 <= st < 300:
                bad_samples.append("%d %s %s: %r" % (st, kind, why,
                                                     body[:200]))
                continue
            n2 += 1
            code, problems = check_envelope(st, ctype, body, rid or None)
            if code is not None and code not in ALLOWED.get(kind, ()):
                problems.append("code %s not expected for %s" % (code, kind))
            for p in problems:
                bad_samples.append("%d %s rid=%s: %s" % (st, kind, rid, p))
        self.n_samples = n2
        check("wrk sample: every non-2xx a valid envelope with a designed "
              "code, X-Request-Id = request_id (%d validated)" % n2,
              n2 > 0 and not bad_samples, "\n".join(bad_samples[:15]))

        # side checker
        if side:
            check("side checker: every non-2xx valid (%d validated), every "
                  "2xx with our id, replays identical, keys executed once"
                  % side["validated_non2xx"], side["nfail"] == 0,
                  "%d problems, first: %s" % (side["nfail"], json.dumps(
                      side["failures"][:8], indent=None)))
            check("side checker: no transport errors", not side["transport"],
                  json.dumps(side["transport"]))
            # recovery: good-key GETs after the last fault
            grace = 3.0
            after = [x for x in side["timeline"]
                     if x[1] == "ok" and x[0] > self.last_fault_end + grace]
            bad = [x for x in after if x[2] != 200]
            check("recovery: good-key GETs all 200 from %.0f s after the "
                  "last fault (%d requests)" % (grace, len(after)),
                  after and not bad, "%d not 200: %s" % (len(bad), bad[:10])
                  if after else "no side-checker request after the last "
                  "fault (cool-down too short?)")
        else:
            check("side checker produced its results", False,
                  open(os.path.join(self.work, "side.log")).read()[-2000:])

        # nginx's own view: every non-2xx it logged has a designed code
        nginx_codes, nginx_bad, n499 = {}, [], 0
        path = os.path.join(self.nginx.dir, "non2xx.log")
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for ln in f:
                    m = re.match(r"\S+ (\d+) .* err=(\S*) idem=", ln)
                    if not m:
                        nginx_bad.append(ln.strip())
                        continue
                    st, code = int(m.group(1)), m.group(2)
                    if st == 499:
                        n499 += 1   # the client left: nothing was sent
                        continue
                    nginx_codes[code] = nginx_codes.get(code, 0) + 1
                    if code not in CODES or CODES[code][0] not in (None, st):
                        nginx_bad.append(ln.strip())
        self.nginx_codes, self.n499 = nginx_codes, n499
        check("nginx access log: every non-2xx sent has a designed code "
              "(%d lines)" % sum(nginx_codes.values()), not nginx_bad,
              "\n".join(nginx_bad[:10]))

        # idempotency: executions per key
        dist, dups, stray = {}, [], []
        for name, n in self.counts.items():
            if name.startswith(("wk-", "pc-")):
                dist[n] = dist.get(n, 0) + 1
                if n > 1:
                    dups.append((name, n))
            elif not name.startswith("preflight-"):
                stray.append((name, n))
        self.exec_dist = dist
        check("idempotency: every key executed at most once (%d keys "
              "executed)" % sum(dist.values()), not dups,
              "%d keys ran more than once: %s" % (len(dups), sorted(dups)[:20]))
        check("idempotency: requests without a valid key never reached the "
              "upstream", not stray, json.dumps(stray[:10]))
        side_missing = [k for k in side.get("keys_2xx", [])
                        if self.counts.get(k) != 1]
        check("idempotency: every key the side checker got a 2xx for ran "
              "exactly once", not side_missing, json.dumps(side_missing[:10]))

        # memory
        rows = []
        rss_ok = True
        warm = self.rss_warm[1] if self.rss_warm else {}
        end = self.rss_end[1] if self.rss_end else {}
        for pid in self.workers0:
            ws, es = warm.get(pid), end.get(pid)
            mx = max((s[pid]["VmRSS"] for _, s in self.rss if pid in s),
                     default=None)
            if not ws or not es:
                rss_ok = False
                rows.append((pid, ws, es, mx, None))
                continue
            d = 100.0 * (es["VmRSS"] - ws["VmRSS"]) / ws["VmRSS"]
            if d > a.rss_tolerance:
                rss_ok = False
            if d < -a.rss_tolerance:
                self.notes.append("worker %d's RSS fell by %.1f%% (not a "
                                  "leak; reported only)" % (pid, -d))
            rows.append((pid, ws, es, mx, d))
        self.rss_rows = rows
        check("memory: each worker's VmRSS at the end within +%g%% of its "
              "value after the warm-up" % a.rss_tolerance, rss_ok and rows,
              "; ".join("%d: %s -> %s kB" % (
                  p, ws and ws["VmRSS"], es and es["VmRSS"])
                  for p, ws, es, _, _ in rows))
        self.checks = checks
        return all(ok for _, ok, _ in checks)

    # -- report --------------------------------------------------------

    def report(self, ok, started):
        a, w, sc = self.a, self.wrk, self.sched
        L = []
        add = L.append
        add("apigw soak — %s" % ("PASS" if ok else "FAIL"))
        add("")
        add("run       %s, %d s (wrk %.1f s measured), module sha256 %s…"
            % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
               a.seconds, w["duration_us"] / 1e6, self.module_sha))
        add("host      %d CPUs, load average at the start %s; soak "
            "processes at nice %d" % (os.cpu_count() or 0, self.loadavg,
                                      a.nice))
        add("load      wrk -t%d -c%d %s, tools/soak.lua mix; side checker "
            "%d threads" % (a.threads, a.connections,
                            "delay %d ms/conn (cap ~%d req/s)"
                            % (self.wrk_delay, a.rate) if self.wrk_delay
                            else "unthrottled", a.side_threads))
        add("nginx     2 workers; auth + cache, rate limit (tenant soak "
            "100000r/s, soak-low %dr/s per-key), idempotency on POST /pay/ "
            "(lock ttl %d s), redis timeout 50ms" % (a.low_rate,
                                                    self.lock_ttl))
        add("redis     appendonly yes, appendfsync always (data on %s)"
            % os.path.dirname(self.redis_dir))
        add("schedule  " + sc.describe())
        add("")
        add("checks")
        for name, good, detail in self.checks:
            add("  [%s] %s" % ("PASS" if good else "FAIL", name))
            if not good and detail:
                for ln in str(detail).splitlines()[:15]:
                    add("         " + ln)
        add("")
        rps = w["requests"] / (w["duration_us"] / 1e6) if w["duration_us"] \
            else 0
        add("totals (wrk)  %d requests, %.0f req/s, p50 %.2f ms, p99 %.2f "
            "ms, max %.0f ms; socket errors connect %d read %d write %d "
            "timeout %d" % (w["requests"], rps, w["p50_us"] / 1e3,
                            w["p99_us"] / 1e3, w["max_us"] / 1e3,
                            w["err_connect"], w["err_read"], w["err_write"],
                            w["err_timeout"]))
        add("  by status   " + ", ".join(
            "%d: %d" % (k, v) for k, v in sorted(self.by_status.items())))
        add("  by code     " + ", ".join(
            "%s: %d" % (k, v) for k, v in sorted(
                self.by_code.items(), key=lambda x: -x[1])))
        add("  by kind")
        for kind in sorted(self.by_kind):
            d = self.by_kind[kind]
            add("    %-10s %s%s" % (kind, ", ".join(
                "%d: %d" % (k, v) for k, v in sorted(d.items())),
                "  (replays %d)" % w["replays"][kind]
                if w["replays"].get(kind) else ""))
        add("  wrk non-2xx bodies validated in full: %d (sampled); cheap "
            "Lua checks on all" % self.n_samples)
        s = self.side
        if s:
            tot = sum(s["counts"].values())
            st = {}
            for k, n in s["counts"].items():
                code = int(k.split()[1])
                st[code] = st.get(code, 0) + n
            add("totals (side checker)  %d requests, %d non-2xx validated, "
                "%d fresh executions, %d replays; transport errors %s"
                % (tot, s["validated_non2xx"], s["fresh"], s["replays"],
                   sum(s["transport"].values())))
            add("  by status   " + ", ".join(
                "%d: %d" % (k, v) for k, v in sorted(st.items())))
            sc_codes = {}
            for k, n in s["codes"].items():
                c = k.split()[1]
                sc_codes[c] = sc_codes.get(c, 0) + n
            add("  by code     " + ", ".join(
                "%s: %d" % (k, v) for k, v in sorted(
                    sc_codes.items(), key=lambda x: -x[1])))
        add("nginx access log, non-2xx by code: " + ", ".join(
            "%s: %d" % (k, v) for k, v in sorted(
                self.nginx_codes.items(), key=lambda x: -x[1])) +
            "; 499 (client gone at the end): %d" % self.n499)
        add("")
        add("idempotency   keys executed by the upstream: %d; executions "
            "per key %s; complete/release given up (key left locked): %d"
            % (sum(self.exec_dist.values()), json.dumps(
                {str(k): v for k, v in sorted(self.exec_dist.items())}),
               self.giving_up))
        add("")
        add("faults injected  " + ", ".join(
            "%s %d" % (k, sum(1 for f in self.faults if f["kind"] == k))
            for k in ("redis_restart", "redis_pause", "upstream_flap")))
        for f in self.faults:
            add("  t=%6.1f s  %-14s %-22s %.2f s" % (
                f["t"], f["kind"], f["note"], f["seconds"]))
        add("")
        add("worker VmRSS (kB)  after warm-up (t=%s s) -> end (t=%s s), max; "
            "tolerance +%g%%" % (self.rss_warm and self.rss_warm[0],
                                 self.rss_end and self.rss_end[0],
                                 a.rss_tolerance))
        for pid, ws, es, mx, d in self.rss_rows:
            add("  pid %-7d %s -> %s, max %s, %s   (anon %s -> %s, shmem "
                "%s -> %s)" % (
                    pid, ws and ws["VmRSS"], es and es["VmRSS"], mx,
                    "%+.1f%%" % d if d is not None else "n/a",
                    ws and ws.get("RssAnon"), es and es.get("RssAnon"),
                    ws and ws.get("RssShmem"), es and es.get("RssShmem")))
        add("")
        mt = self.metrics
        if mt:
            def pick(prefix):
                return ", ".join("%s %d" % (k[len(prefix):].strip("{}") or
                                            "total", v)
                                 for k, v in sorted(mt.items())
                                 if k.startswith(prefix))
            add("metrics (nginx /metrics at the end)")
            for p in ("apigw_redis_commands_total", "apigw_redis_errors_total",
                      "apigw_redis_timeouts_total",
                      "apigw_redis_reconnects_total",
                      "apigw_auth_cache_lookups_total",
                      "apigw_ratelimit_requests_total",
                      "apigw_idempotency_requests_total",
                      "apigw_idempotency_settled_total"):
                v = pick(p)
                if v:
                    add("  %-34s %s" % (p, v))
        add("redis at the end  %s" % json.dumps(self.redis_info))
        add("")
        add("nginx error.log lines by level: %s" % json.dumps(
            self.log_levels, sort_keys=True))
        for msg, n in self.log_patterns[:12]:
            add("  %6d  %s" % (n, msg))
        if self.notes:
            add("")
            add("notes")
            for n in self.notes:
                add("  " + n)
        add("")
        add("files: %s (nginx.conf, error.log, non2xx.log, wrk.out, "
            "samples/, side.json)" % os.path.relpath(self.work, ROOT))
        text = "\n".join(L) + "\n"
        out = os.path.abspath(a.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
        return text


def main():
    ap = argparse.ArgumentParser(
        description="apigw soak: load + Redis/upstream faults + checks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The fault periods default to the 5-minute schedule scaled "
               "by --seconds/300 (with floors), so short runs see every "
               "fault.")
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                  "soak.txt"))
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "soak"))
    ap.add_argument("--redis-dir", default=None,
                    help="parent of Redis's data dir (default /dev/shm)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=int, default=0,
                    help="cap wrk at about this many req/s (0: no cap)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything at this niceness")
    ap.add_argument("--side-threads", type=int, default=4)
    ap.add_argument("--side-interval", type=float, default=0.03,
                    help="mean pause between a side thread's requests (s)")
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--cooldown", type=float, default=None)
    ap.add_argument("--restart-every", type=float, default=None)
    ap.add_argument("--pause-every", type=float, default=None)
    ap.add_argument("--pause-seconds", type=float, default=2.0)
    ap.add_argument("--flap-every", type=float, default=None)
    ap.add_argument("--flap-seconds", type=float, default=None)
    ap.add_argument("--window", type=int, default=10,
                    help="seconds before the Idempotency-Key set rotates")
    ap.add_argument("--pool", type=int, default=1500,
                    help="wrk Idempotency-Keys per window")
    ap.add_argument("--hot", type=int, default=10,
                    help="hot keys per window (in-flight conflicts)")
    ap.add_argument("--hot-share", type=float, default=0.2)
    ap.add_argument("--sleep-ms", type=int, default=20,
                    help="upstream run time of a POST")
    ap.add_argument("--lock-ttl", type=int, default=None,
                    help="apigw_idempotency_lock_ttl in s (default: "
                         "--seconds + 120, above the run; shorter shows the "
                         "documented re-run after a lock expires)")
    ap.add_argument("--low-rate", type=int, default=20,
                    help="the soak-low tenant's rate (r/s) and burst")
    ap.add_argument("--rss-tolerance", type=float, default=10.0,
                    help="percent")
    # child modes
    ap.add_argument("--_counting-upstream", dest="counting",
                    action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_side-checker", dest="side", action="store_true",
                    help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--counts-file", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.counting:
        return counting_upstream_main(a)
    if a.side:
        return side_checker_main(a)

    if a.nice:
        os.nice(a.nice)
    started = time.time()
    soak = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        soak = Soak(a)
        log("== soak: %d s; %s" % (a.seconds, soak.sched.describe()))
        soak.setup()
        soak.run()
        soak.collect()
    except (SoakError, KeyboardInterrupt) as e:
        if soak is not None:
            soak.stop_all()
        log("soak aborted: %s" % e)
        return 2
    except BaseException:
        if soak is not None:
            soak.stop_all()
        raise
    soak.stop_all()
    ok = soak.analyze()
    sys.stdout.write("\n" + soak.report(ok, started))
    log("summary written to %s" % os.path.relpath(os.path.abspath(a.out),
                                                 ROOT))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
