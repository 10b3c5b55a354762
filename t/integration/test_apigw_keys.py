"""apigw-keys against a private redis-server.

The server is this file's own (a free loopback port and a unix socket in a
temporary directory), so the tests neither need nor touch a Redis on 6379.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(os.environ.get("APIGW_ROOT")
            or Path(__file__).resolve().parents[2])
KEYS_BIN = ROOT / "build" / "apigw-keys"

KEY_RE = re.compile(r"^[0-9A-Za-z]{43}$")
LIVE_KEY_RE = re.compile(r"^live_[0-9A-Za-z]{43}$")
KEY_ID_RE = re.compile(r"^key_[0-9a-f]{16}$")
HELP_SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS",
                 "EXIT STATUS", "EXAMPLES")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KeysRedis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="apigw-keys-test-")
        self.port = _free_port()
        self.sock = os.path.join(self.dir, "redis.sock")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--unixsocket", self.sock, "--unixsocketperm", "700",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addr = "127.0.0.1:%d" % self.port
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.time() + 10
        while True:
            try:
                if self.client.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def keys_redis_server():
    if not KEYS_BIN.is_file() or KEYS_BIN.stat().st_size == 0:
        pytest.fail("%s is not built: run 'make tools'" % KEYS_BIN)
    server = KeysRedis()
    yield server
    server.stop()


@pytest.fixture
def kr(keys_redis_server):
    """The module's server, emptied for each test."""
    keys_redis_server.client.flushall()
    return keys_redis_server


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIGW_")}
    env.update(extra or {})
    return env


def run(kr, *args, env=None, redis_addr=None):
    """Runs apigw-keys against kr (or redis_addr); returns CompletedProcess."""
    argv = [str(KEYS_BIN)]
    addr = redis_addr or (kr.addr if kr is not None else None)
    if addr is not None:
        argv += ["--redis", addr]
    argv += list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env=_env(env))


def ok(kr, *args, **kw):
    p = run(kr, *args, **kw)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def parse_created(stdout):
    lines = dict(l.split(": ", 1) for l in stdout.strip().splitlines()
                 if ": " in l)
    return lines["key"], lines["key_id"]


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def record(kr, key=None, key_id=None, ns="apigw:"):
    if key_id is not None:
        h = kr.client.hget(ns + "keyid:" + key_id, "sha256")
        assert h is not None, key_id
        digest = h.decode()
    else:
        digest = sha(key)
    raw = kr.client.hgetall(ns + "key:" + digest)
    return {k.decode(): v.decode() for k, v in raw.items()}


def dump_everything(client):
    """Every key name and every value in the database, as one blob."""
    out = []
    for k in client.scan_iter(count=1000):
        out.append(k)
        t = client.type(k).decode()
        if t == "hash":
            for f, v in client.hgetall(k).items():
                out += [f, v]
        elif t == "set":
            out += list(client.smembers(k))
        elif t == "string":
            out.append(client.get(k))
        elif t == "list":
            out += client.lrange(k, 0, -1)
        elif t == "zset":
            out += [m for m, _ in client.zrange(k, 0, -1, withscores=True)]
        else:
            raise AssertionError("unexpected type %s of %r" % (t, k))
    return b"\n".join(out)


def create(kr, *args, **kw):
    p = ok(kr, "create", *args, **kw)
    return parse_created(p.stdout)


# ---- create ----


def test_create_prints_key_once_and_stores_only_its_hash(kr):
    before = int(time.time())
    p = ok(kr, "create", "--tenant", "acme", "--scopes", "read  write",
           "--prefix", "live_", "--expires-in", "30d", "--rate", "100r/m",
           "--burst", "20")
    after = int(time.time())
    key, key_id = parse_created(p.stdout)

    assert LIVE_KEY_RE.match(key), key
    assert KEY_ID_RE.match(key_id), key_id
    assert p.stdout.count(key) == 1
    assert key not in p.stderr

    digest = sha(key)
    rec = record(kr, key)
    assert rec["key_id"] == key_id
    assert rec["tenant"] == "acme"
    assert rec["scopes"] == "read write"
    assert rec["status"] == "active"
    assert rec["account_status"] == "active"
    assert rec["rate"] == "100r/m"
    assert rec["burst"] == "20"
    assert before <= int(rec["created_at"]) <= after
    assert before + 30 * 86400 <= int(rec["expires_at"]) <= after + 30 * 86400

    c = kr.client
    assert c.hget("apigw:keyid:" + key_id, "sha256").decode() == digest
    assert c.smembers("apigw:tenant:acme:keys") == {key_id.encode()}
    assert c.hget("apigw:account:acme", "status") == b"active"

    # the key, or even its random part, appears in no key name or value
    blob = dump_everything(c)
    assert key.encode() not in blob
    assert key[5:].encode() not in blob
    assert digest.encode() in blob


def test_create_defaults(kr):
    key, key_id = create(kr, "--tenant", "t1")
    assert KEY_RE.match(key), key
    rec = record(kr, key)
    assert rec["status"] == "active"
    assert rec["scopes"] == ""
    assert "expires_at" not in rec
    assert "rate" not in rec
    assert "burst" not in rec
    assert "key_prefix" not in rec
    assert rec["key_id"] == key_id


def test_create_keys_differ(kr):
    keys = {create(kr, "--tenant", "t1")[0] for _ in range(5)}
    assert len(keys) == 5


def test_create_json(kr):
    p = ok(kr, "create", "--tenant", "acme", "--scopes", "a,b a",
           "--key-id", "svc.billing-1", "--expires-at", "4102444800",
           "--json")
    out = json.loads(p.stdout)
    assert KEY_RE.match(out["key"])
    assert out["key_id"] == "svc.billing-1"
    assert out["tenant"] == "acme"
    assert out["scopes"] == "a b"
    assert out["expires_at"] == 4102444800
    rec = record(kr, out["key"])
    assert rec["key_id"] == "svc.billing-1"
    assert rec["expires_at"] == "4102444800"


def test_create_key_id_in_use(kr):
    key, _ = create(kr, "--tenant", "acme", "--key-id", "k1")
    p = run(kr, "create", "--tenant", "other", "--key-id", "k1")
    assert p.returncode == 4, p.stderr
    assert p.stdout == ""
    # the first key is untouched and no second record exists
    assert record(kr, key)["tenant"] == "acme"
    assert len(list(kr.client.scan_iter("apigw:key:*"))) == 1
    assert not kr.client.exists("apigw:tenant:other:keys")


# ---- list / show ----


def test_list_never_prints_keys_or_hashes(kr):
    k1, id1 = create(kr, "--tenant", "acme", "--scopes", "read")
    k2, id2 = create(kr, "--tenant", "beta", "--prefix", "live_")
    revoked_key, id3 = create(kr, "--tenant", "acme")
    ok(kr, "revoke", id3)

    for args in (("list",), ("list", "--json"), ("list", "--tenant", "acme")):
        out = ok(kr, *args).stdout
        for k in (k1, k2, revoked_key):
            assert k not in out
            assert sha(k) not in out

    out = ok(kr, "list").stdout
    assert id1 in out and id2 in out and id3 in out

    out = ok(kr, "list", "--tenant", "acme").stdout
    assert id1 in out and id3 in out and id2 not in out
    row = next(l for l in out.splitlines() if l.startswith(id3))
    assert "revoked" in row.split()

    rows = json.loads(ok(kr, "list", "--json").stdout)
    by_id = {r["key_id"]: r for r in rows}
    assert set(by_id) == {id1, id2, id3}
    assert by_id[id1]["tenant"] == "acme"
    assert by_id[id1]["scopes"] == "read"
    assert by_id[id1]["status"] == "active"
    assert by_id[id3]["status"] == "revoked"
    assert by_id[id2]["expires_at"] is None

    assert json.loads(ok(kr, "list", "--tenant", "none", "--json").stdout) \
        == []


def test_list_under_another_namespace(kr):
    _, id1 = create(kr, "--tenant", "acme", "--namespace", "gw[1]*:")
    _, id2 = create(kr, "--tenant", "acme")
    rows = json.loads(ok(kr, "list", "--json", "--prefix-key",
                         "gw[1]*:").stdout)
    assert [r["key_id"] for r in rows] == [id1]
    rows = json.loads(ok(kr, "list", "--json").stdout)
    assert [r["key_id"] for r in rows] == [id2]


def test_show(kr):
    key, key_id = create(kr, "--tenant", "acme", "--scopes", "read write",
                         "--rate", "5r/s")
    p = ok(kr, "show", key_id)
    assert key not in p.stdout and sha(key) not in p.stdout
    fields = dict(l.split(None, 1) for l in p.stdout.splitlines()
                  if len(l.split(None, 1)) == 2)
    assert fields["key_id"] == key_id
    assert fields["tenant"] == "acme"
    assert fields["status"] == "active"
    assert fields["scopes"] == "read write"
    assert fields["rate"] == "5r/s"
    assert fields["verdict"] == "accepted"

    out = json.loads(ok(kr, "show", key_id, "--json").stdout)
    assert out["tenant"] == "acme"
    assert isinstance(out["created_at"], int)
    assert "key" not in out and "sha256" not in out


# ---- revoke / accounts ----


def test_revoke(kr):
    key, key_id = create(kr, "--tenant", "acme")
    p = ok(kr, "revoke", key_id)
    assert key_id in p.stdout
    rec = record(kr, key)
    assert rec["status"] == "revoked"
    assert abs(int(rec["revoked_at"]) - time.time()) < 60
    # the other fields stay for audit
    assert rec["tenant"] == "acme" and rec["key_id"] == key_id

    revoked_at = rec["revoked_at"]
    ok(kr, "revoke", key_id)
    assert record(kr, key)["revoked_at"] == revoked_at
    assert "revoked" in ok(kr, "show", key_id).stdout


def test_disable_and_enable_account(kr):
    a1, id1 = create(kr, "--tenant", "acme")
    a2, id2 = create(kr, "--tenant", "acme")
    b1, _ = create(kr, "--tenant", "beta")
    ok(kr, "revoke", id2)

    p = ok(kr, "disable-account", "acme")
    assert "disabled" in p.stdout
    assert record(kr, a1)["account_status"] == "disabled"
    assert record(kr, a2)["account_status"] == "disabled"
    assert record(kr, a2)["status"] == "revoked"
    assert record(kr, b1)["account_status"] == "active"
    assert kr.client.hget("apigw:account:acme", "status") == b"disabled"

    # a key made while the account is disabled is disabled too
    a3, id3 = create(kr, "--tenant", "acme")
    assert record(kr, a3)["account_status"] == "disabled"
    assert "account_disabled" in ok(kr, "show", id3).stdout

    ok(kr, "enable-account", "acme")
    for k in (a1, a2, a3):
        assert record(kr, k)["account_status"] == "active"
    assert record(kr, a2)["status"] == "revoked"
    assert kr.client.hget("apigw:account:acme", "status") == b"active"

    # a deleted key's record is not brought back by an account change
    ok(kr, "delete", id1)
    ok(kr, "disable-account", "acme")
    assert not kr.client.exists("apigw:key:" + sha(a1))


def test_disable_races_with_create(kr):
    """Keys created while the account is being disabled end up disabled:
    create reads the account state under WATCH, disable retries when the
    tenant's key set changes under it."""
    create(kr, "--tenant", "acme")
    argv = [str(KEYS_BIN), "--redis", kr.addr]
    procs = [subprocess.Popen(argv + ["create", "--tenant", "acme"],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=_env())
             for _ in range(20)]
    procs.insert(10, subprocess.Popen(argv + ["disable-account", "acme"],
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=_env()))
    assert [p.wait(timeout=60) for p in procs] == [0] * 21

    ids = kr.client.smembers("apigw:tenant:acme:keys")
    assert len(ids) == 21
    for key_id in ids:
        assert record(kr, key_id=key_id.decode())["account_status"] \
            == "disabled"


# ---- rotate ----


def test_rotate_without_grace(kr):
    old, old_id = create(kr, "--tenant", "acme", "--scopes", "read write",
                         "--prefix", "live_", "--rate", "10r/s", "--burst",
                         "30", "--expires-in", "1d")
    p = ok(kr, "rotate", old_id)
    new, new_id = parse_created(p.stdout)
    assert LIVE_KEY_RE.match(new)
    assert new != old and new_id != old_id
    assert old not in p.stdout

    o = record(kr, old)
    assert o["status"] == "revoked"
    assert o["rotated_to"] == new_id

    n = record(kr, new)
    assert n["key_id"] == new_id
    assert n["tenant"] == "acme"
    assert n["scopes"] == "read write"
    assert n["rate"] == "10r/s"
    assert n["burst"] == "30"
    assert n["status"] == "active"
    assert n["account_status"] == "active"
    assert n["rotated_from"] == old_id
    assert "expires_at" not in n

    assert record(kr, key_id=new_id)["key_id"] == new_id
    members = kr.client.smembers("apigw:tenant:acme:keys")
    assert members == {old_id.encode(), new_id.encode()}
    blob = dump_everything(kr.client)
    assert new.encode() not in blob and old.encode() not in blob


def test_rotate_with_grace(kr):
    old, old_id = create(kr, "--tenant", "acme", "--scopes", "read")
    before = int(time.time())
    p = ok(kr, "rotate", old_id, "--grace", "1h", "--key-id", "next-1",
           "--json")
    after = int(time.time())
    out = json.loads(p.stdout)
    assert out["key_id"] == "next-1"
    assert KEY_RE.match(out["key"])

    o = record(kr, old)
    assert o["status"] == "active"
    assert before + 3600 <= int(o["expires_at"]) <= after + 3600
    assert o["rotated_to"] == "next-1"
    n = record(kr, out["key"])
    assert n["scopes"] == "read" and n["status"] == "active"

    # grace never lengthens a key's life
    short, short_id = create(kr, "--tenant", "acme", "--expires-in", "10m")
    exp = record(kr, short)["expires_at"]
    ok(kr, "rotate", short_id, "--grace", "2h")
    assert record(kr, short)["expires_at"] == exp


def test_rotate_grace_zero_revokes(kr):
    old, old_id = create(kr, "--tenant", "acme")
    ok(kr, "rotate", old_id, "--grace", "0")
    assert record(kr, old)["status"] == "revoked"


def test_rotate_follows_disabled_account(kr):
    old, old_id = create(kr, "--tenant", "acme")
    ok(kr, "disable-account", "acme")
    new, _ = parse_created(ok(kr, "rotate", old_id).stdout)
    assert record(kr, new)["account_status"] == "disabled"


def test_rotate_revoked_key_refused(kr):
    _, key_id = create(kr, "--tenant", "acme")
    ok(kr, "revoke", key_id)
    p = run(kr, "rotate", key_id)
    assert p.returncode == 4
    assert p.stdout == ""
    assert len(list(kr.client.scan_iter("apigw:key:*"))) == 1


# ---- delete ----


def test_delete(kr):
    key, key_id = create(kr, "--tenant", "acme")
    _, other = create(kr, "--tenant", "acme")
    ok(kr, "delete", key_id)
    c = kr.client
    assert not c.exists("apigw:key:" + sha(key))
    assert not c.exists("apigw:keyid:" + key_id)
    assert c.smembers("apigw:tenant:acme:keys") == {other.encode()}
    assert run(kr, "delete", key_id).returncode == 1
    assert run(kr, "show", key_id).returncode == 1


def test_delete_cleans_dangling_index(kr):
    key, key_id = create(kr, "--tenant", "acme")
    kr.client.delete("apigw:key:" + sha(key))
    assert run(kr, "show", key_id).returncode == 1
    ok(kr, "delete", key_id)
    assert not kr.client.exists("apigw:keyid:" + key_id)
    assert not kr.client.sismember("apigw:tenant:acme:keys", key_id)


# ---- connection options ----


def test_env_namespace_db_and_unix_socket(kr):
    env = {"APIGW_REDIS": "unix:" + kr.sock, "APIGW_REDIS_DB": "3",
           "APIGW_NAMESPACE": "gw:"}
    p = subprocess.run([str(KEYS_BIN), "create", "--tenant", "acme"],
                       capture_output=True, text=True, timeout=30,
                       env=_env(env))
    assert p.returncode == 0, p.stderr
    key, key_id = parse_created(p.stdout)

    db3 = redis.Redis(host="127.0.0.1", port=kr.port, db=3)
    assert db3.hget("gw:key:" + sha(key), "key_id").decode() == key_id
    assert kr.client.dbsize() == 0

    ok(kr, "--db", "3", "--namespace", "gw:", "show", key_id)
    assert run(kr, "show", key_id).returncode == 1

    # options win over the environment (run() passes --redis too)
    ok(kr, "show", key_id, env=env)
    assert run(kr, "--db", "0", "show", key_id, env=env).returncode == 1
    assert run(kr, "--namespace", "apigw:", "show", key_id,
               env=env).returncode == 1


def test_password(kr):
    kr.client.config_set("requirepass", "s3cret")
    try:
        p = run(kr, "list")
        assert p.returncode == 3, p.stderr
        ok(kr, "--password", "s3cret", "create", "--tenant", "acme")
        ok(kr, "list", env={"APIGW_REDIS_PASSWORD": "s3cret"})
        assert run(kr, "--password", "wrong", "list").returncode == 3
    finally:
        authed = redis.Redis(host="127.0.0.1", port=kr.port,
                             password="s3cret")
        authed.config_set("requirepass", "")


# ---- exit statuses ----


@pytest.mark.parametrize("args", [
    (),
    ("frob",),
    ("create",),
    ("create", "--tenant"),
    ("create", "--tenant", "a b"),
    ("create", "--tenant", "a{b}"),
    ("create", "--tenant", "a", "--prefix", "live-"),
    ("create", "--tenant", "a", "--prefix", "x" * 17),
    ("create", "--tenant", "a", "--expires-in", "1h", "--expires-at",
     "9999999999"),
    ("create", "--tenant", "a", "--expires-in", "0"),
    ("create", "--tenant", "a", "--expires-in", "3y"),
    ("create", "--tenant", "a", "--expires-at", "1000"),
    ("create", "--tenant", "a", "--rate", "100"),
    ("create", "--tenant", "a", "--rate", "0r/s"),
    ("create", "--tenant", "a", "--burst", "0"),
    ("create", "--tenant", "a", "--key-id", "a/b"),
    ("create", "--tenant", "a", "--grace", "1h"),
    ("create", "--tenant", "a", "extra"),
    ("list", "--bogus"),
    ("list", "extra"),
    ("show",),
    ("show", "a", "b"),
    ("revoke", "x", "--tenant", "a"),
    ("rotate", "x", "--grace", "soon"),
    ("rotate", "x", "--key-id", "x"),
    ("disable-account",),
    ("disable-account", "bad tenant"),
    ("help", "frob"),
    ("--db", "x", "list"),
    ("--redis", "127.0.0.1:notaport", "list"),
    ("--redis", "[::1", "list"),
])
def test_usage_errors_exit_2(kr, args):
    # aimed at the test server: a usage error missed would show in dbsize
    p = run(kr, *args)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert p.stdout == ""
    assert p.stderr.strip()
    assert kr.client.dbsize() == 0


@pytest.mark.parametrize("args", [
    ("show", "key_0000000000000000"),
    ("revoke", "key_0000000000000000"),
    ("rotate", "key_0000000000000000"),
    ("delete", "key_0000000000000000"),
    ("disable-account", "nobody"),
    ("enable-account", "nobody"),
])
def test_unknown_exit_1(kr, args):
    create(kr, "--tenant", "acme")
    p = run(kr, *args)
    assert p.returncode == 1, (args, p.stderr)
    assert p.stdout == ""


@pytest.mark.parametrize("args", [
    ("list",),
    ("create", "--tenant", "acme"),
    ("show", "key_0000000000000000"),
    ("disable-account", "acme"),
])
def test_redis_down_exit_3(args):
    port = _free_port()
    p = run(None, *args, redis_addr="127.0.0.1:%d" % port)
    assert p.returncode == 3, (args, p.returncode, p.stderr)
    assert p.stdout == ""
    p = run(None, *args, redis_addr="unix:/nonexistent/redis.sock")
    assert p.returncode == 3


def test_help():
    for argv in (["--help"], ["-h"], ["help"]):
        p = run(None, *argv)
        assert p.returncode == 0
        for section in HELP_SECTIONS:
            assert re.search(r"^%s$" % section, p.stdout, re.M), section
        for cmd in ("create", "list", "show", "revoke", "rotate", "delete",
                    "disable-account", "enable-account"):
            assert cmd in p.stdout

    for cmd, opt in (("create", "--tenant"), ("rotate", "--grace"),
                     ("list", "--tenant"), ("revoke", "KEY_ID")):
        for argv in ([cmd, "--help"], ["help", cmd]):
            p = run(None, *argv)
            assert p.returncode == 0, argv
            assert p.stdout.startswith("Usage: apigw-keys " + cmd)
            assert opt in p.stdout
