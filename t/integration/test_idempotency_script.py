"""The idempotency Lua scripts (claim, complete, release) against a real,
private redis-server: replies, ownership, TTLs and the one-winner guarantee
under concurrency.  The scripts are read from the C core through
build/tools/apigw_script, so what runs here is what the module sends."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import redis

ROOT = os.environ.get("APIGW_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(ROOT, "build", "tools", "apigw_script")

FP = "a" * 64
FP2 = "b" * 64
KEY = "apigw:idem:{t1}:" + "0" * 64
LOCK_MS = 60000
TTL_MS = 86400000


def script_source(name):
    assert os.access(TOOL, os.X_OK), \
        "%s missing: run `make build` first" % TOOL
    out = subprocess.run([TOOL, name], check=True, stdout=subprocess.PIPE,
                         timeout=10).stdout
    assert out.strip(), "empty script %s" % name
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port():
    tmp = tempfile.mkdtemp(prefix="apigw-idem-redis-")
    proc = None
    try:
        for _ in range(5):
            port = free_port()
            assert port != 6379
            proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", tmp,
                 "--daemonize", "no", "--logfile",
                 os.path.join(tmp, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = redis.Redis(host="127.0.0.1", port=port,
                                 socket_timeout=1)
            for _ in range(100):
                if proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            client.close()
            if proc.poll() is None:
                break
            proc = None     # port taken in between: try another one
        assert proc is not None, "redis-server did not start"
        yield port
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


class Scripts:
    """EVALSHA with the EVAL fallback on NOSCRIPT, as the module does."""

    def __init__(self, r):
        self.r = r
        self.src = {n: script_source("idempotency_" + n)
                    for n in ("claim", "complete", "release")}
        self.sha = {n: r.script_load(s) for n, s in self.src.items()}

    def call(self, name, keys, args, r=None):
        r = r or self.r
        try:
            return r.evalsha(self.sha[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return r.eval(self.src[name], len(keys), *keys, *args)

    def claim(self, key, fp, owner, lock_ms=LOCK_MS, r=None):
        return self.call("claim", [key], [fp, lock_ms, owner], r)

    def complete(self, key, owner, fp, status, record, ttl_ms=TTL_MS):
        if record is None:
            return self.call("complete", [key],
                             [owner, fp, ttl_ms, status, "nobody"])
        return self.call("complete", [key],
                         [owner, fp, ttl_ms, status, "full", record])

    def release(self, key, owner):
        return self.call("release", [key], [owner])


@pytest.fixture
def r(redis_port):
    client = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def s(r):
    return Scripts(r)


def wait_gone(r, key, limit=5.0):
    deadline = time.monotonic() + limit
    while r.exists(key):
        assert time.monotonic() < deadline, "%s never expired" % key
        time.sleep(0.01)


# an encoded record is opaque to the scripts: any bytes must survive
RECORD = (b"\x01\x00\xc9\x00\x01\x00\x0cContent-Type\x00\x00\x00\x10"
          b"application/json\x00\x00\x00\x0c{\"id\":1}\x00\r\n\xff")


def test_claim_then_in_flight(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    h = r.hgetall(KEY)
    assert h == {b"state": b"in_flight", b"fp": FP.encode(),
                 b"owner": b"owner-a"}
    assert 0 < r.pttl(KEY) <= LOCK_MS

    reply = s.claim(KEY, FP, "owner-b")
    assert reply[0] == b"in_flight"
    assert isinstance(reply[1], int) and 0 < reply[1] <= LOCK_MS
    assert len(reply) == 2
    # the loser changed nothing
    assert r.hget(KEY, "owner") == b"owner-a"


def test_complete_then_replay_exact_bytes(r, s):
    big = bytes(range(256)) * 4096         # 1 MiB with every byte value
    record = RECORD + big
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.complete(KEY, "owner-a", FP, 201, record) == 1

    assert r.hget(KEY, "state") == b"completed"
    assert not r.hexists(KEY, "owner")
    assert not r.hexists(KEY, "nobody")

    reply = s.claim(KEY, FP, "owner-b")
    assert reply[0] == b"completed"
    assert reply[1] == 201 and isinstance(reply[1], int)
    assert reply[2] == record
    assert len(reply) == 3
    # replays do not extend or alter the record
    assert s.claim(KEY, FP, "owner-c") == reply


def test_mismatch_in_flight_and_completed(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.claim(KEY, FP2, "owner-b") == [b"mismatch"]
    assert s.complete(KEY, "owner-a", FP, 200, RECORD) == 1
    assert s.claim(KEY, FP2, "owner-b") == [b"mismatch"]
    assert r.hget(KEY, "fp") == FP.encode()


def test_complete_after_lock_expiry_and_reclaim_refused(r, s):
    assert s.claim(KEY, FP, "owner-a", lock_ms=50) == [b"claimed"]
    wait_gone(r, KEY)
    assert s.claim(KEY, FP, "owner-b") == [b"claimed"]

    assert s.complete(KEY, "owner-a", FP, 200, RECORD) == 0
    assert s.complete(KEY, "owner-a", FP, 200, None) == 0
    assert r.hgetall(KEY) == {b"state": b"in_flight", b"fp": FP.encode(),
                              b"owner": b"owner-b"}
    assert s.release(KEY, "owner-a") == 0
    assert r.exists(KEY)

    assert s.complete(KEY, "owner-b", FP, 200, b"mine") == 1
    assert s.claim(KEY, FP, "x") == [b"completed", 200, b"mine"]


def test_complete_after_lock_lapsed_on_free_key_keeps_result(r, s):
    assert s.claim(KEY, FP, "owner-a", lock_ms=50) == [b"claimed"]
    wait_gone(r, KEY)
    # nobody took the key: the upstream did run, keep its result
    assert s.complete(KEY, "owner-a", FP, 201, RECORD) == 2
    assert s.claim(KEY, FP, "owner-b") == [b"completed", 201, RECORD]
    assert s.claim(KEY, FP2, "owner-b") == [b"mismatch"]
    assert 0 < r.pttl(KEY) <= TTL_MS


def test_complete_by_non_owner_and_twice(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.complete(KEY, "owner-b", FP, 200, b"evil") == 0
    with pytest.raises(redis.exceptions.ResponseError):
        s.complete(KEY, "", FP, 200, b"evil")
    assert r.hget(KEY, "state") == b"in_flight"
    assert s.complete(KEY, "owner-a", FP, 200, b"first") == 1
    # a second completion, even by the owner, never overwrites
    assert s.complete(KEY, "owner-a", FP, 201, b"second") == 0
    assert s.complete(KEY, "owner-a", FP, 201, None) == 0
    assert s.claim(KEY, FP, "x") == [b"completed", 200, b"first"]


def test_release_by_owner_only(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.release(KEY, "owner-b") == 0
    assert r.hget(KEY, "owner") == b"owner-a"
    assert s.release(KEY, "owner-a") == 1
    assert not r.exists(KEY)
    assert s.release(KEY, "owner-a") == 0

    # released: the client's retry runs again
    assert s.claim(KEY, FP, "owner-c") == [b"claimed"]
    assert s.complete(KEY, "owner-c", FP, 200, RECORD) == 1
    # a completed record is never released
    assert s.release(KEY, "owner-c") == 0
    assert s.claim(KEY, FP, "x")[0] == b"completed"


def test_ttls(r, s):
    assert s.claim(KEY, FP, "owner-a", lock_ms=5000) == [b"claimed"]
    assert 4000 < r.pttl(KEY) <= 5000
    reply = s.claim(KEY, FP, "owner-b", lock_ms=99999)
    assert reply[0] == b"in_flight" and 4000 < reply[1] <= 5000
    # a waiting duplicate does not extend the lock
    assert r.pttl(KEY) <= 5000

    assert s.complete(KEY, "owner-a", FP, 200, RECORD, ttl_ms=7200000) == 1
    assert 7100000 < r.pttl(KEY) <= 7200000

    # short lock: it really expires
    key2 = KEY[:-1] + "1"
    assert s.claim(key2, FP, "o", lock_ms=100) == [b"claimed"]
    wait_gone(r, key2)
    assert s.claim(key2, FP, "o2") == [b"claimed"]


def test_in_flight_without_expiry_gets_one(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    r.persist(KEY)
    assert r.pttl(KEY) == -1
    reply = s.claim(KEY, FP, "owner-b", lock_ms=3000)
    assert reply == [b"in_flight", 3000]
    assert 0 < r.pttl(KEY) <= 3000


def test_too_large_completed_nobody(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.complete(KEY, "owner-a", FP, 201, None) == 1
    assert r.hget(KEY, "nobody") == b"1"
    assert not r.hexists(KEY, "resp")
    assert s.claim(KEY, FP, "owner-b") == [b"completed_nobody", 201]
    assert s.claim(KEY, FP2, "owner-b") == [b"mismatch"]
    assert 0 < r.pttl(KEY) <= TTL_MS


def test_concurrent_claims_one_winner(redis_port, s):
    rounds, n = 5, 50
    for rnd in range(rounds):
        key = "apigw:idem:{t%d}:%064d" % (rnd, rnd)
        clients = [redis.Redis(host="127.0.0.1", port=redis_port,
                               socket_timeout=10) for _ in range(n)]
        for c in clients:
            c.ping()                        # connect before the race
        barrier = threading.Barrier(n, timeout=30)
        results = [None] * n
        errors = []

        def worker(i):
            try:
                barrier.wait()
                results[i] = s.claim(key, FP, "owner-%d" % i, r=clients[i])
            except Exception as e:          # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(i,))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        for c in clients:
            c.close()

        assert errors == []
        winners = [i for i, res in enumerate(results)
                   if res == [b"claimed"]]
        assert len(winners) == 1
        others = [res for res in results if res != [b"claimed"]]
        assert len(others) == n - 1
        assert all(res[0] == b"in_flight" and res[1] > 0 for res in others)

        # the winner completes; every later duplicate replays
        w = winners[0]
        assert s.complete(key, "owner-%d" % w, FP, 201, RECORD) == 1
        for i in range(n):
            if i != w:
                assert s.complete(key, "owner-%d" % i, FP, 500,
                                  b"x") == 0
                assert s.release(key, "owner-%d" % i) == 0
        assert s.claim(key, FP, "late") == [b"completed", 201, RECORD]


def test_script_flush_eval_fallback(r, s):
    r.script_flush()
    with pytest.raises(redis.exceptions.NoScriptError):
        r.evalsha(s.sha["claim"], 1, KEY, FP, LOCK_MS, "owner-a")
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    assert s.complete(KEY, "owner-a", FP, 200, RECORD) == 1
    assert s.claim(KEY, FP, "b") == [b"completed", 200, RECORD]
    assert s.release(KEY, "b") == 0
    # what the module computes at configuration time is what Redis has
    assert all(r.script_load(src) == s.sha[n] for n, src in s.src.items())


BAD_CLAIMS = [
    [FP, 0, "o"], [FP, -1, "o"], [FP, "abc", "o"], [FP, "", "o"],
    [FP, "1" * 16, "o"], [FP, "10.5", "o"], ["", LOCK_MS, "o"],
    [FP, LOCK_MS, ""], [FP, LOCK_MS], [FP],
]


@pytest.mark.parametrize("args", BAD_CLAIMS)
def test_claim_bad_arguments_write_nothing(r, s, args):
    with pytest.raises(redis.exceptions.ResponseError):
        s.call("claim", [KEY], args)
    assert not r.exists(KEY)


BAD_COMPLETES = [
    ["owner-a", FP, 0, 200, "full", b"x"],
    ["owner-a", FP, "1" * 16, 200, "full", b"x"],
    ["owner-a", FP, TTL_MS, 99, "full", b"x"],
    ["owner-a", FP, TTL_MS, 1000, "full", b"x"],
    ["owner-a", FP, TTL_MS, "2OO", "full", b"x"],
    ["owner-a", FP, TTL_MS, 200, "full"],
    ["owner-a", FP, TTL_MS, 200, "other", b"x"],
    ["owner-a", "", TTL_MS, 200, "full", b"x"],
    ["", FP, TTL_MS, 200, "full", b"x"],
]


@pytest.mark.parametrize("args", BAD_COMPLETES)
def test_complete_bad_arguments_write_nothing(r, s, args):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    before = r.hgetall(KEY)
    with pytest.raises(redis.exceptions.ResponseError):
        s.call("complete", [KEY], args)
    assert r.hgetall(KEY) == before
    assert 0 < r.pttl(KEY) <= LOCK_MS


def test_release_bad_arguments(r, s):
    assert s.claim(KEY, FP, "owner-a") == [b"claimed"]
    with pytest.raises(redis.exceptions.ResponseError):
        s.call("release", [KEY], [""])
    with pytest.raises(redis.exceptions.ResponseError):
        s.call("release", [KEY], [])
    assert r.exists(KEY)


def test_foreign_keys_are_never_taken(r, s):
    r.set(KEY, "not a record")
    with pytest.raises(redis.exceptions.ResponseError):
        s.claim(KEY, FP, "o")
    with pytest.raises(redis.exceptions.ResponseError):
        s.complete(KEY, "o", FP, 200, RECORD)
    assert r.get(KEY) == b"not a record"

    r.delete(KEY)
    r.hset(KEY, "something", "else")
    with pytest.raises(redis.exceptions.ResponseError):
        s.claim(KEY, FP, "o")
    assert s.complete(KEY, "o", FP, 200, RECORD) == 0
    assert s.release(KEY, "o") == 0
    assert r.hgetall(KEY) == {b"something": b"else"}

    # completed but damaged: an error, not a replay of garbage or a rerun
    r.delete(KEY)
    r.hset(KEY, mapping={"state": "completed", "fp": FP})
    with pytest.raises(redis.exceptions.ResponseError):
        s.claim(KEY, FP, "o")
    r.hset(KEY, "status", "200")
    with pytest.raises(redis.exceptions.ResponseError):
        s.claim(KEY, FP, "o")
    r.hset(KEY, mapping={"state": "weird"})
    with pytest.raises(redis.exceptions.ResponseError):
        s.claim(KEY, FP, "o")
