"""Redis handshake and error classes (issue 13, in part): ACL users
(`username=`), a node that is not a primary is never used (ROLE in every
handshake), a primary demoted under us (READONLY) is left at once and
taken back when promoted, and every error reply is counted by class and
logged with Redis's own text, rate-limited."""

import hashlib
import json
import re
import time

import pytest
import requests

from harness import RedisServer, wait_for

KEY = "live_" + "R" * 40

CONF = """
apigw on;
apigw_redis {redis_addr} %(auth)s timeout=300ms connect_timeout=300ms;
apigw_rate_limit_zone per_tenant rate=100r/s burst=100 fail=closed;
apigw_rate_limit_zone tight rate=5r/m burst=5 fail=open key=$binary_remote_addr;

server {
    listen 127.0.0.1:{port};
    location /api/ {
        apigw_auth on;
        apigw_rate_limit per_tenant;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /pay/ {
        apigw_auth on;
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /tight/ {
        apigw_rate_limit tight;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /metrics {
        apigw_metrics;
    }
}
"""

# what apigw itself needs: its key space, the commands of its handshake and
# calls, and the commands its Lua scripts call
ACL_APIGW = ("on >s3cret ~apigw:* resetchannels -@all +hmget +hget +hset "
             "+del +exists +pexpire +pexpireat +pttl +time +eval +evalsha "
             "+script|load +role +select +ping")


def put_key(c):
    c.hset("apigw:key:" + hashlib.sha256(KEY.encode()).hexdigest(),
           mapping={"key_id": "key_r", "tenant": "acme", "scopes": "",
                    "status": "active", "account_status": "active"})


def auth():
    return {"Authorization": "Bearer " + KEY}


def metric(gw, name, label=None):
    text = requests.get(gw.url("/metrics")).text
    pat = re.escape(name) + (r'\{[^}]*"%s"\}' % re.escape(label)
                             if label else "") + r" (\d+)$"
    m = re.search("^" + pat, text, re.M)
    assert m, (name, label, text[:2000])
    return int(m.group(1))


def all_features_work(gw, upstream):
    r = requests.get(gw.url("/api/echo"), headers=auth())
    assert r.status_code == 200, r.content
    assert r.headers["X-RateLimit-Remaining"] == "99"
    h = dict(auth(), **{"Idempotency-Key": "k1"})
    r1 = requests.post(gw.url("/pay/count/acl"), data=b"x", headers=h)
    assert r1.status_code == 201, r1.content
    r2 = requests.post(gw.url("/pay/count/acl"), data=b"x", headers=h)
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.content
    assert upstream.counts() == {"acl": 1}


@pytest.fixture
def acl_redis(tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    c = r.client()
    c.execute_command("ACL", "SETUSER", "admin", "on", ">adminpw", "~*",
                      "&*", "+@all")
    c.execute_command("ACL", "SETUSER", "apigw", *ACL_APIGW.split())
    c.execute_command("ACL", "SETUSER", "default", "off")
    c.close()
    r.admin = lambda: r.client(username="admin", password="adminpw")
    yield r
    r.stop()


def test_acl_user_with_default_disabled(nginx_factory, acl_redis, upstream):
    put_key(acl_redis.admin())
    gw = nginx_factory(CONF % {"auth": "username=apigw password=s3cret"},
                       redis=acl_redis, upstream=upstream)
    all_features_work(gw, upstream)
    log = acl_redis.admin().execute_command("ACL", "LOG")
    assert log == [], log


def test_acl_wrong_password(nginx_factory, acl_redis, upstream):
    put_key(acl_redis.admin())
    gw = nginx_factory(CONF % {"auth": "username=apigw password=wrong"},
                       redis=acl_redis, upstream=upstream)
    r = requests.get(gw.url("/api/echo"), headers=auth())
    assert r.status_code == 503, r.content
    assert json.loads(r.content)["error"]["code"] == "auth_unavailable"
    wait_for(lambda: "WRONGPASS" in gw.error_log(), 5,
             what="Redis's WRONGPASS text in the error log")


def test_username_needs_password(nginx_factory):
    gw = nginx_factory("apigw_redis 127.0.0.1:1 username=apigw;",
                       start=False)
    rc, out = gw.test_config()
    assert rc != 0 and "needs \"password=\"" in out, out


@pytest.fixture
def pair(tmp_path):
    """a primary and its replica"""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    replica.client().execute_command("REPLICAOF", "127.0.0.1",
                                     str(primary.port))
    wait_for(lambda: replica.client().info("replication")
             .get("master_link_status") == "up", 10, what="replication")
    yield primary, replica
    replica.stop()
    primary.stop()


def test_replica_is_never_used(nginx_factory, pair, upstream):
    primary, replica = pair
    put_key(primary.client())
    wait_for(lambda: replica.client().exists(
        "apigw:key:" + hashlib.sha256(KEY.encode()).hexdigest()), 5,
        what="the key on the replica")
    gw = nginx_factory(CONF % {"auth": ""}, redis=replica,
                       upstream=upstream)
    gw.allow_log(r"not a primary")
    for _ in range(5):
        r = requests.get(gw.url("/api/echo"), headers=auth())
        assert r.status_code == 503, r.content
    # fail=open keeps serving, unlimited, while no primary is known
    assert requests.get(gw.url("/tight/echo")).status_code == 200
    stats = replica.commandstats()
    assert stats.get("hmget", 0) == 0 and stats.get("evalsha", 0) == 0, \
        stats
    assert metric(gw, "apigw_redis_not_primary_total") >= 1
    lines = [ln for ln in gw.error_log().splitlines()
             if "not a primary" in ln and "[error]" in ln]
    assert len(lines) == 1, lines     # once per outage, not per retry


def test_demoted_primary_is_left_and_taken_back(nginx_factory, redis,
                                                upstream):
    """A failover demotes the primary under the open connection: the first
    write meets READONLY (counted, logged with Redis's text), the connection
    is left, the reconnect finds a replica (ROLE) and does not use it; once
    the node is promoted again, writes resume within the backoff."""
    put_key(redis.client())
    gw = nginx_factory(CONF % {"auth": ""}, redis=redis, upstream=upstream)
    gw.allow_log(r"READONLY|not a primary|replica")
    assert requests.get(gw.url("/api/echo"), headers=auth()).status_code \
        == 200

    # a replica of a primary that is not there: no sync, no disconnect
    redis.client().execute_command("REPLICAOF", "127.0.0.1",
                                   str(gw.dead_port))
    codes = [requests.get(gw.url("/api/echo"), headers=auth()).status_code
             for _ in range(3)]
    assert codes[0] == 503 and 200 not in codes, codes   # fail=closed
    assert requests.get(gw.url("/tight/echo")).status_code == 200  # open
    assert metric(gw, "apigw_redis_error_replies_total", "readonly") == 1
    assert re.search(r"redis error reply \(readonly\): READONLY You can't "
                     r"write against a read only replica", gw.error_log())

    def refused_replica():
        requests.get(gw.url("/api/echo"), headers=auth())
        return metric(gw, "apigw_redis_not_primary_total") >= 1
    wait_for(refused_replica, 5, what="a reconnect refusing the replica")

    redis.client().execute_command("REPLICAOF", "NO", "ONE")
    t0 = time.monotonic()

    def ok():
        return requests.get(gw.url("/api/echo"),
                            headers=auth()).status_code == 200
    wait_for(ok, 5, interval=0.02, what="writes to resume")
    took = time.monotonic() - t0
    assert took < 1.5, took
    print("writes resumed %.0f ms after the promotion" % (took * 1000))


def test_busy_is_transient_and_logged_once_a_second(nginx_factory, redis,
                                                    upstream):
    put_key(redis.client())
    gw = nginx_factory(CONF % {"auth": ""}, redis=redis, upstream=upstream)
    gw.allow_log(r"BUSY|no reply|unavailable|restored")
    c = redis.client()
    c.config_set("busy-reply-threshold", 50)
    assert requests.get(gw.url("/api/echo"), headers=auth()).status_code \
        == 200
    import threading

    def busy():
        try:
            redis.client(socket_timeout=10).eval(
                "local t = redis.call('TIME') "
                "while true do local n = redis.call('TIME') "
                "if (n[1] - t[1]) * 1000000 + n[2] - t[2] > 1500000 "
                "then break end end", 0)
        except Exception:  # noqa: BLE001
            pass
    th = threading.Thread(target=busy)
    th.start()
    time.sleep(0.2)
    codes = [requests.get(gw.url("/api/echo"), headers=auth()).status_code
             for _ in range(20)]
    th.join(10)
    assert 503 in codes, codes   # BUSY: Redis cannot answer now
    wait_for(lambda: requests.get(gw.url("/api/echo"),
                                  headers=auth()).status_code == 200, 5,
             what="Redis back")
    n = metric(gw, "apigw_redis_error_replies_total", "transient")
    assert n >= 1
    lines = [ln for ln in gw.error_log().splitlines()
             if "redis error reply (transient): BUSY" in ln]
    assert 1 <= len(lines) <= 3, lines
