"""Token-bucket rate limits against a real redis-server: exact counts under
concurrency and across two nginx instances (one with its clock moved by
libfaketime), refill, headers (legacy, IETF, both, off) with exact values,
the 429 envelope, several policies at once, the local deny cache (counted
in Redis's commandstats), Redis down / restarted with fail=open and
fail=closed, per-key overrides from the key record, $binary_remote_addr
keys, bucket expiry, inheritance and configuration errors."""

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import re
import socket
import threading
import time

import pytest
import requests

from harness import parse_raw_response, raw_request, wait_for

CONF = """
apigw on;
apigw_redis {redis_addr} timeout=200ms connect_timeout=200ms;
apigw_auth_cache zone=keys:1m ttl=30s negative_ttl=1s;

apigw_rate_limit_zone per_min  rate=10r/m burst=10 key=$http_x_client;
apigw_rate_limit_zone fast     rate=2r/s key=$http_x_client;
apigw_rate_limit_zone per_sec3 rate=3r/s key=$http_x_client;
apigw_rate_limit_zone per_min5 rate=5r/m key=$http_x_client;
apigw_rate_limit_zone closed   rate=10r/m key=$http_x_client fail=closed;
apigw_rate_limit_zone tenant   rate=5r/m;
apigw_rate_limit_zone tenant_d rate=2r/d;
apigw_rate_limit_zone ip       rate=3r/m key=$binary_remote_addr;
apigw_rate_limit_zone ip2      rate=4r/m key=$binary_remote_addr;
apigw_rate_limit_zone hour     rate=1r/h key=$http_x_client;

log_format rl '$status c=$http_x_client left=$apigw_ratelimit_remaining';

server {
    listen 127.0.0.1:{port};
    access_log {tmp}/rl.log rl;

    apigw_rate_limit per_min;

    location /min/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /ietf/ {
        apigw_rate_limit_headers ietf;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /both/ {
        apigw_rate_limit_headers both;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /quiet/ {
        apigw_rate_limit_headers off;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /fast/ {
        apigw_rate_limit fast;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /multi/ {
        apigw_rate_limit per_sec3;
        apigw_rate_limit per_min5;
        apigw_rate_limit_headers both;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /closed/ {
        apigw_rate_limit closed;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /keys/ {
        apigw_auth on;
        apigw_rate_limit tenant;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /keysday/ {
        apigw_auth on;
        apigw_rate_limit tenant_d;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /ip/ {
        apigw_rate_limit ip;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /two/ {
        apigw_rate_limit fast ip2;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /hour/ {
        apigw_rate_limit hour;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /metrics {
        apigw off;
        apigw_rate_limit off;
        apigw_metrics;
    }
    location /free/ {
        apigw_rate_limit off;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""

LEGACY = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
IETF = ("ratelimit-policy", "ratelimit")

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

KEY_SMALL = "live_" + "S" * 40
KEY_BIG = "live_" + "G" * 40
KEY_BROKEN = "live_" + "X" * 40
KEY_BURST = "live_" + "U" * 40
KEY_HUGE = "live_" + "H" * 40


def start(nginx_factory, redis, upstream, **kw):
    return nginx_factory(CONF, redis=redis, upstream=upstream, **kw)


@pytest.fixture
def gw(nginx_factory, redis, upstream):
    return start(nginx_factory, redis, upstream)


def get(gw, path, client=None, rid=None, headers=None, timeout=5):
    h = dict(headers or {})
    if client is not None:
        h["X-Client"] = client
    if rid:
        h["X-Request-Id"] = rid
    return requests.get(gw.url(path), headers=h, timeout=timeout)


def burst(urls_clients, workers=10):
    """[(nginx, path, client)] sent concurrently -> [status]"""
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        futs = [ex.submit(get, n, p, c) for n, p, c in urls_clients]
        return [f.result().status_code for f in futs]


def bucket_key(client, policy, prefix="apigw:"):
    return "%s{rl:%s}:%s" % (prefix, client, policy)


def rl_headers(r):
    return {k.lower(): v for k, v in r.headers.items()
            if k.lower() in LEGACY + IETF + ("retry-after",)}


def envelope_429(rid, retry_after, limit, policy):
    return ('{"error":{"type":"rate_limit_error","code":"rate_limited",'
            '"message":"Rate limit exceeded. Retry after %d seconds.",'
            '"details":{"retry_after":%d,"limit":%d,"policy":"%s"}},'
            '"request_id":"%s"}' % (retry_after, retry_after, limit, policy,
                                    rid)).encode()


def put_key(redis, key, tenant, **fields):
    rec = {"key_id": "key_" + tenant, "tenant": tenant, "scopes": "",
           "status": "active", "account_status": "active"}
    rec.update(fields)
    h = "apigw:key:" + hashlib.sha256(key.encode()).hexdigest()
    c = redis.client()
    c.delete(h)
    c.hset(h, mapping=rec)


def script_calls(redis):
    s = redis.commandstats()
    return s.get("evalsha", 0) + s.get("eval", 0)


# -- exactness -------------------------------------------------------------

def test_burst_is_exact(gw, upstream):
    """30 concurrent requests on a 10-token bucket: exactly 10 pass, and
    only those reach the upstream."""
    upstream.reset()
    got = burst([(gw, "/min/count/exact", "exact")] * 30)
    assert got.count(201) == 10, got
    assert got.count(429) == 20, got
    assert upstream.counts().get("exact") == 10


def test_refill_is_exact(gw):
    """2r/s, burst 2: after 0.75 s exactly one token more, after another
    second exactly two (the bucket refills linearly, from Redis's clock)."""
    assert [get(gw, "/fast/ok", "refill").status_code
            for _ in range(5)] == [200, 200, 429, 429, 429]
    t0 = time.monotonic()

    time.sleep(0.75)
    got = [get(gw, "/fast/ok", "refill").status_code for _ in range(4)]
    assert got == [200, 429, 429, 429], got

    # 1.75 s since the bucket was emptied: 3 tokens minted, 1 taken
    time.sleep(max(0.0, 1.75 - (time.monotonic() - t0)))
    got = [get(gw, "/fast/ok", "refill").status_code for _ in range(4)]
    assert got == [200, 200, 429, 429], got


def test_two_instances_share_one_exact_bucket(nginx_factory, redis,
                                               upstream):
    a = start(nginx_factory, redis, upstream)
    b = start(nginx_factory, redis, upstream, worker_processes=2)
    # alternating, one after the other
    got = [get(n, "/min/ok", "alt").status_code
           for _ in range(15) for n in (a, b)]
    assert got.count(200) == 10, got
    assert got[:10] == [200] * 10
    # and concurrently, 30 requests spread over both
    got = burst([(n, "/min/ok", "alt2") for _ in range(15) for n in (a, b)])
    assert got.count(200) == 10, got


def _monitor(redis, stop, lines):
    s = socket.create_connection((redis.host, redis.port), timeout=0.2)
    try:
        s.sendall(b"MONITOR\r\n")
        buf = b""
        while not stop.is_set():
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\r\n")
            lines.extend(done)
    finally:
        s.close()


@contextlib.contextmanager
def monitoring(redis):
    """Redis MONITOR in a thread; yields the list of its lines.  Once the
    block is over every command sent before its end is in the list (a
    marker ECHOed last is waited for: MONITOR lists in execution order)."""
    stop, lines = threading.Event(), []
    t = threading.Thread(target=_monitor, args=(redis, stop, lines))
    t.start()
    try:
        wait_for(lambda: b"+OK" in lines, 5, what="MONITOR to start")
        yield lines
        marker = "apigw-monitor-end-%d" % time.monotonic_ns()
        c = redis.client()
        try:
            c.echo(marker)
        finally:
            c.close()
        wait_for(lambda: any(marker.encode() in ln for ln in lines), 5,
                 what="MONITOR to catch up")
    finally:
        stop.set()
        t.join(5)


_ESC = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b"}


def _unescape(a):
    """MONITOR quotes arguments the way sdscatrepr does"""
    return re.sub(r"\\(x[0-9a-f]{2}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16))
                  if len(m.group(1)) == 3 else _ESC.get(m.group(1),
                                                        m.group(1)), a)


def _args(line):
    return [_unescape(a)
            for a in re.findall(r'"((?:[^"\\]|\\.)*)"',
                                line.decode("latin-1"))]


def script_calls_seen(lines):
    """the EVALSHA / EVAL commands among MONITOR lines, as argument lists
    (the commands a script runs inside, "[0 lua]", are not listed)"""
    return [_args(ln) for ln in lines
            if (b'"EVALSHA"' in ln or b'"EVAL"' in ln) and b" lua]" not in ln]


def tb_call(call):
    """A token-bucket script call (["EVALSHA", sha, ...] or ["EVAL", src,
    ...]) decoded from its format (src/core/apigw_token_bucket.h):

        m key_1..key_m  s (capacity tokens period_ms cost)*s
        c  then per check: n (key_index set_index)*n

    -> [check, ...], each check [(bucket key, (capacity, tokens,
    period_ms, cost)), ...]; an argument list that does not follow the
    format exactly (also a trailing one) fails the assertion."""
    a = list(call[2:])
    pos = [0]

    def take(k=1):
        assert pos[0] + k <= len(a), ("truncated", call)
        v = a[pos[0]:pos[0] + k]
        pos[0] += k
        return v

    def count(lo, hi):
        v = take()[0]
        assert re.fullmatch(r"[1-9][0-9]*", v), (v, call)
        assert lo <= int(v) <= hi, (v, call)
        return int(v)

    m = count(1, 256)
    keys = take(m)
    assert len(set(keys)) == m, ("keys not distinct", call)
    s = count(1, 256)
    sets = [tuple(int(x) for x in take(4)) for _ in range(s)]
    assert len(set(sets)) == s, ("parameter sets not distinct", call)
    checks = []
    for _ in range(count(1, 64)):
        n = count(1, 16)
        checks.append([(keys[count(1, m) - 1], sets[count(1, s) - 1])
                       for _ in range(n)])
    assert pos[0] == len(a), ("trailing arguments", call)
    assert sum(len(c) for c in checks) <= 256, call
    # every key and every set is used
    assert {k for c in checks for k, _ in c} == set(keys), call
    assert {p for c in checks for _, p in c} == set(sets), call
    return checks


def hash_tag(bucket):
    """the Redis Cluster hash tag of a bucket key"""
    i = bucket.index("{")
    return bucket[i + 1:bucket.index("}", i + 1)]


def test_no_clock_sent_and_script_reads_time(gw, redis):
    """MONITOR: nginx sends the bucket keys and capacity, tokens, period_ms,
    cost -- never a timestamp; the script (sent whole after SCRIPT FLUSH)
    takes the time from Redis TIME."""
    redis.client().script_flush()
    with monitoring(redis) as lines:
        assert get(gw, "/min/ok", "mon").status_code == 200
        assert get(gw, "/multi/ok", "mon").status_code == 200
    calls = script_calls_seen(lines)
    assert calls, lines
    evals = [c for c in calls if c[0] == "EVAL"]
    assert evals and "redis.call('TIME')" in evals[0][1]
    shas = [c for c in calls if c[0] == "EVALSHA"]
    sha = hashlib.sha1(evals[0][1].encode("latin-1")).hexdigest()
    assert shas and all(c[1] == sha for c in shas)
    # the exact arguments: m keys, s parameter sets, c checks of n items
    # (key index, set index); EVAL repeats a refused EVALSHA's arguments
    argv = {tuple(c[2:]) for c in calls}
    assert argv == {
        ("1", bucket_key("mon", "per_min"),
         "1", "10", "10", "60000", "1",
         "1", "1", "1", "1"),
        ("2", bucket_key("mon", "per_sec3"), bucket_key("mon", "per_min5"),
         "2", "3", "3", "1000", "1", "5", "5", "60000", "1",
         "1", "2", "1", "1", "2", "2")}, argv
    assert [tb_call(c) for c in shas[-2:]] == [
        [[(bucket_key("mon", "per_min"), (10, 10, 60000, 1))]],
        [[(bucket_key("mon", "per_sec3"), (3, 3, 1000, 1)),
          (bucket_key("mon", "per_min5"), (5, 5, 60000, 1))]]]
    # no argument is a clock: every number is a count, a size or a period
    assert all(int(x) <= 60000 for c in calls for x in c[2:]
               if x.isdigit()), calls


@pytest.mark.skipif(not os.path.exists(FAKETIME_LIB),
                    reason="libfaketime not installed (apt-get install "
                           "faketime); test_no_clock_sent_... covers it")
def test_skewed_nginx_clock_changes_nothing(nginx_factory, redis, upstream):
    """One of two nginx instances runs 3 hours in the future: the shared
    bucket stays exact and its Reset header still follows Redis's clock."""
    a = start(nginx_factory, redis, upstream)
    b = start(nginx_factory, redis, upstream,
              env={"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "+3h",
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    rb = get(b, "/free/ok")
    skew = time.mktime(time.strptime(rb.headers["Date"],
                                     "%a, %d %b %Y %H:%M:%S GMT")) \
        - time.mktime(time.gmtime())
    assert 3 * 3600 - 60 < skew < 3 * 3600 + 60, rb.headers["Date"]

    got = []
    for _ in range(15):
        for n in (a, b):
            t0 = time.time()
            r = get(n, "/min/ok", "skew")
            got.append(r.status_code)
            if r.status_code == 200:
                reset = int(r.headers["X-RateLimit-Reset"])
                assert t0 < reset <= time.time() + 61, (n is b, reset, t0)
    assert got.count(200) == 10, got
    assert got[:10] == [200] * 10


# -- headers and the envelope ----------------------------------------------

def test_legacy_headers_exact(gw):
    for i in range(10):
        t0 = time.time()
        r = get(gw, "/min/ok", "hdr")
        t1 = time.time()
        assert r.status_code == 200
        h = rl_headers(r)
        assert set(h) == set(LEGACY), h
        assert h["x-ratelimit-limit"] == "10"
        assert h["x-ratelimit-remaining"] == str(9 - i)
        # full again after (i + 1) tokens at 6 s each, on Redis's clock
        reset = int(h["x-ratelimit-reset"])
        assert math.floor(t0) + 6 * (i + 1) - 1 <= reset \
            <= math.ceil(t1) + 6 * (i + 1), (i, reset, t0)

    t0 = time.time()
    r = get(gw, "/min/ok", "hdr", rid="rl-429")
    assert r.status_code == 429
    h = rl_headers(r)
    assert set(h) == set(LEGACY) | {"retry-after"}, h
    assert h["x-ratelimit-limit"] == "10"
    assert h["x-ratelimit-remaining"] == "0"
    # the next token is under 6 s away, rounded up: 6, never 0
    assert h["retry-after"] == "6"
    assert abs(int(h["x-ratelimit-reset"]) - (t0 + 60)) <= 2
    assert r.content == envelope_429("rl-429", 6, 10, "per_min")
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)


def test_ietf_both_off(gw):
    r = get(gw, "/ietf/ok", "ietf")
    assert r.status_code == 200
    assert rl_headers(r) == {
        "ratelimit-policy": '"per_min";q=10;w=60',
        "ratelimit": '"per_min";r=9;t=6'}

    r = get(gw, "/both/ok", "ietf")
    assert rl_headers(r) == {
        "ratelimit-policy": '"per_min";q=10;w=60',
        "ratelimit": '"per_min";r=8;t=12',
        "x-ratelimit-limit": "10", "x-ratelimit-remaining": "8",
        "x-ratelimit-reset": r.headers["X-RateLimit-Reset"]}

    r = get(gw, "/quiet/ok", "ietf")
    assert r.status_code == 200
    assert rl_headers(r) == {}
    for _ in range(7):
        assert get(gw, "/quiet/ok", "ietf").status_code == 200
    # the same bucket, whatever the headers: now empty
    r = get(gw, "/quiet/ok", "ietf", rid="q429")
    assert r.status_code == 429
    assert rl_headers(r) == {"retry-after": "6"}
    assert r.content == envelope_429("q429", 6, 10, "per_min")

    r = get(gw, "/ietf/ok", "ietf")
    assert r.status_code == 429
    assert rl_headers(r) == {
        "ratelimit-policy": '"per_min";q=10;w=60',
        "ratelimit": '"per_min";r=0;t=60', "retry-after": "6"}


def test_headers_on_upstream_errors_and_upstream_copies_replaced(gw):
    r = get(gw, "/min/headers?h=X-RateLimit-Limit:999&h=X-RateLimit-"
                "Remaining:999&h=Retry-After:77", "up")
    assert r.status_code == 200
    raw = raw_request(gw.port, "GET /both/headers?h=RateLimit:bogus&"
                      "h=X-RateLimit-Limit:999 HTTP/1.1\r\nHost: x\r\n"
                      "X-Client: up\r\nConnection: close\r\n\r\n")
    status, hdrs, _ = parse_raw_response(raw)
    assert status == 200
    assert hdrs["x-ratelimit-limit"] == ["10"]
    assert hdrs["x-ratelimit-remaining"] == ["8"]
    assert hdrs["ratelimit"] == ['"per_min";r=8;t=12']
    # an allowed request gets no Retry-After from us (the upstream's stays)
    assert r.headers["X-RateLimit-Limit"] == "10"
    assert r.headers["Retry-After"] == "77"

    # an upstream error is still a response of a limited location
    r = get(gw, "/min/status/500?shape=html", "up")
    assert r.status_code == 500
    assert r.headers["X-RateLimit-Remaining"] == "7"
    assert json.loads(r.content)["error"]["code"] == "internal_error"


def test_remaining_variable_logged(gw):
    for _ in range(11):
        get(gw, "/min/ok", "logvar")
    get(gw, "/free/ok", "logvar")
    path = os.path.join(gw.dir, "rl.log")

    def logged():
        with open(path) as f:
            got = [ln.split()[2] for ln in f if " c=logvar " in ln]
        return got if len(got) == 12 else None
    assert wait_for(logged, 5, what="12 access log lines") == \
        ["left=%d" % i for i in range(9, -1, -1)] + ["left=0", "left=-"]


def test_empty_key_is_not_counted(gw):
    for _ in range(15):
        r = get(gw, "/min/ok")
        assert r.status_code == 200
        assert rl_headers(r) == {}


# -- several policies ------------------------------------------------------

def test_several_policies(gw, redis):
    """3r/s and 5r/m together: both enforced, the headers describe the
    bucket closest to empty, and a refusal by one takes no token from the
    other (the script is all or nothing)."""
    r = get(gw, "/multi/ok", "multi")
    assert r.status_code == 200
    assert r.headers["RateLimit-Policy"] == \
        '"per_sec3";q=3;w=1, "per_min5";q=5;w=60'
    # 2/3 left of per_sec3 is closer to empty than 4/5 of per_min5
    assert r.headers["RateLimit"] == '"per_sec3";r=2;t=1'
    assert r.headers["X-RateLimit-Limit"] == "3"
    assert r.headers["X-RateLimit-Remaining"] == "2"

    assert [get(gw, "/multi/ok", "multi").status_code
            for _ in range(2)] == [200, 200]

    # per_sec3 is empty: refused, many times, per_min5 keeps its 2 tokens
    for i in range(6):
        r = get(gw, "/multi/ok", "multi", rid="m%d" % i)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.content == envelope_429("m%d" % i, 1, 3, "per_sec3")
        assert r.headers["RateLimit"].startswith('"per_sec3";r=0;')
    c = redis.client()
    st = c.hgetall(bucket_key("multi", "per_min5"))
    assert int(st["u"]) // int(st["p"]) == 2, st

    time.sleep(1.1)
    r = get(gw, "/multi/ok", "multi")
    assert r.status_code == 200
    # per_min5 now has 1/5 left, per_sec3 2/3; 4 tokens at 12 s each
    assert re.fullmatch(r'"per_min5";r=1;t=4[678]', r.headers["RateLimit"])
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert get(gw, "/multi/ok", "multi").status_code == 200

    r = get(gw, "/multi/ok", "multi", rid="m-min")
    assert r.status_code == 429
    ra = int(r.headers["Retry-After"])
    assert 10 <= ra <= 12, ra
    assert r.content == envelope_429("m-min", ra, 5, "per_min5")
    # five in all: the per-minute bucket never paid for a refusal
    assert r.headers["X-RateLimit-Remaining"] == "0"


def test_policies_with_different_keys(gw, redis):
    """fast (per X-Client) and ip2 (per address) live in different Redis
    Cluster slots: one script call each, in order, stopping at the first
    refusal."""
    c = redis.client(decode=False)
    ip2 = b"apigw:{rl:\x7f\x00\x00\x01}:ip2"

    def level(key):
        st = c.hgetall(key)
        return int(st[b"u"]) // int(st[b"p"]) if st else None

    r = get(gw, "/two/ok", "g")
    assert r.status_code == 200
    assert (r.headers["X-RateLimit-Limit"],
            r.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert get(gw, "/two/ok", "g").status_code == 200
    r = get(gw, "/two/ok", "g", rid="g3")
    assert r.status_code == 429
    assert r.content == envelope_429("g3", 1, 2, "fast")
    assert level(ip2) == 2  # the address's call was never made

    time.sleep(1.05)
    r = get(gw, "/two/ok", "g")
    assert r.status_code == 200
    # 1/4 left per address is closer to empty than 1/2 per client
    assert (r.headers["X-RateLimit-Limit"],
            r.headers["X-RateLimit-Remaining"]) == ("4", "1")
    assert get(gw, "/two/ok", "g").status_code == 200

    time.sleep(1.05)
    r = get(gw, "/two/ok", "g", rid="g6")
    assert r.status_code == 429
    ra = int(r.headers["Retry-After"])
    assert 10 <= ra <= 15
    assert r.content == envelope_429("g6", ra, 4, "ip2")
    # the documented limit: the first call's token is not given back
    assert level(bucket_key("g", "fast").encode()) == 1


# -- the local deny cache --------------------------------------------------

def test_deny_cache_spares_redis(nginx_factory, redis, upstream):
    """A flood from one over-limit key: each worker asks Redis once, then
    refuses locally until the next token is due (6 s at 10r/m)."""
    gw = start(nginx_factory, redis, upstream, worker_processes=2)
    assert [get(gw, "/min/ok", "flood").status_code
            for _ in range(10)] == [200] * 10
    before = script_calls(redis)
    t0 = time.monotonic()

    # new connections one after another reach both workers
    for i in range(30):
        r = get(gw, "/min/ok", "flood", rid="f%d" % i)
        assert r.status_code == 429
        ra = int(r.headers["Retry-After"])
        assert 5 <= ra <= 6
        assert r.content == envelope_429("f%d" % i, ra, 10, "per_min")
        assert r.headers["X-RateLimit-Remaining"] == "0"
    got = burst([(gw, "/min/ok", "flood")] * 300, workers=8)
    assert got == [429] * 300

    assert time.monotonic() - t0 < 5.0, "the flood outlasted a refill"
    calls = script_calls(redis) - before
    assert 1 <= calls <= 2, calls

    # another client is not affected
    assert get(gw, "/min/ok", "other").status_code == 200


def test_deny_cache_never_refuses_what_redis_allows(gw):
    """2r/s: a refused client gets its token back as soon as Redis has it,
    not later (the deadline counts from when the call was sent)."""
    for _ in range(2):
        assert get(gw, "/fast/ok", "deny").status_code == 200
    r = get(gw, "/fast/ok", "deny")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    time.sleep(0.55)
    assert get(gw, "/fast/ok", "deny").status_code == 200


def test_deny_cache_is_bounded(nginx_factory, redis, upstream):
    """More refused buckets than the cache holds (1024 per worker): the
    least recently refused are evicted and asked about again, the rest are
    still refused locally; nothing breaks."""
    gw = start(nginx_factory, redis, upstream)
    clients = ["b%04d" % i for i in range(1100)]
    local = threading.local()

    def fill(c):
        # keep-alive: thousands of fresh connections would pile up in
        # TIME_WAIT and starve later tests of ephemeral ports
        if not hasattr(local, "s"):
            local.s = requests.Session()
        url = gw.url("/hour/ok")
        a = local.s.get(url, headers={"X-Client": c}, timeout=5)
        b = local.s.get(url, headers={"X-Client": c}, timeout=5)
        return a.status_code, b.status_code

    t0 = time.monotonic()
    for c in clients[:16]:  # the oldest, in order
        assert fill(c) == (200, 429)
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        got = list(ex.map(fill, clients[16:-16]))
    assert set(got) == {(200, 429)}
    for c in clients[-16:]:  # the newest, in order
        assert fill(c) == (200, 429)
    # the cache holds a refusal at most 10 s: all of this within it
    assert time.monotonic() - t0 < 9.0, "too slow to test the bound"

    before = script_calls(redis)
    for c in clients[-16:]:
        assert get(gw, "/hour/ok", c).status_code == 429
    assert script_calls(redis) == before
    for c in clients[:16]:
        assert get(gw, "/hour/ok", c).status_code == 429
    assert script_calls(redis) == before + 16


# -- Redis faults ----------------------------------------------------------

def test_redis_down_fail_open_and_closed(gw, redis, upstream):
    assert get(gw, "/min/ok", "down").status_code == 200
    redis.stop()
    upstream.reset()
    for i in range(40):
        r = get(gw, "/min/count/open", "down")
        assert r.status_code == 201, r.content
        assert rl_headers(r) == {}
    assert upstream.counts().get("open") == 40

    for i in range(5):
        r = get(gw, "/closed/ok", "down", rid="c%d" % i)
        assert r.status_code == 503
        assert r.content == (
            '{"error":{"type":"api_error","code":"rate_limiter_unavailable",'
            '"message":"The rate limiter is unavailable. Retry after 1 '
            'seconds.","details":{"retry_after":1},"correlation_id":"c%d"},'
            '"request_id":"c%d"}' % (i, i)).encode()
        assert r.headers["Retry-After"] == "1"
        assert rl_headers(r) == {"retry-after": "1"}

    # logged, but not once per request
    log = gw.error_log()
    lines = re.findall(r"apigw rate limit: Redis unavailable.*", log)
    assert 1 <= len(lines) <= 2, lines
    assert "fails open" in lines[0]


def rl_metrics(gw):
    text = requests.get(gw.url("/metrics"), timeout=5).text
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'^apigw_ratelimit_requests_total\{outcome="(\w+)"\} (\S+)$', text,
        re.M)}


def test_outcomes_counted(gw, redis):
    assert [get(gw, "/fast/ok", "cnt").status_code
            for _ in range(5)] == [200, 200, 429, 429, 429]
    get(gw, "/free/ok", "cnt")  # not a limited request
    assert rl_metrics(gw) == {"allowed": 2, "denied": 1,
                              "denied_locally": 2, "fail_open": 0,
                              "fail_closed": 0}
    redis.stop()
    assert get(gw, "/min/ok", "cnt").status_code == 200
    assert get(gw, "/closed/ok", "cnt").status_code == 503
    assert rl_metrics(gw) == {"allowed": 2, "denied": 1,
                              "denied_locally": 2, "fail_open": 1,
                              "fail_closed": 1}


def test_redis_restart(gw, redis):
    for _ in range(10):
        assert get(gw, "/min/ok", "restart").status_code == 200
    assert get(gw, "/min/ok", "restart").status_code == 429

    redis.restart()  # empty: no buckets, no scripts

    # the worker reconnects and the script is loaded again (NOSCRIPT)
    wait_for(lambda: "X-RateLimit-Limit" in get(gw, "/min/ok",
                                                "restart2").headers,
             10, what="rate limits after the Redis restart")
    got = [get(gw, "/min/ok", "restart3").status_code for _ in range(12)]
    assert got == [200] * 10 + [429] * 2
    assert redis.commandstats().get("eval", 0) >= 1


def test_redis_paused_fail_open_is_bounded(gw, redis):
    redis.pause()
    try:
        t0 = time.monotonic()
        r = get(gw, "/min/ok", "paused")
        assert r.status_code == 200
        assert time.monotonic() - t0 < 1.5
        r = get(gw, "/closed/ok", "paused")
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
    finally:
        redis.resume()
    wait_for(lambda: get(gw, "/min/ok", "paused2").headers.get(
        "X-RateLimit-Remaining") == "9" or None, 10,
        what="recovery after SIGCONT")


# -- keys ------------------------------------------------------------------

def test_per_key_override(gw, redis):
    put_key(redis, KEY_SMALL, "t_small", rate="2r/m")
    put_key(redis, KEY_BIG, "t_big")
    put_key(redis, KEY_BROKEN, "t_broken", rate="lots", burst="-1")

    def run(key, n):
        out = []
        for _ in range(n):
            r = get(gw, "/keys/ok",
                    headers={"Authorization": "Bearer " + key})
            out.append((r.status_code, r.headers.get("X-RateLimit-Limit")))
        return out

    assert run(KEY_SMALL, 4) == [(200, "2")] * 2 + [(429, "2")] * 2
    assert run(KEY_BIG, 7) == [(200, "5")] * 5 + [(429, "5")] * 2
    # a broken override is logged and ignored: the policy applies
    assert run(KEY_BROKEN, 6) == [(200, "5")] * 5 + [(429, "5")]
    assert "ignoring the rate \"lots\"" in gw.error_log()
    assert gw.error_log().count("ignoring the rate") == 1

    # the bucket is the tenant's
    assert redis.client().exists(bucket_key("t_small", "tenant"))

    # unauthenticated: 401 before any bucket is touched
    r = get(gw, "/keys/ok")
    assert r.status_code == 401
    assert rl_headers(r) == {}


def test_burst_only_override(gw, redis):
    """burst alone keeps each policy's rate, and is checked against it: a
    burst too large for 2r/d (the script could not count it exactly) is
    ignored there but fine for 5r/m."""
    put_key(redis, KEY_BURST, "t_burst", burst="3")
    put_key(redis, KEY_HUGE, "t_huge", burst="1000000000")

    def limits(path, key, n):
        return [(r.status_code, r.headers.get("X-RateLimit-Limit"))
                for r in (get(gw, path, headers={
                    "Authorization": "Bearer " + key}) for _ in range(n))]

    assert limits("/keys/ok", KEY_BURST, 4) == [(200, "3")] * 3 + \
        [(429, "3")]
    assert limits("/keysday/ok", KEY_BURST, 4) == [(200, "3")] * 3 + \
        [(429, "3")]
    assert limits("/keys/ok", KEY_HUGE, 2) == [(200, "1000000000")] * 2
    assert limits("/keysday/ok", KEY_HUGE, 3) == [(200, "2")] * 2 + \
        [(429, "2")]
    assert "burst is too large for this rate" in gw.error_log()


def test_binary_remote_addr_key(gw, redis):
    got = [get(gw, "/ip/ok").status_code for _ in range(5)]
    assert got == [200, 200, 200, 429, 429]
    c = redis.client(decode=False)
    assert c.exists(b"apigw:{rl:\x7f\x00\x00\x01}:ip")


def test_bucket_expires_when_full(gw, redis):
    c = redis.client()
    key = bucket_key("ttl", "fast")
    assert get(gw, "/fast/ok", "ttl").status_code == 200
    assert 0 < c.pttl(key) <= 500
    assert get(gw, "/fast/ok", "ttl").status_code == 200
    assert 500 < c.pttl(key) <= 1000
    wait_for(lambda: not c.exists(key), 2.0, what="the full bucket's key "
             "to expire")
    # and an absent bucket is a full one
    assert [get(gw, "/fast/ok", "ttl").status_code
            for _ in range(3)] == [200, 200, 429]


# -- configuration ---------------------------------------------------------

def test_inheritance_and_off(gw):
    # the server's per_min applies to /min/, not to /free/ (off) nor to
    # /fast/ (its own list replaces the inherited one)
    for _ in range(12):
        assert rl_headers(get(gw, "/free/ok", "inh")) == {}
    for _ in range(2):
        r = get(gw, "/fast/ok", "inh")
        assert r.headers["X-RateLimit-Limit"] == "2"
    assert get(gw, "/min/ok", "inh").headers["X-RateLimit-Remaining"] == "9"


@pytest.mark.parametrize("conf,message", [
    ("apigw_rate_limit_zone a rate=1r/s;\n"
     "server { listen 127.0.0.1:{port}; location / { apigw_rate_limit b; } }",
     'unknown rate limit policy "b"'),
    ("apigw_rate_limit b;\napigw_rate_limit_zone a rate=1r/s;",
     'unknown rate limit policy "b"'),
    ("apigw_rate_limit_zone a rate=10r/x;", 'invalid "rate=10r/x"'),
    ("apigw_rate_limit_zone a burst=5;", 'must have a "rate=" parameter'),
    ("apigw_rate_limit_zone a rate=1r/s fail=maybe;", 'invalid "fail=maybe"'),
    ("apigw_rate_limit_zone a rate=1r/s;\napigw_rate_limit_zone a "
     "rate=2r/s;", 'duplicate rate limit policy "a"'),
    ("apigw_rate_limit_zone a/b rate=1r/s;", "invalid rate limit policy name"),
    ("apigw_rate_limit_zone a rate=1r/d burst=1000000000;",
     "burst is too large"),
    ("apigw_rate_limit_zone a rate=1r/s;\nserver { listen 127.0.0.1:{port};"
     " location / { apigw_rate_limit a a; } }", "applied twice"),
    ("apigw_rate_limit_zone a rate=1r/s;\napigw_rate_limit_headers loud;",
     "invalid value \"loud\""),
])
def test_config_errors(nginx_factory, redis, conf, message):
    n = nginx_factory("apigw on;\napigw_redis {redis_addr};\n" + conf,
                      start=False, redis=redis)
    n.allow_log(r"\[emerg\]")
    rc, out = n.test_config()
    assert rc != 0, out
    assert message in out, out


def test_config_needs_redis(nginx_factory):
    n = nginx_factory("apigw_rate_limit_zone a rate=1r/s;\n"
                      "server { listen 127.0.0.1:{port}; "
                      "location / { apigw_rate_limit a; } }", start=False)
    n.allow_log(r"\[emerg\]")
    rc, out = n.test_config()
    assert rc != 0
    assert 'needs "apigw_redis"' in out, out


def test_forward_reference_is_fine(nginx_factory, redis, upstream):
    gw = nginx_factory(
        "apigw on;\napigw_redis {redis_addr};\n"
        "server { listen 127.0.0.1:{port}; location / {\n"
        "  apigw_rate_limit later;\n"
        "  proxy_pass http://127.0.0.1:{upstream_port}/; } }\n"
        "apigw_rate_limit_zone later rate=1r/m key=$http_x_client;",
        redis=redis, upstream=upstream)
    assert [get(gw, "/ok", "fw").status_code for _ in range(2)] == [200, 429]


# -- the example -----------------------------------------------------------

def test_example_config(nginx_factory, redis, upstream):
    gw = nginx_factory.example("ratelimit", redis=redis, upstream=upstream)

    put_key(redis, KEY_BIG, "acme")
    auth = {"Authorization": "Bearer " + KEY_BIG}
    r = requests.get(gw.url("/api/ok"), timeout=5, headers=auth)
    assert r.status_code == 200
    # 19/20 per second is closer to empty than 9999/10000 per day
    assert r.headers["X-RateLimit-Limit"] == "20"
    assert r.headers["X-RateLimit-Remaining"] == "19"
    assert requests.get(gw.url("/health"), timeout=5).status_code == 200

    # Redis down: the public location fails closed, /api/ (its key in
    # the auth cache) fails open
    redis.stop()
    r = requests.get(gw.url("/public/ok"), timeout=5)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert json.loads(r.content)["error"]["code"] == \
        "rate_limiter_unavailable"
    r = requests.get(gw.url("/api/ok"), timeout=5, headers=auth)
    assert r.status_code == 200
    assert "X-RateLimit-Limit" not in r.headers

    redis.start()
    wait_for(lambda: requests.get(gw.url("/public/ok"), timeout=5).headers
             .get("X-RateLimit-Remaining") == "4", 10,
             what="the public bucket after Redis came back")
    got = [requests.get(gw.url("/public/ok"), timeout=5)
           for _ in range(6)]
    assert [r.status_code for r in got] == [200] * 4 + [429] * 2
    r = got[-1]
    assert r.headers["RateLimit-Policy"] == '"client_minute";q=5;w=60'
    assert r.headers["RateLimit"].startswith('"client_minute";r=0;t=')
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert int(r.headers["Retry-After"]) in (11, 12)
    assert json.loads(r.content)["error"]["details"] == {
        "retry_after": int(r.headers["Retry-After"]), "limit": 5,
        "policy": "client_minute"}


def test_example_skeleton_without_module(nginx_factory, upstream):
    """The example minus the module is a plain working nginx.conf (every
    apigw directive sits on one line, as tools/exampleconf.py expects)."""
    gw = nginx_factory.example("ratelimit", module=False, upstream=upstream)
    for _ in range(7):
        r = requests.get(gw.url("/public/ok"), timeout=5)
        assert r.status_code == 200
        assert "X-RateLimit-Limit" not in r.headers
