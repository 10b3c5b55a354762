#!/usr/bin/env python3
"""apigw demo (`make run`): a private redis-server, the demo upstream and
nginx with the freshly built module, all on loopback, in the foreground.

    /usr/bin/python3 tools/demo.py [--listen 127.0.0.1:8080]
        [--redis-port 6390] [--upstream-port 9090] [--dead-port 9091]
        [--conf conf-examples/demo.conf] [--keep] [--tmpdir DIR]

It rewrites the conf-examples/ file (tools/exampleconf.py: ports and the
load_module path) into a fresh prefix directory, checks it with nginx -t,
starts everything, prints curl lines to try, and waits.  Ctrl-C (SIGINT) or
SIGTERM stops everything it started, by pid.  Exits 1 if any piece fails to
start or dies, 0 after a clean stop.

--without-module runs the plain-nginx skeleton of the config (load_module
and apigw* directives commented out): the harness self-test uses it to check
this script before the module builds.  --exit-after S stops by itself after
S seconds (tests).
"""

import argparse
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import exampleconf  # noqa: E402

MODULE = os.path.join(ROOT, "build", "ngx_http_apigw_module.so")
KEYS = os.path.join(ROOT, "build", "apigw-keys")
NGINX = "/usr/sbin/nginx"
REDIS = "/usr/bin/redis-server"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") \
    else sys.executable

# How the demo asks apigw-keys for a key: {redis} is the redis address.
KEYS_CREATE = ["--redis", "{redis}", "create", "--tenant", "demo",
               "--key-id", "demo-key", "--scopes", "read write",
               "--prefix", "demo_"]
KEY_RE = re.compile(r"\b(demo_[A-Za-z0-9]{16,})\b")


class Stop(Exception):
    """a signal asked us to stop"""


class Failed(Exception):
    """a piece failed to start or died"""


def log(msg):
    print("demo: " + msg, flush=True)


def port_in_use(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def accepts(host, port, timeout=0.3):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_get(host, port, path, timeout=2.0):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _pdeathsig():
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort
        pass


class Demo:
    def __init__(self, a):
        self.a = a
        host, _, port = a.listen.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.client_host = "127.0.0.1" if self.host in ("0.0.0.0", "") \
            else self.host
        self.procs = []      # (name, Popen), in start order
        self.prefix = None

    # -- processes --

    def spawn(self, name, argv, logname):
        f = open(os.path.join(self.prefix, logname), "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT,
                                 start_new_session=True,
                                 preexec_fn=_pdeathsig)
        finally:
            f.close()
        self.procs.append((name, p))
        return p

    def wait_until(self, name, proc, pred, timeout, logname):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Failed("%s exited (rc=%s) while starting:\n%s" % (
                    name, proc.returncode, self.tail(logname)))
            if pred():
                return
            time.sleep(0.1)
        raise Failed("%s did not come up within %ds:\n%s" % (
            name, timeout, self.tail(logname)))

    def tail(self, logname, n=25):
        try:
            with open(os.path.join(self.prefix, logname), "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join("    " + ln for ln in lines[-n:])
        except OSError:
            return "    (no %s)" % logname

    def stop_all(self):
        for name, p in reversed(self.procs):
            if p.poll() is not None:
                continue
            # nginx: graceful; the others: SIGTERM
            p.send_signal(signal.SIGQUIT if name == "nginx"
                          else signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) did not stop, killing it" % (name, p.pid))
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    # -- steps --

    def preflight(self):
        for path in (NGINX, REDIS):
            if not os.access(path, os.X_OK):
                raise Failed("%s not found: run `make deps` (as root)" % path)
        if not self.a.without_module and not (
                os.path.isfile(MODULE) and os.path.getsize(MODULE) > 0):
            raise Failed("%s is not built: run `make build`" % MODULE)
        for what, host, port in (
                ("nginx", self.host, self.port),
                ("redis", "127.0.0.1", self.a.redis_port),
                ("upstream", "127.0.0.1", self.a.upstream_port)):
            if port in (80, 6379):
                raise Failed("refusing port %d for %s" % (port, what))
            if port_in_use(host, port):
                raise Failed("port %d (%s) is in use: another `make run`? "
                             "Choose other ports with --listen, "
                             "--redis-port, --upstream-port" % (port, what))
        if accepts("127.0.0.1", self.a.dead_port):
            log("warning: something listens on %d, the 'upstream down' "
                "example will not show a 502" % self.a.dead_port)

    def start_redis(self):
        rdir = os.path.join(self.prefix, "redis")
        os.makedirs(rdir)
        p = self.spawn("redis", [
            REDIS, "--port", str(self.a.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", rdir,
            "--daemonize", "no", "--protected-mode", "no"], "redis.log")
        self.wait_until("redis-server", p,
                        lambda: redis_ping(self.a.redis_port), 10,
                        "redis.log")

    def start_upstream(self):
        p = self.spawn("upstream", [
            PYTHON, os.path.join(ROOT, "tools", "demo_upstream.py"),
            "--host", "127.0.0.1", "--port", str(self.a.upstream_port)],
            "upstream.log")

        def ok():
            try:
                return http_get("127.0.0.1", self.a.upstream_port,
                                "/ok", 0.5)[0] == 200
            except OSError:
                return False
        self.wait_until("demo upstream", p, ok, 10, "upstream.log")

    def write_conf(self):
        with open(self.a.conf) as f:
            text = f.read()
        text = exampleconf.rewrite(
            text, port=self.port, listen_host=self.host,
            redis_port=self.a.redis_port,
            upstream_port=self.a.upstream_port, dead_port=self.a.dead_port,
            module_path=MODULE, without_module=self.a.without_module)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(text)

    def start_nginx(self):
        base = [NGINX, "-p", self.prefix + "/", "-c", self.conf]
        t = subprocess.run(base + ["-t", "-e", "stderr"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if t.returncode != 0:
            raise Failed("nginx -t rejected %s:\n%s" % (
                self.conf, t.stdout.decode("utf-8", "replace")))
        p = self.spawn("nginx", base + ["-e", os.path.join(
            self.prefix, "error.log")], "nginx.stdout")
        self.wait_until("nginx", p,
                        lambda: accepts(self.client_host, self.port), 15,
                        "error.log")

        def answers():
            try:
                return http_get(self.client_host, self.port,
                                "/api/ok")[0] == 200
            except OSError:
                return False
        self.wait_until("nginx -> upstream", p, answers, 10, "error.log")

    def demo_key(self):
        """a key from build/apigw-keys, or None (the tool is optional)"""
        if not (os.path.isfile(KEYS) and os.path.getsize(KEYS) > 0
                and os.access(KEYS, os.X_OK)):
            return None
        argv = [KEYS] + [x.replace("{redis}", "127.0.0.1:%d"
                                   % self.a.redis_port) for x in KEYS_CREATE]
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as e:
            log("apigw-keys failed (%s); no demo key" % e)
            return None
        out = r.stdout.decode("utf-8", "replace")
        m = KEY_RE.search(out)
        if r.returncode != 0 or not m:
            log("apigw-keys did not create a key (rc=%d):\n%s" % (
                r.returncode, out.strip()))
            return None
        return m.group(1)

    def banner(self, key):
        u = "http://%s:%d" % (self.client_host, self.port)
        lines = [
            "",
            "apigw demo ready: %s" % u,
            "  prefix %s (nginx.conf, error.log, access.log)" % self.prefix,
            "  redis 127.0.0.1:%d, upstream 127.0.0.1:%d" % (
                self.a.redis_port, self.a.upstream_port),
            "",
            "Try:",
            "  # 200 from the upstream, your X-Request-Id kept and echoed",
            "  curl -i -H 'X-Request-Id: demo-123' %s/api/echo" % u,
            "  # 404: no such route (nginx's own 404 as an envelope)",
            "  curl -i %s/nope" % u,
            "  # 502: the upstream of this location is down",
            "  curl -i %s/down/" % u,
            "  # 504: the upstream takes 3 s, the location waits 1 s",
            "  curl -i %s/slow/3000" % u,
            "  # an upstream HTML 500 page, normalized",
            "  curl -i '%s/api/status/500?shape=html'" % u,
            "  # foreign JSON errors, normalized (FastAPI, {error,message})",
            "  curl -i '%s/api/status/422?shape=fastapi'" % u,
            "  curl -i '%s/api/status/402?shape=error_str'" % u,
            "  # the same error as RFC 9457 problem+json",
            "  curl -i '%s/problem/status/500?shape=html'" % u,
            "  # 413: a 2 MB body over client_max_body_size 1m",
            "  head -c 2000000 /dev/zero | curl -i --data-binary @- %s/api/echo"
            % u,
        ]
        if key:
            lines += [
                "",
                "Demo API key (tenant demo, scopes 'read write'): %s" % key,
                "  # 200: the upstream sees X-Apigw-Tenant, not the key",
                "  curl -i -H %s %s/v1/echo" % (
                    shlex.quote("Authorization: Bearer " + key), u),
                "  # 429 rate_limited after 10 quick ones (X-RateLimit-*)",
                "  for i in $(seq 12); do curl -s -o /dev/null -w '%%{http_code} '"
                " -H %s %s/v1/ok; done; echo" % (
                    shlex.quote("Authorization: Bearer " + key), u),
                "  # a POST with an Idempotency-Key, sent twice: the second "
                "is a replay",
                "  curl -i -X POST -d '{\"amount\":5}' -H %s "
                "-H 'Idempotency-Key: order-1' %s/v1/payments/charge" % (
                    shlex.quote("Authorization: Bearer " + key), u),
                "  # 403 scope_required: the key lacks 'admin'",
                "  curl -i -H %s %s/v1/admin/echo" % (
                    shlex.quote("Authorization: Bearer " + key), u),
                "  # 401 missing_credentials / invalid_credentials",
                "  curl -i %s/v1/echo" % u,
                "  curl -i -H 'Authorization: Bearer nope_nope_nope_nope' "
                "%s/v1/echo" % u,
            ]
        lines += ["", "Ctrl-C stops nginx, the upstream and redis.", ""]
        print("\n".join(lines), flush=True)

    def run(self):
        self.preflight()
        self.prefix = tempfile.mkdtemp(prefix="apigw-demo-",
                                       dir=self.a.tmpdir)
        os.chmod(self.prefix, 0o755)  # workers (nobody) write temp files
        self.start_redis()
        self.start_upstream()
        self.write_conf()
        self.start_nginx()
        self.banner(self.demo_key())
        deadline = (time.monotonic() + self.a.exit_after
                    if self.a.exit_after else None)
        while deadline is None or time.monotonic() < deadline:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise Failed("%s exited (rc=%s):\n%s" % (
                        name, p.returncode, self.tail(
                            "error.log" if name == "nginx"
                            else name + ".log")))
            time.sleep(0.5)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="apigw demo: redis, demo upstream and nginx on loopback")
    ap.add_argument("--listen", default="127.0.0.1:%d" % exampleconf.PORT)
    ap.add_argument("--redis-port", type=int, default=exampleconf.REDIS_PORT)
    ap.add_argument("--upstream-port", type=int,
                    default=exampleconf.UPSTREAM_PORT)
    ap.add_argument("--dead-port", type=int, default=exampleconf.DEAD_PORT)
    ap.add_argument("--conf", default=os.path.join(ROOT, "conf-examples",
                                                   "demo.conf"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the prefix directory (logs) on exit")
    ap.add_argument("--tmpdir", default=None,
                    help="where to make the prefix directory (default: the "
                    "system's temp dir)")
    ap.add_argument("--without-module", action="store_true",
                    help=argparse.SUPPRESS)
    ap.add_argument("--exit-after", type=float, default=0,
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    d = Demo(a)
    rc = 0
    try:
        d.run()
        log("--exit-after reached, stopping")
    except Stop as e:
        log("%s: stopping" % e)
    except Failed as e:
        log("FAILED: %s" % e)
        rc = 1
    except Exception as e:  # noqa: BLE001 - still stop what we started
        log("FAILED: %r" % e)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        d.stop_all()
        if d.prefix:
            if rc == 0 and not a.keep:
                shutil.rmtree(d.prefix, ignore_errors=True)
            else:
                log("logs kept in %s" % d.prefix)
    log("stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
