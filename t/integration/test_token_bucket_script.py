"""The token-bucket Lua script against a real, private redis-server: exact
counts, refill, refusals that consume nothing, TTL = time until full, the
Redis clock, hash tags (checked on a real one-node Redis Cluster), the
NOSCRIPT fallback, several nodes on one bucket and several policies checked
all or nothing.  The script and the keys come from the C core through
build/tools/apigw_script, so what runs here is what the module sends.

Every decision is also checked against an exact model (fractions) driven
by the Redis time the script returns, so timing jitter cannot make a test
flaky, and any rounding drift in the script would show."""

import hashlib
import math
import os
import subprocess
import time
import uuid
from fractions import Fraction

import pytest
import redis as redis_py

import harness
from harness import ROOT, RedisServer

TOOL = os.path.join(ROOT, "build", "tools", "apigw_script")
REDIS_BIN = "/usr/bin/redis-server"
MAX_UNITS = 2 ** 53


def tool(*args):
    if not os.access(TOOL, os.X_OK):
        subprocess.run(["make", "-s", "-C", ROOT, TOOL], check=True,
                       timeout=300)
    return subprocess.run([TOOL] + list(args), check=True,
                          stdout=subprocess.PIPE, timeout=10).stdout


@pytest.fixture(scope="module")
def source():
    src = tool("token_bucket")
    assert b"redis.call('TIME')" in src
    return src


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("tb-redis")).start()
    yield r
    r.stop()


@pytest.fixture
def r(server):
    c = server.client(decode=False)
    yield c
    c.close()


@pytest.fixture
def bucket(r, source):
    """bucket(key, cap, tokens, period_ms, cost=1, client=r) -> result,
    through EVALSHA (the sha loaded once per test)."""
    sha = r.script_load(source)

    def call(key, cap, tokens, period_ms, cost=1, client=None):
        res = (client or r).evalsha(sha, 1, key, cap, tokens, period_ms, cost)
        assert len(res) == 6
        return res
    call.sha = sha
    return call


def tb_key(policy, key, prefix="apigw:"):
    return tool("--tb-key", prefix, policy, key)


def fresh(policy="p"):
    """a bucket key of the real format no other test uses"""
    return tb_key(policy, "t-" + uuid.uuid4().hex)


def redis_time_ms(c):
    s, us = c.time()
    return s * 1000 + us // 1000


class Model:
    """The bucket as exact arithmetic: what the script must answer."""

    def __init__(self, cap, tokens, period_ms):
        self.cap = cap
        self.rate = Fraction(tokens, period_ms)     # tokens per ms
        self.level = Fraction(cap)
        self.t = None

    def refill(self, now):
        if self.t is not None and now > self.t:
            self.level = min(Fraction(self.cap),
                             self.level + (now - self.t) * self.rate)
        self.t = now if self.t is None else max(self.t, now)

    def result(self, ok, now, cost):
        retry = 0 if ok else math.ceil((cost - self.level) / self.rate)
        return [1 if ok else 0, math.floor(self.level), self.cap,
                math.ceil((self.cap - self.level) / self.rate), retry, now]

    def step(self, now, cost=1):
        self.refill(now)
        ok = self.level >= cost
        if ok:
            self.level -= cost
        return self.result(ok, now, cost)


def run(bucket, model, key, args, n):
    out = []
    for _ in range(n):
        res = bucket(key, *args)
        assert res == model.step(res[5]), (len(out), res)
        out.append(res)
    return out


# -- counts ------------------------------------------------------------------

def test_burst_allows_exactly_capacity(bucket):
    n = 20
    key = fresh()
    res = [bucket(key, n, n, 3600000) for _ in range(3 * n)]
    allowed = [x[0] for x in res]
    assert allowed == [1] * n + [0] * (2 * n)
    assert [x[1] for x in res[:n]] == list(range(n - 1, -1, -1))
    assert all(x[1] == 0 and x[2] == n for x in res[n:])
    # 20r/h: one token every 180 s
    assert all(179000 < x[4] <= 180000 for x in res[n:])


def test_decisions_match_exact_model(bucket):
    """10r/s, 3r/s (1/3 token per 111.1 ms) and 7r/m (7/60000 token per
    ms): every field of every reply equals the exact model's."""
    for cap, tokens, period in ((5, 10, 1000), (4, 3, 1000), (2, 7, 60000)):
        key = fresh()
        m = Model(cap, tokens, period)
        args = (cap, tokens, period)
        run(bucket, m, key, args, cap + 2)
        for pause in (0.05, 0.13, 0.37, 0.2):
            time.sleep(pause)
            run(bucket, m, key, args, 3)


def test_fractions_are_stored_exactly(r, bucket):
    """3r/s counts in thousandths of a token, 3 per ms: the stored level is
    the exact model level, never a rounded float."""
    key = fresh()
    m = Model(4, 3, 1000)
    for pause in (0, 0, 0.011, 0.023, 0.051, 0.2):
        time.sleep(pause)
        res = bucket(key, 4, 3, 1000)
        assert res == m.step(res[5])
        if res[0]:
            h = r.hgetall(key)
            assert int(h[b"p"]) == 1000
            assert int(h[b"t"]) == res[5]
            assert Fraction(int(h[b"u"]), 1000) == m.level


def test_refill_after_period(r, bucket):
    key = fresh()
    res = [bucket(key, 10, 10, 1000) for _ in range(12)]
    assert [x[0] for x in res] == [1] * 10 + [0, 0]
    last = res[9]
    assert last[1] == 0 and 900 <= last[3] <= 1000

    # full again once reset_ms has passed: the key is gone, 10 more pass
    harness.wait_for(lambda: r.exists(key) == 0, timeout=3, interval=0.02,
                     what="the refilled bucket key to expire")
    res = [bucket(key, 10, 10, 1000) for _ in range(11)]
    assert [x[0] for x in res] == [1] * 10 + [0]


def test_refused_calls_do_not_consume(r, bucket):
    key = fresh()
    res = [bucket(key, 3, 5, 1000) for _ in range(3)]
    assert [x[0] for x in res] == [1, 1, 1]
    state = r.hgetall(key)

    refused = [bucket(key, 3, 5, 1000) for _ in range(200)]
    assert not any(x[0] for x in refused)
    assert r.hgetall(key) == state      # not even written

    # the token comes exactly when the refusals said, as if they never were
    m = Model(3, 5, 1000)
    for x in res + refused:
        assert x == m.step(x[5])
    wait = refused[-1][4]
    assert 0 < wait <= 200
    time.sleep(wait / 1000.0 + 0.01)
    x = bucket(key, 3, 5, 1000)
    assert x[0] == 1 and x == m.step(x[5])


# -- memory ------------------------------------------------------------------

def test_ttl_is_time_until_full(r, bucket):
    key = fresh()
    x = bucket(key, 5, 1, 3600000)
    assert x[:5] == [1, 4, 5, 3600000, 0]
    assert 3600000 - 1000 < r.pttl(key) <= 3600000

    for _ in range(4):
        x = bucket(key, 5, 1, 3600000)
    assert x[1] == 0
    assert 5 * 3600000 - 1000 < x[3] <= 5 * 3600000
    assert x[3] - 1000 < r.pttl(key) <= x[3]

    # a refusal leaves the TTL alone: it is still the time until full
    before = r.pttl(key)
    y = bucket(key, 5, 1, 3600000)
    assert y[0] == 0
    assert before - 1000 < r.pttl(key) <= before
    assert y[3] - 1000 < r.pttl(key) <= y[3]


def test_full_bucket_is_an_absent_key(r, bucket):
    key = fresh()
    assert r.exists(key) == 0
    x = bucket(key, 2, 10, 1000)
    assert x[:5] == [1, 1, 2, 100, 0]
    ttl = r.pttl(key)
    assert 0 < ttl <= 100 or (ttl == -2 and redis_time_ms(r) >= x[5] + 100)
    harness.wait_for(lambda: r.exists(key) == 0, timeout=2, interval=0.01,
                     what="the full bucket's key to expire")
    # absent reads as full
    assert bucket(key, 2, 10, 1000)[:4] == [1, 1, 2, 100]


# -- clock -------------------------------------------------------------------

def test_clock_is_redis_time(r, bucket, source):
    key = fresh()
    before = redis_time_ms(r)
    x = bucket(key, 5, 10, 1000)
    after = redis_time_ms(r)
    assert before <= x[5] <= after
    assert int(r.hget(key, "t")) == x[5]

    # no client time can be passed: ARGV is exactly 4 per key
    with pytest.raises(redis_py.ResponseError, match="4 arguments per key"):
        r.evalsha(bucket.sha, 1, key, 5, 10, 1000, 1, before)
    with pytest.raises(redis_py.ResponseError, match="4 arguments per key"):
        r.evalsha(bucket.sha, 1, key, 5, 10, 1000)
    assert b"replicate_commands" in source


def test_refill_uses_stored_redis_time(r, bucket):
    """A bucket emptied 10 s ago by Redis's clock is full now, whatever
    the caller's clock says (there is no caller clock)."""
    key = fresh()
    now = redis_time_ms(r)
    r.hset(key, mapping={"u": 0, "t": now - 10000, "p": 100})
    x = bucket(key, 5, 10, 1000)
    assert x[:2] == [1, 4]


def test_timestamp_ahead_of_clock_is_rebased(r, bucket):
    """After a failover to a Redis whose clock is behind, stored times are
    in the future: the bucket must keep refilling, not freeze."""
    key = fresh()
    now = redis_time_ms(r)
    r.hset(key, mapping={"u": 0, "t": now + 3600000, "p": 100})
    x = bucket(key, 5, 10, 1000)
    assert x[0] == 0 and x[4] == 100
    assert int(r.hget(key, "t")) <= redis_time_ms(r)
    assert 0 < r.pttl(key) <= 500
    time.sleep(0.12)
    assert bucket(key, 5, 10, 1000)[0] == 1


def test_rate_change_keeps_whole_tokens(r, bucket):
    key = fresh()
    for _ in range(4):
        x = bucket(key, 10, 10, 1000)
    assert x[1] == 6
    # the same policy reloaded as 10r/m: 6 whole tokens carried over
    x = bucket(key, 10, 10, 60000)
    assert x[:3] == [1, 5, 10]
    assert int(r.hget(key, "p")) == 6000


def test_capacity_lowered_clamps(r, bucket):
    key = fresh()
    bucket(key, 100, 100, 3600000)
    x = bucket(key, 3, 100, 3600000)
    assert x[:3] == [1, 2, 3]


def test_bad_arguments(r, bucket):
    key = fresh()
    for args in ((0, 10, 1000, 1), (5, 0, 1000, 1), (5, 10, 0, 1),
                 (5, 10, 1000, 0), (5, 10, 1000, 6), (5, 10, 1000, -1),
                 ("1.5", 10, 1000, 1), ("abc", 10, 1000, 1),
                 (5, "1e3", 1000, "x")):
        with pytest.raises(redis_py.ResponseError, match="bad arguments"):
            r.evalsha(bucket.sha, 1, key, *args)
    # capacity * period beyond 2^53 units
    with pytest.raises(redis_py.ResponseError, match="too large"):
        r.evalsha(bucket.sha, 1, key, 104249992, 1, 86400000, 1)
    assert bucket(key, 104249991, 1, 86400000)[:2] == [1, 104249990]
    with pytest.raises(redis_py.ResponseError, match="4 arguments"):
        r.evalsha(bucket.sha, 0)
    assert r.exists(key) == 1


# -- deployment --------------------------------------------------------------

def test_noscript_fallback_to_eval(r, bucket, source):
    key = fresh()
    assert bucket.sha == hashlib.sha1(source).hexdigest()
    assert bucket(key, 3, 1, 3600000)[:2] == [1, 2]

    r.script_flush()
    with pytest.raises(redis_py.exceptions.NoScriptError):
        r.evalsha(bucket.sha, 1, key, 3, 1, 3600000, 1)

    # what the module does on NOSCRIPT: EVAL, which also caches the script
    x = r.eval(source, 1, key, 3, 1, 3600000, 1)
    assert x[:3] == [1, 1, 3]
    assert r.script_exists(bucket.sha) == [True]
    assert bucket(key, 3, 1, 3600000)[:2] == [1, 0]
    assert bucket(key, 3, 1, 3600000)[0] == 0


def test_two_nodes_share_one_bucket(server, bucket):
    """Two nginx nodes are two connections: alternating, they drain one
    exact bucket together."""
    key = fresh()
    a = server.client(decode=False)
    b = server.client(decode=False)
    try:
        res = [bucket(key, 10, 1, 3600000, client=(a, b)[i % 2])
               for i in range(30)]
    finally:
        a.close()
        b.close()
    assert sum(x[0] for x in res) == 10
    assert [x[1] for x in res[:10]] == list(range(9, -1, -1))
    m = Model(10, 1, 3600000)
    for x in res:
        assert x == m.step(x[5])


def test_several_policies_all_or_nothing(r, bucket):
    """10r/s-style and daily-style policies of one key in one call: a
    request the small bucket refuses takes nothing from the big one."""
    tenant = "t-" + uuid.uuid4().hex
    big, small = tb_key("per_day", tenant), tb_key("per_min", tenant)
    args = (100, 100, 86400000, 1, 3, 3, 60000, 1)
    res = [r.evalsha(bucket.sha, 2, big, small, *args) for _ in range(10)]
    assert all(len(x) == 12 for x in res)

    allowed = [x[0] and x[6] for x in res]
    assert allowed == [1, 1, 1] + [0] * 7
    assert [x[1] for x in res] == [99, 98, 97] + [97] * 7
    assert [x[7] for x in res] == [2, 1, 0] + [0] * 7
    for x in res[3:]:
        assert x[0] == 1 and x[4] == 0          # big could pay, did not
        assert x[6] == 0 and x[10] > 0          # small refused
        assert x[5] == x[11]                    # one clock
    assert bucket(big, 100, 100, 86400000)[1] == 96


# -- Redis Cluster -----------------------------------------------------------

def test_key_format_and_hash_tag():
    assert tb_key("per_sec", "acme") == b"apigw:{rl:acme}:per_sec"
    assert tb_key("per_sec", "}x{") == b"apigw:{rl:}x{}:per_sec"
    long_key = "k" * 129
    assert tb_key("d", long_key) == (
        b"apigw:{rlh:" + hashlib.sha256(long_key.encode()).hexdigest()
        .encode() + b"}:d")


@pytest.fixture
def cluster(tmp_path):
    """A one-node Redis Cluster owning every slot: it refuses (CROSSSLOT)
    any script whose keys are in different slots, as a real cluster
    would."""
    d = str(tmp_path)
    # a cluster node also listens on port + 10000 (its bus): stay below that
    for _ in range(100):
        port = harness.free_port()
        if port + 10000 <= 65535 and not harness.port_open(port + 10000):
            break
    else:
        pytest.skip("no port pair free for a cluster node")
    log = os.path.join(d, "redis.log")
    proc = subprocess.Popen(
        [REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", d,
         "--daemonize", "no", "--logfile", log, "--protected-mode", "no",
         "--cluster-enabled", "yes", "--cluster-config-file",
         os.path.join(d, "nodes.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    c = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                       socket_connect_timeout=1)
    try:
        harness.wait_for(c.ping, timeout=10, what="cluster redis PING")
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        harness.wait_for(
            lambda: b"cluster_state:ok" in c.execute_command("CLUSTER",
                                                             "INFO"),
            timeout=10, what="cluster_state:ok")
        yield c
    finally:
        c.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_cluster_one_slot_per_key_value(cluster, source):
    keys = [tb_key(p, "acme") for p in ("per_sec", "per_min", "per_day")]
    slots = {cluster.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
    assert len(slots) == 1
    assert slots == {cluster.execute_command("CLUSTER", "KEYSLOT", "rl:acme")}

    sha = cluster.script_load(source)
    x = cluster.evalsha(sha, 3, *keys, 10, 10, 1000, 1, 100, 100, 60000, 1,
                        1000, 1000, 86400000, 1)
    assert [x[0], x[6], x[12]] == [1, 1, 1]

    # a key starting with '}' would empty a bare {key} tag; ours holds
    odd = [tb_key(p, "}odd") for p in ("per_sec", "per_day")]
    x = cluster.evalsha(sha, 2, *odd, 10, 10, 1000, 1, 5, 5, 60000, 1)
    assert [x[0], x[6]] == [1, 1]

    # the same call over keys of two slots is what the tag prevents
    with pytest.raises(redis_py.ResponseError, match="CROSSSLOT|slot"):
        cluster.evalsha(sha, 2, b"apigw:rl:per_sec:acme",
                        b"apigw:rl:per_day:acme",
                        10, 10, 1000, 1, 5, 5, 60000, 1)
