"""The token-bucket Lua script against a real, private redis-server: exact
counts, refill, refusals that consume nothing, TTL = time until full, the
Redis clock, hash tags (checked on a real one-node Redis Cluster), the
NOSCRIPT fallback, several nodes on one bucket, several policies checked
all or nothing, and batches: the checks of several requests in one call,
decided in order as if each were its own call at the same Redis TIME.
The script, the keys and the batch arguments come from the C core through
build/tools/apigw_script, so what runs here is what the module sends.

The call (see src/core/apigw_token_bucket.h):

    EVALSHA sha m  key_1 .. key_m
                   s  (capacity tokens period_ms cost) x s
                   c  then per check: n  (key set) x n     1-based
    reply: now_ms, then per item: remaining reset_ms retry_after_ms

Every decision is also checked against an exact model (fractions) driven
by the Redis time the script returns, so timing jitter cannot make a test
flaky, and any rounding drift in the script would show."""

import binascii
import hashlib
import math
import os
import random
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
# the script's error replies start "ERR apigw token bucket: "; redis-py
# takes the "ERR " off (a reply of another code would keep all of it)
ERR = "^apigw token bucket"


def tool(*args, check=True):
    if not os.access(TOOL, os.X_OK):
        subprocess.run(["make", "-s", "-C", ROOT, TOOL], check=True,
                       timeout=300)
    return subprocess.run([TOOL] + list(args), check=check,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=10)


@pytest.fixture(scope="module")
def source():
    src = tool("token_bucket").stdout
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


# -- the call ----------------------------------------------------------------

def batch_args(checks):
    """checks: [[(key, capacity, tokens, period_ms, cost), ...], ...] ->
    (keys, args) as apigw_tb_batch_argv() builds them: each key and each
    parameter set sent once, in first-seen order, named by 1-based
    index."""
    keys, sets, body = [], [], []
    for check in checks:
        body.append(len(check))
        for key, *params in check:
            params = tuple(params)
            if key not in keys:
                keys.append(key)
            if params not in sets:
                sets.append(params)
            body += [keys.index(key) + 1, sets.index(params) + 1]
    args = [len(sets)] + [x for s in sets for x in s] + [len(checks)] + body
    return keys, args


def tb_batch_argv(checks):
    argv = ["--tb-batch"]
    for i, check in enumerate(checks):
        if i:
            argv.append("--")
        for key, *params in check:
            argv.append(":".join([binascii.hexlify(key).decode()]
                                 + [str(x) for x in params]))
    return argv


def c_batch_args(checks):
    """the same, built by the C core (apigw_tb_batch_add/_argv)"""
    lines = tool(*tb_batch_argv(checks)).stdout.decode().split()
    m = int(lines[0])
    args = [binascii.unhexlify(x) for x in lines[1:]]
    return args[:m], [int(x) for x in args[m:]]


def decode(reply, checks):
    """The reply, as the module reads it: [now_ms, then 3 per item], into
    per check, per item [allowed, remaining, limit, reset_ms,
    retry_after_ms, now_ms] (apigw_tb_decode_item: allowed is retry == 0,
    limit the capacity sent)."""
    n = sum(len(c) for c in checks)
    assert len(reply) == 1 + 3 * n, reply
    assert all(isinstance(x, int) for x in reply)
    now = reply[0]
    out, o = [], 1
    for check in checks:
        res = []
        for item in check:
            rem, reset, retry = reply[o:o + 3]
            o += 3
            assert 0 <= rem <= item[1]
            assert 0 <= reset <= MAX_UNITS and 0 <= retry <= MAX_UNITS
            res.append([1 if retry == 0 else 0, rem, item[1], reset, retry,
                        now])
        out.append(res)
    return out


class Script:
    """bucket(key, cap, tokens, period_ms, cost=1, client=None) -> one
    check of one bucket, decoded; bucket.batch(checks) -> every check's
    results; bucket.raw(keys, args) -> the reply as it is.  Through
    EVALSHA, the sha loaded once per test."""

    def __init__(self, client, sha):
        self.r = client
        self.sha = sha

    def raw(self, keys, args, client=None):
        return (client or self.r).evalsha(self.sha, len(keys), *keys, *args)

    def batch(self, checks, client=None):
        keys, args = batch_args(checks)
        return decode(self.raw(keys, args, client), checks)

    def __call__(self, key, cap, tokens, period_ms, cost=1, client=None):
        return self.batch([[(key, cap, tokens, period_ms, cost)]],
                          client)[0][0]


@pytest.fixture
def bucket(r, source):
    return Script(r, r.script_load(source))


def one(cap, tokens, period_ms, cost=1):
    """the arguments after the key of a call of one check of one bucket"""
    return [1, cap, tokens, period_ms, cost, 1, 1, 1, 1]


def tb_key(policy, key, prefix="apigw:"):
    return tool("--tb-key", prefix, policy, key).stdout


def fresh(policy="p", value=None):
    """a bucket key of the real format no other test uses"""
    return tb_key(policy, value or "t-" + uuid.uuid4().hex)


def redis_time_ms(c):
    s, us = c.time()
    return s * 1000 + us // 1000


def snapshot(c, keys):
    """what a call could change: each key's value and absolute expiry"""
    return [(c.dump(k), c.execute_command("PEXPIRETIME", k)) for k in keys]


# -- the model ---------------------------------------------------------------

class World:
    """Every bucket as exact arithmetic: what the script must answer.

    State per key: None (absent, i.e. full) or (level in tokens, t, unit)
    where unit = period_ms / gcd(period_ms, tokens) of the parameters that
    wrote it.  Met with parameters of another unit, a bucket keeps its
    whole tokens; a level over the capacity is clamped; a time ahead of
    now counts as now.  A check is all or nothing over its buckets; a
    refusal writes only repaired state; a full bucket is deleted."""

    def __init__(self):
        self.state = {}

    def check(self, now, items):
        seen = []
        for key, cap, tokens, period, cost in items:
            rate = Fraction(tokens, period)
            unit = period // math.gcd(period, tokens)
            st = self.state.get(key)
            dirty = False
            if st is None:
                level = Fraction(cap)
            else:
                level, t, p = st
                if p != unit:
                    level = Fraction(math.floor(level))
                    dirty = True
                if level > cap:
                    level = Fraction(cap)
                    dirty = True
                if t > now:
                    t = now
                    dirty = True
                level = min(Fraction(cap), level + (now - t) * rate)
            seen.append((key, cap, rate, unit, cost, level, dirty))
        ok = all(level >= cost for _, _, _, _, cost, level, _ in seen)
        out = []
        for key, cap, rate, unit, cost, level, dirty in seen:
            retry = 0 if level >= cost else math.ceil((cost - level) / rate)
            if ok:
                level -= cost
            if ok or dirty:
                self.state[key] = (None if level >= cap
                                   else (level, now, unit))
            out.append([1 if retry == 0 else 0, math.floor(level), cap,
                        math.ceil((cap - level) / rate), retry, now])
        return out

    def batch(self, now, checks):
        return [self.check(now, c) for c in checks]

    def level(self, key, cap):
        st = self.state.get(key)
        return Fraction(cap) if st is None else st[0]


def world_from(c, keys):
    """a World holding these keys' state as it is in Redis now"""
    w = World()
    for k in keys:
        h = c.hgetall(k)
        if h:
            p = int(h[b"p"])
            w.state[k] = (Fraction(int(h[b"u"]), p), int(h[b"t"]), p)
    return w


class Model:
    """One bucket of the World with fixed parameters."""

    def __init__(self, cap, tokens, period_ms):
        self.world = World()
        self.args = (cap, tokens, period_ms)

    def step(self, now, cost=1):
        return self.world.check(now, [(b"k",) + self.args + (cost,)])[0]

    @property
    def level(self):
        return self.world.level(b"k", self.args[0])


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
    state = snapshot(r, [key])

    refused = [bucket(key, 3, 5, 1000) for _ in range(200)]
    assert not any(x[0] for x in refused)
    assert snapshot(r, [key]) == state      # not even written

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
    # the key expires at the TIME of the decision + the time until full
    expiry = r.execute_command("PEXPIRETIME", key)
    assert expiry == x[5] + x[3]

    # a refusal leaves the TTL alone: it is still the time until full,
    # and the instant of full it reports is the one written
    y = bucket(key, 5, 1, 3600000)
    assert y[0] == 0
    assert r.execute_command("PEXPIRETIME", key) == expiry
    assert y[5] + y[3] == x[5] + x[3]


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

    # no client time can be passed: every argument has its place, one more
    # is refused, and so is one less
    with pytest.raises(redis_py.ResponseError, match="arguments left over"):
        bucket.raw([key], one(5, 10, 1000) + [before])
    with pytest.raises(redis_py.ResponseError, match=ERR):
        bucket.raw([key], one(5, 10, 1000)[:-1])
    assert int(r.hget(key, "t")) == x[5]
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
    assert int(r.hget(key, "t")) == x[5] <= redis_time_ms(r)
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
                 (5, "1e3", 1000, "x"), (5, 10, 1000, ""),
                 (MAX_UNITS + 2, 1, 1, 1), (5, "nan", 1000, 1),
                 (5, "inf", 1000, 1), (5, 10, "-inf", 1)):
        with pytest.raises(redis_py.ResponseError,
                           match=ERR + ": bad arguments for set 1"):
            bucket.raw([key], one(*args))
    # capacity * period beyond 2^53 units
    with pytest.raises(redis_py.ResponseError, match="too large"):
        bucket.raw([key], one(104249992, 1, 86400000))
    assert r.exists(key) == 0
    assert bucket(key, 104249991, 1, 86400000)[:2] == [1, 104249990]
    state = snapshot(r, [key])
    # no key, no sets, nothing at all
    for keys, args in (([], []), ([], one(5, 10, 1000)), ([key], []),
                       ([key], [0]), ([key], ["x"]),
                       ([key], [6, 5, 10, 1000, 1])):
        with pytest.raises(redis_py.ResponseError, match=ERR + ": want"):
            bucket.raw(keys, args)
    assert r.exists(key) == 1
    assert snapshot(r, [key]) == state


# -- deployment --------------------------------------------------------------

def test_noscript_fallback_to_eval(r, bucket, source):
    key = fresh()
    assert bucket.sha == hashlib.sha1(source).hexdigest()
    assert bucket(key, 3, 1, 3600000)[:2] == [1, 2]

    r.script_flush()
    with pytest.raises(redis_py.exceptions.NoScriptError):
        bucket.raw([key], one(3, 1, 3600000))

    # what the module does on NOSCRIPT: EVAL, which also caches the script
    x = decode(r.eval(source, 1, key, *one(3, 1, 3600000)),
               [[(key, 3, 1, 3600000, 1)]])[0][0]
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
    """daily-style and minute-style policies of one key in one check: a
    request the small bucket refuses takes nothing from the big one."""
    tenant = "t-" + uuid.uuid4().hex
    big, small = tb_key("per_day", tenant), tb_key("per_min", tenant)
    check = [(big, 100, 100, 86400000, 1), (small, 3, 3, 60000, 1)]
    res = [bucket.batch([check])[0] for _ in range(10)]

    allowed = [x[0][0] and x[1][0] for x in res]
    assert allowed == [1, 1, 1] + [0] * 7
    assert [x[0][1] for x in res] == [99, 98, 97] + [97] * 7
    assert [x[1][1] for x in res] == [2, 1, 0] + [0] * 7
    for x in res[3:]:
        assert x[0][0] == 1 and x[0][4] == 0    # big could pay, did not
        assert x[1][0] == 0 and x[1][4] > 0     # small refused
        assert x[0][5] == x[1][5]               # one clock
    w = World()
    for x in res:
        assert x == w.check(x[0][5], check)
    assert bucket(big, 100, 100, 86400000)[1] == 96


# -- batches -----------------------------------------------------------------

def test_batch_checks_decided_in_order(r, bucket):
    """15 requests of one bucket of 10 in one call: the first 10 pass,
    remaining counting down, the last 5 are refused with the wait for the
    next token, all at one TIME; the bucket is written once."""
    key = fresh()
    checks = [[(key, 10, 10, 3600000, 1)]] * 15
    res = [c[0] for c in bucket.batch(checks)]
    now = res[0][5]
    assert all(x[5] == now for x in res)
    assert [x[0] for x in res] == [1] * 10 + [0] * 5
    assert [x[1] for x in res] == list(range(9, -1, -1)) + [0] * 5
    # 10r/h: a token every 360 s, counted from this call's TIME
    assert [x[3] for x in res] == ([360000 * k for k in range(1, 11)]
                                   + [3600000] * 5)
    assert [x[4] for x in res] == [0] * 10 + [360000] * 5
    assert [[x] for x in res] == World().batch(now, checks)

    # the state after the last check; the TTL: its time until full
    assert r.hgetall(key) == {b"u": b"0", b"t": str(now).encode(),
                              b"p": b"360000"}
    assert 3600000 - 1000 < r.pttl(key) <= 3600000
    x = bucket(key, 10, 10, 3600000)
    assert x[0] == 0 and x[1] == 0


def test_batch_fractions_and_costs(r, bucket):
    """7r/m (7/60000 token per ms) with a level left by an earlier call,
    checks of several costs: every field equals the model's."""
    key = fresh()
    w = World()
    for _ in range(3):
        x = bucket(key, 5, 7, 60000, 1)
        assert [x] == w.check(x[5], [(key, 5, 7, 60000, 1)])
    time.sleep(0.05)
    checks = [[(key, 5, 7, 60000, c)] for c in (1, 2, 3, 1, 1, 5, 2, 1)]
    res = bucket.batch(checks)
    assert res == w.batch(res[0][0][5], checks)
    assert [c[0][0] for c in res][:2] == [1, 0]
    h = r.hgetall(key)
    level, t, unit = w.state[key]
    assert (int(h[b"u"]), int(h[b"t"]), int(h[b"p"])) == (
        level * unit, t, unit)


def same_ms(r, bucket, make, tries=50):
    """make() -> [(keys, args, checks)] on fresh keys; runs those calls in
    one MULTI/EXEC until every reply has one now_ms (Redis runs them back
    to back: time cannot move between them); returns the calls and their
    decoded replies."""
    for _ in range(tries):
        calls = make()
        p = r.pipeline(transaction=True)
        for keys, args, _ in calls:
            p.evalsha(bucket.sha, len(keys), *keys, *args)
        replies = p.execute()
        if len({x[0] for x in replies}) == 1:
            return calls, [decode(x, c)
                           for x, (_, _, c) in zip(replies, calls)]
    pytest.fail("%d transactions, none within one ms" % tries)


def rename(checks, names):
    return [[(names[k],) + tuple(rest) for k, *rest in c] for c in checks]


SETS = ((10, 10, 1000), (3, 3, 1000), (10, 10, 60000), (5, 7, 60000),
        (2, 1, 3600000), (100, 100, 86400000))


def compare_with_sequential(r, bucket, checks, seed=None):
    """checks over names: one batched call on one set of fresh keys and
    the same checks as one call each on another, at one Redis TIME; seed:
    {name: (u, t offset from TIME, p)} written to both first.  Returns
    the batch's results."""
    names = sorted({item[0] for c in checks for item in c})
    seed = seed or {}

    def make():
        ta, tb = "t-" + uuid.uuid4().hex, "t-" + uuid.uuid4().hex
        a = {n: tb_key(n, ta) for n in names}
        b = {n: tb_key(n, tb) for n in names}
        now = redis_time_ms(r)
        make.state = {}
        for n, (u, dt, p) in seed.items():
            make.state[a[n]] = (Fraction(u, p), now + dt, p)
            for k in (a[n], b[n]):
                r.hset(k, mapping={"u": u, "t": now + dt, "p": p})
                r.pexpire(k, 3600000)
        make.keys = a, b
        batched = rename(checks, a)
        calls = [batch_args(batched) + (batched,)]
        for c in checks:
            single = rename([c], b)
            calls.append(batch_args(single) + (single,))
        return calls

    calls, res = same_ms(r, bucket, make)
    a, b = make.keys
    now = res[0][0][0][5]

    # the batch answers what the calls one by one answer ...
    assert res[0] == [x[0] for x in res[1:]]

    # ... which is the model's, from the state seeded
    w = World()
    w.state = dict(make.state)
    assert res[0] == w.batch(now, calls[0][2])

    # both leave the model's state: the same hashes, the same keys deleted
    for n in names:
        st = w.state.get(a[n])
        assert r.exists(a[n]) == r.exists(b[n]) == (st is not None), n
        assert r.hgetall(a[n]) == r.hgetall(b[n])
        if st is not None:
            level, t, unit = st
            assert r.hgetall(a[n]) == {
                b"u": str(level * unit).encode(), b"t": str(t).encode(),
                b"p": str(unit).encode()}, n
    return res[0]


def test_batch_equals_sequential_calls(r, bucket):
    """Per-key overrides: one bucket met by checks of other parameters
    (burst lowered, another rate, another cost) in one call answers and
    ends exactly as the same checks as separate calls at that TIME."""
    day = (100, 100, 86400000)
    checks = [
        [("a", 10, 10, 1000, 1), ("b",) + day + (1,)],
        [("a", 3, 3, 1000, 1), ("b",) + day + (1,)],       # burst lowered
        [("a", 10, 10, 60000, 2), ("b", 50, 50, 86400000, 5)],  # rate
        [("a", 10, 10, 1000, 1)],
        [("b",) + day + (100,)],                            # refused
        [("a", 3, 3, 1000, 1), ("b",) + day + (1,)],
        [("a", 3, 3, 1000, 1), ("b",) + day + (1,)],
        [("b",) + day + (1,)],
    ]
    res = compare_with_sequential(r, bucket, checks)
    assert [int(all(x[0] for x in c)) for c in res] == [1, 1, 1, 0, 0, 0,
                                                        0, 1]
    # a: 9, clamped to 3 -> 2, whole tokens at 10r/m -> 0; b: 99, 98,
    # clamped to 50 -> 45; then a has no whole token left
    assert [x[1] for x in res[0] + res[1] + res[2]] == [9, 99, 2, 98, 0, 45]
    assert [x[1] for x in res[3] + res[4]] == [0, 45]
    assert res[7][0][1] == 44

    # from state left by earlier calls: fractions, another unit, a time
    # ahead of TIME
    seed = {"a": (1234, -150, 100), "b": (5, 1000, 864000)}
    compare_with_sequential(r, bucket, checks, seed)
    seed = {"a": (7, -10, 6000), "b": (99 * 864000, 0, 864000)}
    compare_with_sequential(r, bucket, checks, seed)


def test_batch_equals_sequential_random(r, bucket):
    """Random batches over 3 buckets and the parameter sets of SETS, from
    random states: the batch is the calls one by one."""
    rnd = random.Random(20240611)
    for _ in range(12):
        checks = []
        for _ in range(rnd.randint(1, 25)):
            names = rnd.sample("abc", rnd.randint(1, 3))
            check = []
            for n in names:
                cap, tokens, period = rnd.choice(SETS)
                check.append((n, cap, tokens, period,
                              rnd.randint(1, min(cap, 3))))
            checks.append(check)
        seed = {}
        for n in rnd.sample("abc", rnd.randint(0, 3)):
            cap, tokens, period = rnd.choice(SETS)
            unit = period // math.gcd(period, tokens)
            seed[n] = (rnd.randint(0, cap * unit), rnd.randint(-2000, 50),
                       unit)
        compare_with_sequential(r, bucket, checks, seed)


def test_batch_refusal_consumes_nothing_of_the_other(r, bucket):
    """A check of 2 buckets refused by one takes nothing of the other, and
    the checks after it in the same call see exactly that."""
    tenant = "t-" + uuid.uuid4().hex
    a, b = tb_key("per_day", tenant), tb_key("per_hour", tenant)
    A, B = (a, 100, 100, 86400000, 1), (b, 1, 1, 3600000, 1)
    checks = [[A, B], [A, B], [A], [A, B], [B], [A]]
    res = bucket.batch(checks)
    now = res[0][0][5]
    assert res == World().batch(now, checks)

    assert [int(all(x[0] for x in c)) for c in res] == [1, 0, 1, 0, 0, 1]
    assert [x[1] for x in res[0]] == [99, 0]
    # refused by b: a could pay (allowed, retry 0) and still holds 99
    assert res[1][0][:2] == [1, 99] and res[1][0][4] == 0
    assert res[1][1][:2] == [0, 0] and res[1][1][4] == 3600000
    assert res[2][0][1] == 98
    assert res[3][0][1] == 98
    assert res[5][0][1] == 97

    assert r.hgetall(a) == {b"u": str(97 * 864000).encode(),
                            b"t": str(now).encode(), b"p": b"864000"}
    assert r.hgetall(b) == {b"u": b"0", b"t": str(now).encode(),
                            b"p": b"3600000"}


def test_batch_bad_argument_anywhere_writes_nothing(r, bucket):
    """A call with one bad set, index, count or argument anywhere is
    refused whole, even when its first checks would pass: no key is
    written, created or deleted."""
    tenant = "t-" + uuid.uuid4().hex
    k1, k2, k3 = (tb_key(p, tenant) for p in ("p1", "p2", "p3"))
    bucket(k1, 10, 10, 3600000)
    bucket(k3, 5, 5, 60000)
    keys = [k1, k2, k3]
    s1, s2 = [10, 10, 3600000, 1], [5, 5, 60000, 1]
    #       s   set 1  set 2  c  n  k s  n  k s  n  k s  k s
    good = [2] + s1 + s2 + [3, 1, 1, 1, 1, 2, 2, 2, 1, 1, 3, 2]
    assert len(good) == 21

    def bad(i, v):
        x = list(good)
        x[i] = v
        return x

    calls = [
        bad(0, 0), bad(0, 3), bad(0, "x"),          # set count
        bad(8, 6), bad(5, 0), bad(6, "1.5"),        # set 2
        bad(9, 0), bad(9, "x"),                     # check count
        bad(9, 4),                                  # more checks than sent
        bad(9, 2),                                  # fewer: left over
        bad(16, 0), bad(16, 4), bad(16, "x"),       # item count of check 3
        bad(13, 3),                                 # swallows check 3
        bad(19, 0), bad(19, 4), bad(19, "x"),       # key index
        bad(20, 0), bad(20, 3), bad(20, "2.5"),     # set index
        bad(20, -1),
        good[:9] + [4] + good[10:] + [0],           # a check of 0 items
        good[:-1],                                  # one short
        good + [1],                                 # one too many
        good + [1, 1, 1],                           # a check not counted
    ]
    before = snapshot(r, keys)
    assert before[1] == (None, -2)
    for args in calls:
        with pytest.raises(redis_py.ResponseError) as e:
            bucket.raw(keys, args)
        assert str(e.value).startswith(ERR[1:]), (args, str(e.value))
        assert snapshot(r, keys) == before, args

    # the good call writes all three
    res = decode(bucket.raw(keys, good),
                 [[(k1,) + tuple(s1)], [(k2,) + tuple(s2)],
                  [(k1,) + tuple(s1), (k3,) + tuple(s2)]])
    assert [x[1] for c in res for x in c] == [8, 4, 7, 3]
    after = snapshot(r, keys)
    assert all(x != y for x, y in zip(before, after))


def test_batch_reply_length(bucket):
    """1 + 3 integers per item, whatever the shape of the checks."""
    tenant = "t-" + uuid.uuid4().hex
    k = [tb_key("p%d" % i, tenant) for i in range(4)]
    for shape in ([1], [4], [1] * 7, [2, 1, 3, 4, 1], [4] * 6):
        checks = [[(k[i], 1000, 1000, 60000, 1) for i in range(n)]
                  for n in shape]
        keys, args = batch_args(checks)
        reply = bucket.raw(keys, args)
        assert len(reply) == 1 + 3 * sum(shape)
        decode(reply, checks)


def test_batch_of_refusals_writes_nothing(r, bucket):
    """Checks that are all refused leave state and TTL exactly as they
    were, and never create the key of a full bucket they met."""
    tenant = "t-" + uuid.uuid4().hex
    e, f = tb_key("empty", tenant), tb_key("full", tenant)
    E, F = (e, 2, 1, 3600000, 1), (f, 5, 5, 1000, 1)
    assert bucket(*E)[0] == 1 and bucket(*E)[0] == 1
    before = snapshot(r, [e, f])
    assert before[1] == (None, -2)
    time.sleep(0.002)

    res = bucket.batch([[E]] * 10 + [[F, E]] * 10 + [[E, F]])
    assert not any(all(x[0] for x in c) for c in res)
    assert all(c[0][0] == 1 for c in res[10:20])    # f could have paid
    assert res[20][1][0] == 1
    assert snapshot(r, [e, f]) == before

    # the exception: state another rate must read is repaired, once
    x = bucket.batch([[(e, 2, 2, 3600000, 1)]] * 3)
    assert [c[0][0] for c in x] == [0, 0, 0]
    assert r.hget(e, "p") == b"1800000"
    assert r.hget(e, "t") == str(x[0][0][5]).encode()


def test_batch_full_bucket_is_deleted(r, bucket):
    """A bucket full after the call is deleted, even one an earlier check
    of the same call wrote: here a burst lowered under its level and a
    refusal by another bucket."""
    tenant = "t-" + uuid.uuid4().hex
    a, b = tb_key("a", tenant), tb_key("b", tenant)
    assert bucket(a, 10, 10, 3600000)[1] == 9
    bucket(b, 1, 1, 3600000)
    assert r.exists(a) == r.exists(b) == 1
    w = world_from(r, [a, b])

    checks = [[(a, 10, 10, 3600000, 1)],
              [(a, 3, 10, 3600000, 1), (b, 1, 1, 3600000, 1)]]
    res = bucket.batch(checks)
    assert res[0][0][:2] == [1, 8]
    assert res[1][0][:2] == [1, 3] and res[1][1][0] == 0
    assert res[1][0][3] == 0                        # full: reset 0
    assert r.exists(a) == 0
    assert r.exists(b) == 1

    # the same through the model, from a's and b's state before
    assert res == w.batch(res[0][0][5], checks)
    assert w.state[a] is None


def test_batch_args_built_by_the_core(r, bucket):
    """apigw_tb_batch_add/_argv build the arguments the tests build, and
    the script takes them, up to the batch bounds (64 checks, 256
    items)."""
    tenant = "t-" + uuid.uuid4().hex
    k = [b"apigw:{rl:%s}:p%d" % (tenant.encode(), i) for i in range(256)]
    assert k[7] == tb_key("p7", tenant)
    odd = tb_key("p", "a}{b")
    cases = [
        [[(k[0], 10, 10, 1000, 1)]],
        [[(k[0], 10, 10, 1000, 1), (k[1], 100, 100, 86400000, 1)],
         [(k[1], 100, 100, 86400000, 1), (k[2], 5, 5, 60000, 2)],
         [(k[0], 3, 3, 1000, 1)], [(odd, 7, 7, 60000, 1)]],
        [[(k[i], 10, 10, 1000, 1)] for i in range(64)],
    ]
    for c in cases:
        assert c_batch_args(c) == batch_args(c)

    # the largest call there is
    big = [[(k[4 * i + j], 1000000000, 1000000000,
             (9007199 - 4 * i - j) * 1000000000, 1)
            for j in range(4)] for i in range(64)]
    keys, args = c_batch_args(big)
    assert (keys, args) == batch_args(big)
    assert len(keys) + len(args) == 256 + 1 + 4 * 256 + 1 + 64 + 2 * 256
    reply = bucket.raw(keys, args)
    assert len(reply) == 1 + 3 * 256
    res = decode(reply, big)
    assert res == World().batch(reply[0], big)
    assert all(x[:2] == [1, 999999999] for c in res for x in c)

    # one more check or item is refused by the core
    more = big + [[(k[0], 10, 10, 1000, 1)]]
    assert tool(*tb_batch_argv(more), check=False).returncode == 3
    more = big[:-1] + [big[-1] + [(k[0], 10, 10, 1000, 1)]]
    assert tool(*tb_batch_argv(more), check=False).returncode == 3


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

    s = Script(cluster, cluster.script_load(source))
    check = [(keys[0], 10, 10, 1000, 1), (keys[1], 100, 100, 60000, 1),
             (keys[2], 1000, 1000, 86400000, 1)]
    x = s.batch([check])[0]
    assert [y[0] for y in x] == [1, 1, 1]

    # a key starting with '}' would empty a bare {key} tag; ours holds
    odd = [tb_key(p, "}odd") for p in ("per_sec", "per_day")]
    x = s.batch([[(odd[0], 10, 10, 1000, 1), (odd[1], 5, 5, 60000, 1)]])[0]
    assert [y[0] for y in x] == [1, 1]

    # the same call over keys of two slots is what the tag prevents
    with pytest.raises(redis_py.ResponseError, match="CROSSSLOT|slot"):
        s.batch([[(b"apigw:rl:per_sec:acme", 10, 10, 1000, 1),
                  (b"apigw:rl:per_day:acme", 5, 5, 60000, 1)]])


def test_cluster_batch_of_one_key_value(cluster, source):
    """The requests of one key value, whatever their policies and per-key
    overrides, batch into one call on a cluster; requests of two key
    values cannot share one (CROSSSLOT), so the module never mixes them
    (one batch per apigw_tb_key_slot_len part)."""
    s = Script(cluster, cluster.script_load(source))
    value = "t-" + uuid.uuid4().hex
    sec, day = tb_key("per_sec", value), tb_key("per_day", value)
    big = tb_key("per_sec", "k" * 200)             # hashed: {rlh:...}
    checks = []
    for i in range(12):
        checks.append([(sec, 5 if i % 3 else 3, 5, 1000, 1),
                       (day, 1000, 1000, 86400000, 1 + i % 2)])
    res = s.batch(checks)
    assert res == World().batch(res[0][0][5], checks)
    assert [int(all(x[0] for x in c)) for c in res].count(1) >= 3
    assert cluster.exists(sec) == cluster.exists(day) == 1
    assert len(s.batch([[(big, 10, 10, 1000, 1)]] * 11)) == 11

    # keys of two key values: refused whole, nothing written
    other = tb_key("per_sec", "u-" + uuid.uuid4().hex)
    before = snapshot(cluster, [sec, day, other])
    for keys in ((sec, other), (day, big), (sec, day, other)):
        mixed = [[(k, 10, 10, 1000, 1)] for k in keys]
        with pytest.raises(redis_py.ResponseError, match="CROSSSLOT"):
            s.batch(mixed)
    assert snapshot(cluster, [sec, day, other]) == before
