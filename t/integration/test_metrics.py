"""apigw_metrics: Prometheus text exposition of the whole instance.

After a known sequence of requests every series moved exactly as expected
(read before and after, diffed: a series not named in the expectation must
not move at all); the output parses with a strict parser of the text format
0.0.4; counters are summed over the workers' shards; only GET and HEAD are
served; counters survive a reload; envelope codes count under their default
names whatever the catalog renames."""

import hashlib
import json
import math
import re

import requests

from harness import free_port, wait_for

KEY = "live_" + "M" * 40        # a valid key, found in Redis
KEY_UNKNOWN = "live_" + "U" * 40
KEY_LATE = "live_" + "L" * 40   # looked up while Redis is paused

CONF = """
apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=100ms connect_timeout=100ms;
apigw_auth_cache zone=keys:1m ttl=60s negative_ttl=60s;
apigw_rate_limit_zone seq rate=2r/m key=$http_x_client;
%(extra)s

log_format pids '$pid $status';

server {
    listen 127.0.0.1:{port}%(listen)s;
    access_log {tmp}/pids.log pids;

    location /api/ {
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /open/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /limited/ {
        apigw_rate_limit seq;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /fast {
        return 200 "fast\\n";
    }

    # scrapes are no apigw requests here, so they never move the counters
    location = /metrics {
        apigw off;
        apigw_metrics;
    }

    # ... and here apigw is on: request ids and envelopes (405)
    location = /metrics/enveloped {
        apigw_metrics;
    }

    location / {
        return 404;
    }
}
"""


def start(nginx_factory, redis, upstream, extra="", listen="", **kw):
    return nginx_factory(CONF % {"extra": extra, "listen": listen},
                         redis=redis, upstream=upstream, **kw)


def put_key(redis, key):
    h = "apigw:key:" + hashlib.sha256(key.encode()).hexdigest()
    redis.client().hset(h, mapping={
        "key_id": "key_m", "tenant": "acme", "scopes": "orders:read",
        "status": "active", "account_status": "active"})


def bearer(key):
    return {"Authorization": "Bearer " + key}


# -- a strict parser of the text exposition format 0.0.4 -------------------

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
HELP_ESCAPES = {"\\": "\\", "n": "\n"}
LABEL_ESCAPES = {"\\": "\\", "n": "\n", '"': '"'}


class ParseError(AssertionError):
    pass


def _unescape(s, escapes, what):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in escapes:
                raise ParseError("bad escape in %s: %r" % (what, s))
            out.append(escapes[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _float(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        raise ParseError("bad value %r" % s)
    return float(s)


def _sample(line):
    m = NAME_RE.match(line)
    if not m:
        raise ParseError("bad metric name")
    name, i, labels = m.group(0), m.end(), {}
    if i < len(line) and line[i] == "{":
        i += 1
        while line[i] != "}":
            lm = LABEL_RE.match(line, i)
            if not lm:
                raise ParseError("bad label name at %d" % i)
            lname = lm.group(0)
            if lname.startswith("__") or lname in labels:
                raise ParseError("reserved or repeated label %r" % lname)
            i = lm.end()
            if line[i:i + 2] != '="':
                raise ParseError("expected =\" after %r" % lname)
            i += 2
            raw = []
            while line[i] != '"':
                if line[i] == "\\":
                    raw.append(line[i:i + 2])
                    i += 2
                else:
                    raw.append(line[i])
                    i += 1
            i += 1
            labels[lname] = _unescape("".join(raw), LABEL_ESCAPES,
                                      "label value")
            if line[i] == ",":
                i += 1
                if line[i] == "}":
                    raise ParseError("trailing comma")
            elif line[i] != "}":
                raise ParseError("expected , or } at %d" % i)
        i += 1
    if line[i:i + 1] != " ":
        raise ParseError("expected a space before the value")
    parts = line[i + 1:].split(" ")
    if not 1 <= len(parts) <= 2:
        raise ParseError("expected value [timestamp]")
    if len(parts) == 2 and not re.fullmatch(r"-?\d+", parts[1]):
        raise ParseError("bad timestamp")
    return name, labels, _float(parts[0])


class Exposition:
    """families: name -> {"help", "type", "samples": [(name, labels, v)]};
    values: (sample name, frozenset of label items) -> value."""

    def __init__(self, families):
        self.families = families
        self.values = {}
        for fam in families.values():
            for name, labels, v in fam["samples"]:
                self.values[(name, frozenset(labels.items()))] = v

    def get(self, name, **labels):
        return self.values[(name, frozenset(labels.items()))]


def parse_exposition(text):
    if not text.endswith("\n"):
        raise ParseError("the exposition must end with a line feed")
    families, done, last = {}, set(), None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        try:
            if line == "":
                raise ParseError("empty line")
            if line.startswith("#"):
                m = re.fullmatch(r"# (HELP|TYPE) (\S+) (.*)", line)
                if not m:
                    raise ParseError("a comment that is not HELP or TYPE")
                kind, name, rest = m.groups()
                if not NAME_RE.fullmatch(name):
                    raise ParseError("bad family name %r" % name)
                fam = families.setdefault(
                    name, {"help": None, "type": None, "samples": []})
                if fam["samples"]:
                    raise ParseError("%s of %s after its samples" % (kind,
                                                                     name))
                key = kind.lower()
                if fam[key] is not None:
                    raise ParseError("second %s of %s" % (kind, name))
                if kind == "HELP":
                    fam["help"] = _unescape(rest, HELP_ESCAPES, "HELP")
                else:
                    if rest not in TYPES:
                        raise ParseError("unknown type %r" % rest)
                    fam["type"] = rest
                continue
            name, labels, v = _sample(line)
            fam_name = name
            if name not in families:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if base != name and families.get(base, {}).get("type") in (
                        "histogram", "summary"):
                    fam_name = base
            fam = families.get(fam_name)
            if fam is None or fam["help"] is None or fam["type"] is None:
                raise ParseError("sample %s without HELP and TYPE" % name)
            if fam["type"] == "histogram" and name == fam_name:
                raise ParseError("bare sample of histogram %s" % name)
            if fam_name != last:
                if fam_name in done:
                    raise ParseError("samples of %s are not together"
                                     % fam_name)
                if last is not None:
                    done.add(last)
                last = fam_name
            if any(s[0] == name and s[1] == labels for s in fam["samples"]):
                raise ParseError("repeated series %s %r" % (name, labels))
            fam["samples"].append((name, labels, v))
        except (ParseError, IndexError) as e:
            raise ParseError("line %d %r: %s" % (n, line, e or "truncated"))
    for fname, fam in families.items():
        if fam["type"] is None or fam["help"] is None:
            raise ParseError("%s lacks HELP or TYPE" % fname)
        if fam["type"] == "counter":
            for name, labels, v in fam["samples"]:
                assert v >= 0 and not math.isinf(v), (name, labels, v)
        if fam["type"] == "histogram":
            _check_histogram(fname, fam["samples"])
    return Exposition(families)


def _check_histogram(fname, samples):
    groups = {}
    for name, labels, v in samples:
        rest = frozenset((k, x) for k, x in labels.items() if k != "le")
        g = groups.setdefault(rest, {"buckets": [], "sum": None,
                                     "count": None})
        if name == fname + "_bucket":
            if "le" not in labels:
                raise ParseError("%s bucket without le" % fname)
            g["buckets"].append((_float(labels["le"]), v))
        elif name == fname + "_sum":
            g["sum"] = v
        elif name == fname + "_count":
            g["count"] = v
    for g in groups.values():
        les = [le for le, _ in g["buckets"]]
        counts = [c for _, c in g["buckets"]]
        if not les or les[-1] != math.inf:
            raise ParseError("%s: the last bucket must be +Inf" % fname)
        if les != sorted(les) or len(set(les)) != len(les):
            raise ParseError("%s: buckets not in increasing le" % fname)
        if counts != sorted(counts):
            raise ParseError("%s: buckets not cumulative" % fname)
        if g["count"] is None or g["sum"] is None:
            raise ParseError("%s: _sum or _count missing" % fname)
        if counts[-1] != g["count"]:
            raise ParseError("%s: +Inf %s != _count %s" % (
                fname, counts[-1], g["count"]))


def test_parser_is_strict():
    ok = ('# HELP a_total A \\\\ help\\nline.\n# TYPE a_total counter\n'
          'a_total{x="q\\"\\\\\\n"} 1\n')
    e = parse_exposition(ok)
    assert e.families["a_total"]["help"] == "A \\ help\nline."
    assert e.get("a_total", x='q"\\\n') == 1
    bad = [
        "a_total 1\n",                                      # no HELP/TYPE
        "# TYPE a_total counter\na_total 1\n",              # no HELP
        "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"\\t\"} 1\n",
        "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"a\"b\"} 1\n",
        "# HELP 1a h\n# TYPE 1a counter\n1a 1\n",
        "# HELP a h\n# TYPE a counter\na 1",                  # no final LF
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
        "h_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",   # not cumulative
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 0\nh_count 3\n",                             # +Inf != count
    ]
    for text in bad:
        try:
            parse_exposition(text)
        except ParseError:
            continue
        raise AssertionError("accepted: %r" % text)


# -- scraping --------------------------------------------------------------

FAMILIES = {
    "apigw_requests_total": "counter",
    "apigw_errors_total": "counter",
    "apigw_auth_requests_total": "counter",
    "apigw_auth_cache_lookups_total": "counter",
    "apigw_ratelimit_requests_total": "counter",
    "apigw_ratelimit_script_calls_total": "counter",
    "apigw_ratelimit_script_checks_total": "counter",
    "apigw_idempotency_requests_total": "counter",
    "apigw_idempotency_settled_total": "counter",
    "apigw_redis_commands_total": "counter",
    "apigw_redis_errors_total": "counter",
    "apigw_redis_timeouts_total": "counter",
    "apigw_redis_reconnects_total": "counter",
    "apigw_redis_error_replies_total": "counter",
    "apigw_redis_not_primary_total": "counter",
    "apigw_redis_latency_seconds": "histogram",
}

LE = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
      "0.25", "0.5", "1", "+Inf"]


def scrape(n, path="/metrics"):
    r = requests.get(n.url(path), timeout=5)
    assert r.status_code == 200, r.content
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert r.headers["Cache-Control"] == "no-store"
    assert int(r.headers["Content-Length"]) == len(r.content)
    e = parse_exposition(r.content.decode("utf-8"))
    assert {k: f["type"] for k, f in e.families.items()} == FAMILIES
    assert [s[1]["le"] for s in e.families["apigw_redis_latency_seconds"]
            ["samples"] if s[0].endswith("_bucket")] == LE
    return e


def series(name, **labels):
    return (name, frozenset(labels.items()))


def diff(before, after):
    assert set(before.values) <= set(after.values)
    return {k: v - before.values.get(k, 0) for k, v in after.values.items()}


def assert_moved(before, after, expected, loose=()):
    """Every series moved by exactly expected[series] (0 when absent),
    except those in loose (timing dependent), checked by the caller."""
    d = diff(before, after)
    for k in expected:
        assert k in d, "no series %r" % (k,)
    wrong = {k: (v, expected.get(k, 0)) for k, v in d.items()
             if k not in loose and v != expected.get(k, 0)}
    assert wrong == {}, "moved (got, expected): %r" % wrong
    return d


def req(name="apigw_requests_total", **labels):
    return series(name, **labels)


def err(code, cls):
    return series("apigw_errors_total", code=code, **{"class": cls})


LATENCY_LOOSE = [series("apigw_redis_latency_seconds_bucket", le=le)
                 for le in LE[:-2]]
LATENCY_LOOSE.append(series("apigw_redis_latency_seconds_sum"))


def check_latency(d, n):
    """n replies, each under a second; buckets cumulative in the diff too"""
    b = [d[series("apigw_redis_latency_seconds_bucket", le=le)] for le in LE]
    assert b == sorted(b) and b[-1] == n and b[-2] == n, b
    assert 0 <= d[series("apigw_redis_latency_seconds_sum")] <= n * 1.0


# -- the tests -------------------------------------------------------------

def test_known_sequence_moves_counters_exactly(nginx_factory, redis,
                                                upstream):
    gw = start(nginx_factory, redis, upstream)
    put_key(redis, KEY)
    put_key(redis, KEY_LATE)

    before = scrape(gw)

    for _ in range(3):
        assert requests.get(gw.url("/nope")).status_code == 404
    # a cache miss (Redis asked), then hits
    for _ in range(5):
        r = requests.get(gw.url("/api/echo"), headers=bearer(KEY))
        assert r.status_code == 200, r.content
    r = requests.get(gw.url("/api/echo"))
    assert json.loads(r.content)["error"]["code"] == "missing_credentials"
    # an unknown key: a miss, then a negative hit
    for _ in range(2):
        r = requests.get(gw.url("/api/echo"), headers=bearer(KEY_UNKNOWN))
        assert r.status_code == 401
        assert json.loads(r.content)["error"]["code"] == \
            "invalid_credentials"

    # Redis stopped: the lookup times out, the connection is dropped, and
    # it is restored once Redis is back
    redis.pause()
    try:
        r = requests.get(gw.url("/api/echo"), headers=bearer(KEY_LATE),
                         timeout=5)
        assert r.status_code == 503
        assert json.loads(r.content)["error"]["code"] == "auth_unavailable"
    finally:
        redis.resume()

    reconnects = series("apigw_redis_reconnects_total")
    wait_for(lambda: diff(before, scrape(gw))[reconnects] == 1, timeout=5,
             interval=0.1, what="the Redis connection to be restored")

    r = requests.get(gw.url("/api/echo"), headers=bearer(KEY_LATE))
    assert r.status_code == 200, r.content

    # 2r/m: two allowed, one refused by Redis, one by the worker's deny
    # cache; one after the other, each script call carries one check
    limited = [requests.get(gw.url("/limited/ok"),
                            headers={"X-Client": "seq"}).status_code
               for _ in range(4)]
    assert limited == [200, 200, 429, 429]

    expected = {
        req(outcome="ok"): 8,
        req(outcome="error"): 9,
        err("rate_limited", "4xx"): 2,
        req("apigw_ratelimit_requests_total", outcome="allowed"): 2,
        req("apigw_ratelimit_requests_total", outcome="denied"): 1,
        req("apigw_ratelimit_requests_total", outcome="denied_locally"): 1,
        series("apigw_ratelimit_script_calls_total"): 3,
        series("apigw_ratelimit_script_checks_total"): 3,
        err("not_found", "4xx"): 3,
        err("missing_credentials", "4xx"): 1,
        err("invalid_credentials", "4xx"): 2,
        err("auth_unavailable", "5xx"): 1,
        req("apigw_auth_requests_total", outcome="ok"): 6,
        req("apigw_auth_requests_total", outcome="missing_credentials"): 1,
        req("apigw_auth_requests_total", outcome="invalid_credentials"): 2,
        req("apigw_auth_requests_total", outcome="unavailable"): 1,
        req("apigw_auth_cache_lookups_total", outcome="hit"): 4,
        req("apigw_auth_cache_lookups_total", outcome="miss"): 4,
        req("apigw_auth_cache_lookups_total", outcome="negative_hit"): 1,
        series("apigw_redis_commands_total"): 7,
        series("apigw_redis_timeouts_total"): 1,
        series("apigw_redis_errors_total"): 0,
        reconnects: 1,
        series("apigw_redis_latency_seconds_bucket", le="1"): 6,
        series("apigw_redis_latency_seconds_bucket", le="+Inf"): 6,
        series("apigw_redis_latency_seconds_count"): 6,
    }

    # requests are counted in the log phase, just after the response went
    # out: give the last one a moment
    def settled():
        a = scrape(gw)
        d = diff(before, a)
        return d[req(outcome="ok")] == 8 and d[req(outcome="error")] == 9 \
            and a
    after = wait_for(settled, timeout=3, interval=0.05,
                     what="the last request to be counted")
    d = assert_moved(before, after, expected, loose=LATENCY_LOOSE)
    check_latency(d, 6)

    # defaults name the series, including those that never moved
    for code in ("rate_limited", "idempotency_key_mismatch", "not_found",
                 "internal_error"):
        cls = "5xx" if code == "internal_error" else "4xx"
        assert series("apigw_errors_total", code=code,
                      **{"class": cls}) in after.values
    gw.allow_log(r"redis")


def test_counters_summed_over_workers(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream, listen=" reuseport",
               worker_processes=2)
    before = scrape(gw)
    sent = 0

    def both_served():
        with open(gw.dir + "/pids.log") as f:
            pids = {ln.split()[0] for ln in f if ln.endswith(" 404\n")}
        return len(pids) == 2

    # a new connection each time, so that both workers serve some
    while sent < 20 or not both_served():
        assert sent < 400, "one worker served every connection"
        r = requests.get(gw.url("/nope"), headers={"Connection": "close"})
        assert r.status_code == 404
        sent += 1

    def settled():
        a = scrape(gw)
        return diff(before, a)[req(outcome="error")] == sent and a
    after = wait_for(settled, timeout=3, what="every request counted")
    assert_moved(before, after, {req(outcome="error"): sent,
                                 err("not_found", "4xx"): sent})
    # whichever worker answers the scrape, it reads every shard
    for _ in range(10):
        e = scrape(gw)
        assert e.values == after.values


def test_get_and_head_only(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)
    before = scrape(gw)

    r = requests.post(gw.url("/metrics/enveloped"), data=b"x",
                      headers={"X-Request-Id": "m1"})
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Allow"] == "GET, HEAD"
    doc = json.loads(r.content)
    assert doc["error"]["code"] == "method_not_allowed"
    assert doc["request_id"] == "m1"

    g = requests.get(gw.url("/metrics/enveloped"),
                     headers={"X-Request-Id": "m2"})
    assert g.status_code == 200 and g.headers["X-Request-Id"] == "m2"
    parse_exposition(g.text)
    h = requests.head(gw.url("/metrics/enveloped"))
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert h.headers["Cache-Control"] == "no-store"
    assert int(h.headers["Content-Length"]) > 0

    # the scrapes with apigw on are requests like any other
    def settled():
        a = scrape(gw)
        return diff(before, a)[req(outcome="ok")] == 2 and a
    after = wait_for(settled, timeout=3, what="scrapes counted")
    assert_moved(before, after, {req(outcome="ok"): 2,
                                 req(outcome="error"): 1,
                                 err("method_not_allowed", "4xx"): 1})


def test_codes_counted_by_default_name_and_class(nginx_factory, redis,
                                                 upstream, tmp_path):
    cat = tmp_path / "catalog.json"
    cat.write_text(json.dumps({
        "not_found": {"code": "simio_not_found"},
        "missing_credentials": {"code": "simio_no_key", "status": 503}}))
    gw = start(nginx_factory, redis, upstream,
               extra="apigw_error_catalog %s;" % cat)
    before = scrape(gw)

    r = requests.get(gw.url("/nope"))          # nginx's own 404, renamed
    assert json.loads(r.content)["error"]["code"] == "simio_not_found"
    r = requests.get(gw.url("/open/status/404?shape=html"))   # upstream's
    assert json.loads(r.content)["error"]["code"] == "simio_not_found"
    r = requests.get(gw.url("/api/echo"))      # moved to 503 by the catalog
    assert r.status_code == 503
    assert json.loads(r.content)["error"]["code"] == "simio_no_key"
    # an upstream's own code is kept, and counted as its status's code
    r = requests.get(gw.url("/open/status/402?shape=error_str"))
    assert json.loads(r.content)["error"]["code"] == "card_declined"
    # a body already in the configured shape passes: no envelope rendered
    r = requests.get(gw.url("/open/status/409?shape=error_obj"))
    assert json.loads(r.content)["error"]["code"] == "card_declined"
    r = requests.get(gw.url("/open/status/503?shape=html"))
    assert json.loads(r.content)["error"]["code"] == "service_unavailable"

    def settled():
        a = scrape(gw)
        return diff(before, a)[req(outcome="error")] == 6 and a
    after = wait_for(settled, timeout=3, what="requests counted")
    assert_moved(before, after, {
        req(outcome="error"): 6,
        err("not_found", "4xx"): 2,
        err("missing_credentials", "5xx"): 1,
        err("client_error", "4xx"): 1,
        err("service_unavailable", "5xx"): 1,
        req("apigw_auth_requests_total", outcome="missing_credentials"): 1,
    })
    # the code's usual class stays a series of its own
    assert err("missing_credentials", "4xx") in after.values
    text = requests.get(gw.url("/metrics")).text
    assert "simio" not in text and "card_declined" not in text


def test_counters_survive_reload(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)
    for _ in range(4):
        requests.get(gw.url("/nope"))

    def counted():
        a = scrape(gw)
        return a.get("apigw_errors_total", code="not_found",
                     **{"class": "4xx"}) == 4 and a
    before = wait_for(counted, timeout=3, what="requests counted")
    gw.reload()
    after = scrape(gw)
    assert after.values == before.values
    requests.get(gw.url("/nope"))
    wait_for(lambda: scrape(gw).get("apigw_requests_total",
                                    outcome="error") == 5,
             timeout=3, what="the new workers to count on")


def test_demo_conf_exposes_metrics(nginx_factory, redis, upstream):
    n = nginx_factory.example("demo", redis=redis, upstream=upstream,
                              dead_port=free_port())
    requests.get(n.url("/nope"))
    wait_for(lambda: scrape(n).get("apigw_errors_total", code="not_found",
                                   **{"class": "4xx"}) == 1,
             timeout=3, what="the 404 counted")
    r = requests.delete(n.url("/metrics"))
    assert r.status_code == 405
    assert json.loads(r.content)["error"]["code"] == "method_not_allowed"
