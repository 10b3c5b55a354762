"""Rate-limit checks coalesced per event-loop pass
(src/ngx_http_apigw_ratelimit_batch.c): the checks of one key value that a
worker reads in one pass go to Redis as ONE token-bucket script call,
decided in join order, each all or nothing; batches never mix hash tags;
a batch holds at most 64 checks and 256 buckets; a request freed while its
check waits (before or after the send) is forgotten and the others still
get their answers; a failed call fails every member by its own policy.

"One pass" is made deterministic by stopping the worker (SIGSTOP) while
the requests are sent on connections it already has, so that after SIGCONT
one epoll_wait returns them all (see one_pass()); HTTP/2 streams sent in
one write are even read in one handler call, in stream order, which makes
the join order and a stream reset (RST_STREAM) before the send exact.
Outcome counts are exact: refill is negligible (1r/h) or the test reads
the Redis clock's consequences from the headers; script calls are counted
in Redis (INFO commandstats, MONITOR) and in apigw_metrics, which must
agree."""

import contextlib
import math
import os
import re
import signal
import socket
import struct
import time

import pytest
import requests

from harness import _response_end, free_port, parse_raw_response, wait_for
from test_ratelimit import (bucket_key, envelope_429, hash_tag, monitoring,
                            script_calls, script_calls_seen, tb_call)

WIDE = 8  # policies of /wide/: 256 / 8 = 32 checks fill a call's items

CONF = """
apigw on;
apigw_redis {redis_addr} timeout={timeout} connect_timeout=200ms;

apigw_rate_limit_zone ten   rate=10r/m burst=10 key=$http_x_client;
apigw_rate_limit_zone hold  rate=1r/h burst=30 key=$http_x_client;
apigw_rate_limit_zone many  rate=1r/h burst=70 key=$http_x_client;
apigw_rate_limit_zone small rate=1r/h burst=5 key=$http_x_client;
apigw_rate_limit_zone large rate=1r/h burst=8 key=$http_x_client;
apigw_rate_limit_zone shut  rate=1r/h burst=50 key=$http_x_client fail=closed;
apigw_rate_limit_zone lax   rate=1r/h burst=60 key=$http_x_client;
%(wide_zones)s

server {
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{h2_port} http2;

    location /ten/ {
        apigw_rate_limit ten;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /hold/ {
        apigw_rate_limit hold;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /many/ {
        apigw_rate_limit many;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /pair/ {
        apigw_rate_limit small large;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /shut/ {
        apigw_rate_limit shut;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /lax/ {
        apigw_rate_limit lax;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /wide/ {
        apigw_rate_limit %(wide)s;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /free/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /metrics {
        apigw off;
        apigw_metrics;
    }
}
""" % {
    "wide_zones": "\n".join(
        "apigw_rate_limit_zone w%d rate=1r/h burst=%d key=$http_x_client;"
        % (i, 100 + i) for i in range(1, WIDE + 1)),
    "wide": " ".join("w%d" % i for i in range(1, WIDE + 1))}

LEGACY = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
IO_TIMEOUT = 10.0


def start(nginx_factory, redis, upstream, timeout="5s"):
    return nginx_factory(CONF, redis=redis, upstream=upstream,
                         vars={"timeout": timeout, "h2_port": free_port()})


# -- one pass of the worker ------------------------------------------------

def worker_pid(gw):
    """the worker; under valgrind (master_process off) nginx itself"""
    pids = gw.worker_pids()
    assert len(pids) <= 1, pids
    return pids[0] if pids else gw.pid


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def one_pass(gw):
    """The worker is stopped (SIGSTOP) inside the block and continued
    (SIGCONT) after it: what the block sends on connections the worker
    already has waits in their socket buffers, and one epoll_wait then
    returns it all, read in one event-loop pass."""
    pid = worker_pid(gw)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _state(pid) in ("T", "t"), 5,
                 what="the worker to stop")
        yield
        # loopback delivers within send(); a moment more costs nothing
        time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)


# -- keep-alive HTTP/1.1 connections ---------------------------------------

class Conn:
    """one keep-alive HTTP/1.1 connection to nginx"""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port),
                                          timeout=IO_TIMEOUT)
        self.rid = None

    def send(self, path, client=None, rid=None):
        self.rid = rid
        head = "GET %s HTTP/1.1\r\nHost: x\r\n" % path
        if client is not None:
            head += "X-Client: %s\r\n" % client
        if rid is not None:
            head += "X-Request-Id: %s\r\n" % rid
        self.s.sendall((head + "\r\n").encode())

    def response(self):
        """(status, {lower name: [values]}, body) of the next response"""
        buf = b""
        deadline = time.monotonic() + IO_TIMEOUT
        for _ in range(10000):
            end = _response_end(buf)
            if end is not None and end != -1:
                assert end == len(buf), "more than one response"
                return parse_raw_response(buf)
            left = deadline - time.monotonic()
            assert left > 0, "no complete response in time: %r" % buf[:300]
            self.s.settimeout(left)
            chunk = self.s.recv(65536)
            assert chunk, "closed by nginx after %r" % buf[:300]
            buf += chunk
        raise AssertionError("response too long")

    def get(self, path, client=None, rid=None):
        self.send(path, client, rid)
        return self.response()

    def close(self, reset=False):
        if reset:  # RST instead of FIN
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                              struct.pack("ii", 1, 0))
        self.s.close()


@contextlib.contextmanager
def connections(gw, n):
    """n keep-alive connections, each used once (a request without rate
    limit) so the worker holds them all before a test stops it"""
    conns = []
    try:
        for _ in range(n):
            c = Conn(gw.port)
            conns.append(c)
            assert c.get("/free/ok")[0] == 200
        yield conns
    finally:
        for c in conns:
            c.close()


def send_in_one_pass(gw, conns, path, client, rid_prefix):
    """one request on each connection, all read in one pass; -> the time
    just before they were sent"""
    with one_pass(gw):
        t0 = time.time()
        for i, c in enumerate(conns):
            c.send(path, client if isinstance(client, str) else client[i],
                   "%s%d" % (rid_prefix, i))
    return t0


def prime(gw):
    """one limited request of its own key value: the script is loaded
    (no NOSCRIPT retry later) and the Redis connection is up"""
    r = requests.get(gw.url("/ten/ok"), headers={"X-Client": "prime"},
                     timeout=5)
    assert r.status_code == 200, r.content
    assert r.headers["X-RateLimit-Remaining"] == "9"


# -- what moved ------------------------------------------------------------

def counters(gw):
    """the rate-limit counters of apigw_metrics"""
    text = requests.get(gw.url("/metrics"), timeout=5).text
    out = {}
    for name, key in (("apigw_ratelimit_script_calls_total", "calls"),
                      ("apigw_ratelimit_script_checks_total", "checks")):
        m = re.search(r"^%s (\S+)$" % name, text, re.M)
        assert m, name
        out[key] = int(float(m.group(1)))
    for m in re.finditer(r'^apigw_ratelimit_requests_total\{outcome="(\w+)"\}'
                         r' (\S+)$', text, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def level(redis, client, policy):
    """whole tokens left in a bucket (None: no bucket)"""
    st = redis.client().hgetall(bucket_key(client, policy))
    return int(st["u"]) // int(st["p"]) if st else None


def one(hdrs, name):
    v = hdrs.get(name, [])
    assert len(v) == 1, (name, hdrs)
    return v[0]


def rl_hdrs(hdrs):
    return {k: v for k, v in hdrs.items()
            if k in LEGACY + ("ratelimit", "ratelimit-policy", "retry-after")}


def access_lines(gw, rids):
    """{rid: [status, ...]} of the access log's lines for these ids"""
    out = {rid: [] for rid in rids}
    for ln in gw.access_log().splitlines():
        m = re.search(r'" (\d{3}) \d+ rid=(\S+) ', ln)
        if m and m.group(2) in out:
            out[m.group(2)].append(int(m.group(1)))
    return out


UNAVAILABLE = (
    '{"error":{"type":"api_error","code":"rate_limiter_unavailable",'
    '"message":"The rate limiter is unavailable. Retry after 1 seconds.",'
    '"details":{"retry_after":1},"correlation_id":"%s"},"request_id":"%s"}')


# -- coalescing ------------------------------------------------------------

def test_one_pass_is_one_call_decided_in_order(nginx_factory, redis,
                                               upstream):
    """30 checks of one key value in one pass, 10 tokens: far fewer script
    calls than checks (one), exactly 10 allowed with the remaining counts
    9..0 once each, 20 refused by Redis (none locally: no reply was in
    before the batch went), headers and envelopes exact."""
    gw = start(nginx_factory, redis, upstream)
    n = 30
    with connections(gw, n) as conns:
        prime(gw)
        before, evals = counters(gw), script_calls(redis)
        t0 = send_in_one_pass(gw, conns, "/ten/ok", "one", "a")
        got = [c.response() for c in conns]
        t1 = time.time()
        after = counters(gw)
        calls = script_calls(redis) - evals

    ok = [h for s, h, _ in got if s == 200]
    refused = [(c.rid, h, b) for c, (s, h, b) in zip(conns, got) if s == 429]
    assert (len(ok), len(refused)) == (10, 20), [s for s, _, _ in got]

    # Redis decided them one after the other: each remaining count once
    assert sorted(int(one(h, "x-ratelimit-remaining")) for h in ok) == \
        list(range(10))
    for h in ok:
        assert set(rl_hdrs(h)) == set(LEGACY), h
        assert one(h, "x-ratelimit-limit") == "10"
        # full again after (10 - remaining) tokens at 6 s each
        full = 6 * (10 - int(one(h, "x-ratelimit-remaining")))
        assert math.floor(t0) + full - 1 <= \
            int(one(h, "x-ratelimit-reset")) <= math.ceil(t1) + full, h
    for rid, h, body in refused:
        assert set(rl_hdrs(h)) == set(LEGACY) | {"retry-after"}, h
        assert one(h, "x-ratelimit-limit") == "10"
        assert one(h, "x-ratelimit-remaining") == "0"
        assert one(h, "retry-after") == "6"
        assert abs(int(one(h, "x-ratelimit-reset")) - (t0 + 60)) <= 2
        assert body == envelope_429(rid, 6, 10, "ten")
    assert level(redis, "one", "ten") == 0

    # coalesced: one call in practice, far fewer than the checks anyway;
    # the counters agree with Redis and count every check once
    assert 1 <= calls < n // 2, calls
    assert moved(before, after) == {"calls": calls, "checks": n,
                                    "allowed": 10, "denied": 20}


def key_value(bucket):
    """the rate-limit key value of a bucket key: the hash tag ends at the
    LAST '}' (a policy name holds none, a key value may)"""
    return bucket[bucket.index("{rl:") + 4:bucket.rindex("}")]


@pytest.mark.parametrize("pair", [("alpha", "beta"), ("br}a", "br}b")],
                         ids=["plain", "braces"])
def test_two_key_values_never_share_a_call(nginx_factory, redis, upstream,
                                           pair):
    """Two key values interleaved in one pass: every call carries the
    buckets of one key value (so of one Redis Cluster hash tag) only, one
    call per key value, and each key value's count is exact (10 of 15).
    With braces both values have the same Cluster hash tag ("rl:br"), yet
    they stay two buckets, counted apart."""
    gw = start(nginx_factory, redis, upstream)
    clients = list(pair) * 15
    with connections(gw, len(clients)) as conns:
        prime(gw)
        before = counters(gw)
        with monitoring(redis) as lines:
            send_in_one_pass(gw, conns, "/ten/ok", clients, "b")
            got = [c.response()[0] for c in conns]
        after = counters(gw)

    for name in pair:
        mine = [s for s, c in zip(got, clients) if c == name]
        assert sorted(mine) == [200] * 10 + [429] * 5, (name, mine)
        assert level(redis, name, "ten") == 0

    calls = [tb_call(c) for c in script_calls_seen(lines)]
    per_value = {}
    for checks in calls:
        keys = [k for check in checks for k, _ in check]
        assert len({hash_tag(k) for k in keys}) == 1, checks
        values = {key_value(k) for k in keys}
        assert len(values) == 1, checks
        value = values.pop()
        per_value[value] = per_value.get(value, 0) + len(checks)
        assert checks == [[(bucket_key(value, "ten"),
                            (10, 10, 60000, 1))]] * len(checks)
    assert per_value == {pair[0]: 15, pair[1]: 15}, per_value
    assert 2 <= len(calls) < len(clients) // 2, len(calls)
    assert moved(before, after) == {"calls": len(calls), "checks": 30,
                                    "allowed": 20, "denied": 10}


def test_checks_of_a_batch_are_each_all_or_nothing(nginx_factory, redis,
                                                    upstream):
    """10 checks of two buckets each (burst 5 and 8) in one call: the first
    5 take a token of both, the other 5 are refused by the small one and
    take nothing from the large one (8 - 5 = 3 left)."""
    gw = start(nginx_factory, redis, upstream)
    with connections(gw, 10) as conns:
        prime(gw)
        with monitoring(redis) as lines:
            send_in_one_pass(gw, conns, "/pair/ok", "pair", "p")
            got = [c.response() for c in conns]

    assert sorted(s for s, _, _ in got) == [200] * 5 + [429] * 5
    assert level(redis, "pair", "small") == 0
    assert level(redis, "pair", "large") == 3
    for c, (s, h, body) in zip(conns, got):
        if s == 429:
            # the next token of 1r/h is exactly an hour away
            assert one(h, "retry-after") == "3600"
            assert one(h, "x-ratelimit-limit") == "5"
            assert body == envelope_429(c.rid, 3600, 5, "small")
    pair = [(bucket_key("pair", "small"), (5, 1, 3600000, 1)),
            (bucket_key("pair", "large"), (8, 1, 3600000, 1))]
    checks = [ch for c in script_calls_seen(lines) for ch in tb_call(c)]
    assert checks == [pair] * 10


# -- limits of a call ------------------------------------------------------

def test_more_than_64_checks_are_split(nginx_factory, redis, upstream):
    """100 checks in one pass: a full batch (64) goes at once and the rest
    follow in the next call; all 100 answered, exactly 70 allowed (burst
    70), the remaining counts 69..0 once each."""
    gw = start(nginx_factory, redis, upstream)
    n = 100
    with connections(gw, n) as conns:
        prime(gw)
        before = counters(gw)
        with monitoring(redis) as lines:
            send_in_one_pass(gw, conns, "/many/ok", "many", "m")
            got = [c.response() for c in conns]
        after = counters(gw)

    ok = [h for s, h, _ in got if s == 200]
    assert sorted(s for s, _, _ in got) == [200] * 70 + [429] * 30
    assert sorted(int(one(h, "x-ratelimit-remaining")) for h in ok) == \
        list(range(70))
    for c, (s, h, body) in zip(conns, got):
        if s == 429:
            assert one(h, "retry-after") == "3600"
            assert body == envelope_429(c.rid, 3600, 70, "many")
    assert level(redis, "many", "many") == 0

    sizes = [len(tb_call(c)) for c in script_calls_seen(lines)]
    assert sum(sizes) == n and max(sizes) == 64, sizes
    assert 2 <= len(sizes) < n // 2, sizes
    assert sizes[0] == 64, sizes  # the first batch went out full
    assert moved(before, after) == {"calls": len(sizes), "checks": n,
                                    "allowed": 70, "denied": 30}


def test_more_than_256_buckets_are_split(nginx_factory, redis, upstream):
    """Checks of 8 buckets each: 32 of them fill a call's 256 items, so
    40 in one pass take two calls (32 + 8); every bucket is counted
    exactly (40 taken of 100 + i)."""
    gw = start(nginx_factory, redis, upstream)
    n = 40
    with connections(gw, n) as conns:
        prime(gw)
        with monitoring(redis) as lines:
            send_in_one_pass(gw, conns, "/wide/ok", "wide", "w")
            got = [c.response()[0] for c in conns]

    assert got == [200] * n
    for i in range(1, WIDE + 1):
        assert level(redis, "wide", "w%d" % i) == 100 + i - n
    calls = [tb_call(c) for c in script_calls_seen(lines)]
    sizes = [len(checks) for checks in calls]
    items = [sum(len(ch) for ch in checks) for checks in calls]
    assert sum(sizes) == n and max(items) == 256, (sizes, items)
    assert sizes[0] == 256 // WIDE, sizes
    assert 2 <= len(calls) < n // 2, sizes
    for checks in calls:
        for ch in checks:
            assert ch == [(bucket_key("wide", "w%d" % i),
                           (100 + i, 1, 3600000, 1))
                          for i in range(1, WIDE + 1)]


# -- clients that leave ----------------------------------------------------

def leave_mid_call(gw, redis, conns, path, key, tag, before):
    """Pauses Redis (the caller resumes it, also on failure), sends one
    request per connection in one pass, waits until their checks left in
    a call, then every other client leaves (FIN and RST alternately).
    Returns (gone, stay)."""
    gone, stay = conns[::2], conns[1::2]
    redis.pause()
    send_in_one_pass(gw, conns, path, key, tag)
    # the batch is sent: every check is in the call
    wait_for(lambda: moved(before, counters(gw)).get("checks")
             == len(conns), 10, what="the batch to be sent")
    for k, c in enumerate(gone):
        c.close(reset=k % 2 == 1)
    return gone, stay


def test_client_gone_while_call_in_flight(nginx_factory, redis, upstream):
    """20 checks in one call while Redis is stopped (SIGSTOP); 10 of the
    clients leave (FIN or RST) and their requests end (499) before the
    reply: the other 10 get their answers, the departed checks were still
    decided by Redis (30 - 20 = 10 tokens left), nothing crashes, and the
    next request sees exactly 9 left."""
    gw = start(nginx_factory, redis, upstream, timeout="30s")
    n = 20
    with connections(gw, n) as conns:
        prime(gw)
        before = counters(gw)
        try:
            gone, stay = leave_mid_call(gw, redis, conns, "/hold/ok",
                                        "flight", "f", before)
            rids = [c.rid for c in gone]
            wait_for(lambda: access_lines(gw, rids) == {
                rid: [499] for rid in rids}, 10,
                what="the departed clients' requests to end with 499")
        finally:
            redis.resume()
        got = [c.response() for c in stay]
        assert [s for s, _, _ in got] == [200] * len(stay)
        left = sorted(int(one(h, "x-ratelimit-remaining"))
                      for _, h, _ in got)
        assert len(set(left)) == len(stay) and set(left) <= set(range(10, 30))
        assert level(redis, "flight", "hold") == 10

        s, h, _ = stay[0].get("/hold/ok", "flight", "after")
        assert s == 200
        assert one(h, "x-ratelimit-remaining") == "9"
    # one call; the departed requests have no outcome of their own
    assert moved(before, counters(gw)) == {"calls": 2, "checks": n + 1,
                                           "allowed": len(stay) + 1}


def test_client_gone_then_call_times_out(nginx_factory, redis, upstream):
    """Half of a batch's clients leave while its call is in flight, then
    the call times out: the others fail by their policy (fail=closed:
    503), each once, and nothing runs for the departed ones."""
    gw = start(nginx_factory, redis, upstream, timeout="1s")
    n = 10
    with connections(gw, n) as conns:
        prime(gw)
        before = counters(gw)
        try:
            gone, stay = leave_mid_call(gw, redis, conns, "/shut/ok",
                                        "late", "t", before)
            got = [c.response() for c in stay]
        finally:
            redis.resume()
    for c, (s, h, body) in zip(stay, got):
        assert s == 503
        assert body == (UNAVAILABLE % (c.rid, c.rid)).encode()
    assert moved(before, counters(gw)) == {"calls": 1, "checks": n,
                                           "fail_closed": len(stay)}
    rids = [c.rid for c in gone]
    wait_for(lambda: access_lines(gw, rids) == {rid: [499] for rid in rids},
             5, what="the departed requests' log lines")


def test_client_gone_while_worker_stopped(nginx_factory, redis, upstream):
    """Requests sent and half of their clients gone (FIN or RST) before the
    worker reads them: the other 10 are answered; whether a departed
    request's check was sent depends on when the worker notices, but the
    checks counted are exactly the tokens Redis took, and the next request
    sees exactly one fewer."""
    gw = start(nginx_factory, redis, upstream)
    n = 20
    with connections(gw, n) as conns:
        prime(gw)
        before = counters(gw)
        gone, stay = conns[::2], conns[1::2]
        with one_pass(gw):
            for i, c in enumerate(conns):
                c.send("/hold/ok", "stopped", "s%d" % i)
            for k, c in enumerate(gone):
                c.close(reset=k % 2 == 1)
        got = [c.response() for c in stay]
        assert [s for s, _, _ in got] == [200] * len(stay)
        left = [int(one(h, "x-ratelimit-remaining")) for _, h, _ in got]
        assert len(set(left)) == len(stay), left

        sent = moved(before, counters(gw))["checks"]
        assert len(stay) <= sent <= n, sent
        assert level(redis, "stopped", "hold") == 30 - sent
        assert set(left) <= set(range(30 - sent, 30)), (left, sent)
        s, h, _ = stay[0].get("/hold/ok", "stopped", "after")
        assert s == 200
        assert one(h, "x-ratelimit-remaining") == str(30 - sent - 1)
    # the departed requests each end (or never started: an RST may come
    # before the worker read the request), once at most
    rids = [c.rid for c in gone]
    wait_for(lambda: all(len(v) <= 1 and set(v) <= {200, 499}
                         for v in access_lines(gw, rids).values()), 5,
             what="the departed requests' log lines")


# -- HTTP/2: streams reset before the batch goes ---------------------------

def _frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def _hpack_literal(name, value):
    """literal header field without indexing, new name (RFC 7541 6.2.2)"""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def h2_get(sid, path, client, rid):
    path = path.encode()
    block = (b"\x82\x86"                                # GET, http
             + b"\x04" + bytes([len(path)]) + path      # :path
             + b"\x01\x01x"                             # :authority x
             + _hpack_literal("x-client", client)
             + _hpack_literal("x-request-id", rid))
    return _frame(1, 0x5, sid, block)                   # END_STREAM|HEADERS


def h2_cancel(sid):
    return _frame(3, 0, sid, struct.pack(">I", 8))      # RST_STREAM CANCEL


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0)


def h2_statuses(s, sids):
    """{stream: :status} once every stream in sids has ended"""
    status, ended, buf = {}, set(), b""
    deadline = time.monotonic() + IO_TIMEOUT
    while not set(sids) <= ended:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3],
                                                               "big"):
            ln = int.from_bytes(buf[:3], "big")
            ftype, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7fffffff
            payload, buf = buf[9:9 + ln], buf[9 + ln:]
            assert ftype != 7, "GOAWAY %r" % payload          # GOAWAY
            assert ftype != 3, "stream %d reset by nginx" % sid
            if ftype == 1:                                    # HEADERS
                # nginx puts :status first: indexed (static table 8..14)
                # or a literal with name index 8 and 3 plain digits
                b0 = payload[0]
                if 0x88 <= b0 <= 0x8e:
                    status[sid] = [200, 204, 206, 304, 400, 404,
                                   500][b0 - 0x88]
                else:
                    assert payload[0] in (0x08, 0x48) and payload[1] == 3, \
                        payload[:8]
                    status[sid] = int(payload[2:5])
            if ftype in (0, 1) and flags & 0x1:               # END_STREAM
                ended.add(sid)
        if set(sids) <= ended:
            break
        left = deadline - time.monotonic()
        assert left > 0, "streams not ended: %s" % (set(sids) - ended)
        s.settimeout(left)
        chunk = s.recv(65536)
        assert chunk, "nginx closed the HTTP/2 connection"
        buf += chunk
    return status


@contextlib.contextmanager
def h2_connection(gw):
    s = socket.create_connection(("127.0.0.1", gw.vars["h2_port"]),
                                 timeout=IO_TIMEOUT)
    try:
        # one stream first, so the worker holds the connection
        s.sendall(PREFACE + h2_get(1, "/free/ok", "-", "h2warm"))
        assert h2_statuses(s, [1]) == {1: 200}
        yield s
    finally:
        s.close()


def test_checks_decided_in_join_order(nginx_factory, redis, upstream):
    """15 streams in one read join one batch in stream order, and Redis
    decides them in that order: exactly the first 10 get the 10 tokens."""
    gw = start(nginx_factory, redis, upstream)
    prime(gw)
    before = counters(gw)
    sids = list(range(3, 33, 2))
    with h2_connection(gw) as s:
        with one_pass(gw):
            s.sendall(b"".join(h2_get(sid, "/ten/ok", "order", "o%d" % sid)
                               for sid in sids))
        got = h2_statuses(s, sids)
    assert [got[sid] for sid in sids] == [200] * 10 + [429] * 5, got
    assert moved(before, counters(gw)) == {"calls": 1, "checks": 15,
                                           "allowed": 10, "denied": 5}


def test_streams_reset_before_the_send_are_left_out(nginx_factory, redis,
                                                    upstream):
    """20 streams opened and 10 of them reset (RST_STREAM) in one read: the
    reset requests leave the open batch before it is sent, so the one call
    carries exactly the 10 others; they are all answered; Redis took
    exactly 10 tokens."""
    gw = start(nginx_factory, redis, upstream)
    prime(gw)
    before, evals = counters(gw), script_calls(redis)
    sids = list(range(3, 43, 2))
    reset, kept = sids[::2], sids[1::2]
    with h2_connection(gw) as s:
        data = b"".join(h2_get(sid, "/hold/ok", "h2", "h%d" % sid)
                        for sid in sids)
        data += b"".join(h2_cancel(sid) for sid in reset)
        with one_pass(gw):
            s.sendall(data)
        assert h2_statuses(s, kept) == {sid: 200 for sid in kept}
        wait_for(lambda: access_lines(gw, ["h%d" % i for i in reset]) == {
            "h%d" % i: [499] for i in reset}, 5,
            what="the reset streams' log lines")
        after = counters(gw)
    assert level(redis, "h2", "hold") == 30 - len(kept)
    assert script_calls(redis) - evals == 1
    assert moved(before, after) == {"calls": 1, "checks": len(kept),
                                    "allowed": len(kept)}


def test_streams_reset_in_a_sent_and_in_an_open_batch(nginx_factory, redis,
                                                      upstream):
    """70 streams in one read: the 65th sends the full first batch at once
    and opens the next; the first stream is reset after that (its check is
    in flight: still decided), the 66th while its batch is open (left
    out).  So the calls carry 64 + 5 checks, Redis takes 69 tokens, and
    the 68 streams left are all answered."""
    gw = start(nginx_factory, redis, upstream)
    prime(gw)
    before = counters(gw)
    sids = list(range(3, 3 + 2 * 70, 2))
    reset = [sids[0], sids[65]]
    kept = [sid for sid in sids if sid not in reset]
    with monitoring(redis) as lines:
        with h2_connection(gw) as s:
            with one_pass(gw):
                s.sendall(b"".join(h2_get(sid, "/many/ok", "split", "x%d"
                                          % sid) for sid in sids)
                          + b"".join(h2_cancel(sid) for sid in reset))
            assert h2_statuses(s, kept) == {sid: 200 for sid in kept}
    assert [len(tb_call(c)) for c in script_calls_seen(lines)] == [64, 5]
    assert level(redis, "split", "many") == 70 - 69
    assert moved(before, counters(gw)) == {"calls": 2, "checks": 69,
                                           "allowed": 68}


def test_batch_of_reset_streams_sends_nothing(nginx_factory, redis,
                                              upstream):
    """Every stream of a batch reset before it goes: no call at all, no
    bucket, and the next request is counted from a full bucket."""
    gw = start(nginx_factory, redis, upstream)
    prime(gw)
    before, evals = counters(gw), script_calls(redis)
    sids = list(range(3, 13, 2))
    with h2_connection(gw) as s:
        with one_pass(gw):
            s.sendall(b"".join(h2_get(sid, "/hold/ok", "void", "v%d" % sid)
                               for sid in sids)
                      + b"".join(h2_cancel(sid) for sid in sids))
        wait_for(lambda: access_lines(gw, ["v%d" % i for i in sids]) == {
            "v%d" % i: [499] for i in sids}, 5,
            what="the reset streams' log lines")
        # the connection still works
        s.sendall(h2_get(13, "/hold/ok", "void", "v13"))
        assert h2_statuses(s, [13]) == {13: 200}
    assert level(redis, "void", "hold") == 29
    assert script_calls(redis) - evals == 1
    assert moved(before, counters(gw)) == {"calls": 1, "checks": 1,
                                           "allowed": 1}


# -- Redis unavailable -----------------------------------------------------

@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_failed_call_fails_every_member(nginx_factory, redis, upstream,
                                        fault):
    """One batch of one key value, 10 checks of a fail=closed policy and
    10 of a fail=open one, while Redis is down (stopped) or does not answer
    (paused: the call times out): each member fails by its own policy,
    503 rate_limiter_unavailable with Retry-After 1, or let through with
    no rate-limit headers; then service comes back."""
    gw = start(nginx_factory, redis, upstream, timeout="300ms")
    n = 20
    with connections(gw, n) as conns:
        prime(gw)
        before = counters(gw)
        paths = ["/shut/ok", "/lax/ok"] * (n // 2)
        if fault == "stopped":
            redis.stop()
        else:
            redis.pause()
        try:
            with one_pass(gw):
                for i, c in enumerate(conns):
                    c.send(paths[i], "down", "d%d" % i)
            got = [c.response() for c in conns]
        finally:
            if fault == "stopped":
                redis.start()
            else:
                redis.resume()
        after = counters(gw)

        for c, path, (s, h, body) in zip(conns, paths, got):
            if path == "/shut/ok":
                assert s == 503, (c.rid, s, body)
                assert rl_hdrs(h) == {"retry-after": ["1"]}, h
                assert body == (UNAVAILABLE % (c.rid, c.rid)).encode()
                assert one(h, "content-type") == "application/json"
            else:
                assert s == 200, (c.rid, s, body)
                assert rl_hdrs(h) == {}, h
        d = moved(before, after)
        assert d.pop("checks") == n, d
        assert 1 <= d.pop("calls") < n // 2, d
        assert d == {"fail_closed": n // 2, "fail_open": n // 2}

        # Redis back: the worker reconnects, the buckets count again
        def back():
            r = requests.get(gw.url("/shut/ok"), timeout=5,
                             headers={"X-Client": "back"})
            return r.status_code == 200 and \
                r.headers.get("X-RateLimit-Remaining") == "49"
        wait_for(back, 10, interval=0.2, what="rate limits after Redis came "
                 "back")
    log = gw.error_log()
    assert "apigw rate limit: Redis unavailable" in log
    assert "fails closed: 503" in log
