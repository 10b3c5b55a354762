"""apigw integration-test harness: real nginx, real redis-server, real upstream.

Every process runs on 127.0.0.1 on a free port, in the test's own tmp dir,
and is stopped by pid.  Every wait is bounded (HarnessError on timeout).

Fixtures (conftest.py; all started, all stopped at teardown, also on failure)
    redis           RedisServer on a free TCP port
    upstream        Upstream (tools/demo_upstream.py) on a free port
    nginx_factory   nginx_factory(http_conf, **Nginx kwargs) -> started Nginx
                    nginx_factory.example(name, **from_example kwargs)
                    (redis=/upstream= default to nothing: pass the fixtures)
    Autouse guard: after each test, every Nginx created during it (by the
    factory or directly) is stopped and its error log must have no "exited
    on signal", [alert] or [emerg] line unless allowed with
    nginx.allow_log(regex); a violation is an error at teardown.  A
    sanitizer report in the Nginx's dir (a file asan.<pid> / ubsan.<pid>
    written under APIGW_NGINX_PRELOAD, below, or report lines in error.log
    or nginx.stdout) is a violation too, whatever allow_log() says.

Environment (make test-asan / make test-valgrind set these)
    APIGW_MODULE         the .so to load instead of build/ (an ASan build)
    APIGW_NGINX_PRELOAD  a sanitizer runtime: nginx (and nginx -t) runs with
                         LD_PRELOAD of it (after a test's own LD_PRELOAD,
                         e.g. libfaketime, then with verify_asan_link_order
                         =0), and ASAN_OPTIONS / UBSAN_OPTIONS get
                         log_path=<nginx dir>/asan|ubsan appended
    APIGW_NGINX_WRAPPER  a command nginx runs under (e.g. valgrind ...;
                         "{dir}" becomes the Nginx's dir); nginx then runs
                         with master_process off (one process: valgrind
                         hides the workers' titles), so worker_pids() is
                         empty and reload() is not supported

Module level
    ROOT, MODULE (build/ngx_http_apigw_module.so), NGINX_BIN, PYTHON
    module_built() -> bool
    free_port() -> int                 never 80/6379, never handed out twice
    wait_for(pred, timeout=10, interval=0.05, what="...") -> pred's value
        (a HarnessError raised by pred ends the wait at once)
    raw_request(port, data, timeout=5.0, until_close=False) -> bytes
        sends raw bytes, returns what came back: one complete response
        (Content-Length, chunked, or close-delimited), or everything until
        the peer closes (until_close=True, e.g. pipelining), or what arrived
        before the timeout (b"" if nothing)
    parse_raw_response(data) -> (status, {lower name: [values]}, body)
        body de-chunked; parse_raw_responses(data) -> list of those
    det_bytes(n) -> the bytes /bytes/<n> of the upstream returns
    popen(argv, logfile, env=None) -> Popen (own session, output to
        logfile, SIGTERM when this process dies); terminate(proc, first=
        SIGTERM, timeout) -> exit code (then SIGKILL; reaped);
        signal_proc, wait_exit, tail(path, n), death_signal_kw():
        also what bench/bench.py and tools/soak.py run their processes with

RedisServer(tmpdir, port=None, unix_socket=False, password=None).start()
    .port .host .unix_path .addr ("127.0.0.1:P" / "unix:/p": apigw_redis)
    .client(decode=True, **kw) -> redis.Redis   .ping() -> bool
    .stop() (SIGTERM, bounded, then SIGKILL)  .kill() (SIGKILL)
    .pause()/.resume() (SIGSTOP/SIGCONT)  .restart() (same port, empty)
    .commandstats() -> {"evalsha": calls, ...}   .running  .pid

Upstream(tmpdir, port=None).start()
    .port .url(path)  .counts() .reset() .requests()  .stop() .kill()
    .start() again after stop/kill (same port): flapping tests
    .requests(): the last 1000 requests it saw (method, uri, headers)

Nginx(tmpdir, http_conf, *, module=True, worker_processes=1, env=None,
      port=None, redis=None, upstream=None, vars=None, main_conf="",
      log_level="debug")
    Writes tmpdir/nginx.conf: load_module (if module), user root (if run as
    root, so workers reach the private tmp dir), daemon off, master_process
    on, pid, error_log tmpdir/error.log <log_level>, events, http { log
    format "test" with $status (and $apigw_request_id $apigw_error_code
    when module) to tmpdir/access.log, temp paths in tmpdir, http_conf }.
    http_conf (and main_conf) placeholders; only these names are replaced,
    nginx's own braces and ${var} are left alone, an unknown {name} is an
    error:  {port} {upstream_port} {redis_port} {redis_addr} ("127.0.0.1:P"
    or "unix:/path", for apigw_redis) {dead_port} (a free port nothing
    listens on) {tmp} {root}, plus any name given in vars={...}
    redis= / upstream= take a RedisServer / Upstream or a port number.
    .start()  waits for the port and all workers; NginxError with the log
    .test_config() -> (rc, output) of nginx -t
    .reload(http_conf=None)  SIGHUP, waits for a new set of workers
    .stop()   SIGQUIT, bounded, then SIGTERM, then SIGKILL
    .url(path)  .port  .dead_port  .pid  .worker_pids()  .running
    .error_log() .access_log() -> str   .wait_log(regex, which="access")
    .allow_log(regex)   .log_problems() -> unexpected lines (the guard)
Nginx.from_example(name, tmpdir, *, port=None, redis=None, upstream=None,
                   dead_port=None, module=True, env=None)
    conf-examples/<name>(.conf) with its literal ports rewritten:
    (tools/exampleconf.py) 8080 -> port, 6390 -> redis, 9090 -> upstream,
    9091 -> dead_port (a free port where nothing listens), its load_module
    line -> MODULE; user root is added when run as root; module=False
    comments out load_module and the apigw* directives (plain skeleton);
    worker_processes=N overrides the example's.
"""

import errno
import hashlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.environ.get("APIGW_ROOT") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODULE = os.environ.get("APIGW_MODULE") or os.path.join(
    ROOT, "build", "ngx_http_apigw_module.so")
NGINX_PRELOAD = os.environ.get("APIGW_NGINX_PRELOAD", "")
NGINX_WRAPPER = os.environ.get("APIGW_NGINX_WRAPPER", "")
NGINX_BIN = "/usr/sbin/nginx"
REDIS_BIN = "/usr/bin/redis-server"
PYTHON = "/usr/bin/python3"
UPSTREAM_PY = os.path.join(ROOT, "tools", "demo_upstream.py")
EXAMPLES = os.path.join(ROOT, "conf-examples")


sys.path.insert(0, os.path.join(ROOT, "tools"))
import exampleconf  # noqa: E402  (the conf-examples/ convention)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class HarnessError(Exception):
    pass


class NginxError(HarnessError):
    pass


def module_built():
    return os.path.isfile(MODULE) and os.path.getsize(MODULE) > 0


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Calls pred() until it returns something truthy (returned), at most
    timeout seconds.  A HarnessError from pred ends the wait at once (e.g.
    the process died); other exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / max(interval, 0.001)) + 2):
        try:
            v = pred()
            if v:
                return v
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 - retried, reported at the end
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise HarnessError("timed out after %.1fs waiting for %s%s" % (
        timeout, what, " (last error: %r)" % last if last else ""))


_handed_out = set()
_RESERVED = {80, 6379, exampleconf.PORT, exampleconf.REDIS_PORT,
             exampleconf.UPSTREAM_PORT, exampleconf.DEAD_PORT}


def free_port():
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _handed_out and port not in _RESERVED:
            _handed_out.add(port)
            return port
    raise HarnessError("no free port found")


def port_open(port, host="127.0.0.1", timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def det_bytes(n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"apigw" + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


# -- processes -------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
try:
    import ctypes
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _prctl = None


def _child_setup():
    """In the child: die (SIGTERM) when the test process dies, so a killed
    pytest leaves no servers behind."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def death_signal_kw():
    """Popen keywords that give the child SIGTERM when this process dies;
    none while other threads run (preexec_fn is unsafe then)."""
    if threading.active_count() == 1 and _prctl is not None:
        return {"preexec_fn": _child_setup}
    return {}


def popen(argv, logfile, env=None):
    out = open(logfile, "ab")
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=env, close_fds=True, **death_signal_kw())
    finally:
        out.close()


def signal_proc(proc, sig):
    if proc is not None and proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def wait_exit(proc, timeout):
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def terminate(proc, first=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """first, then SIGKILL after timeout; reaps.  Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        signal_proc(proc, first)
        if not wait_exit(proc, timeout):
            signal_proc(proc, signal.SIGKILL)
            wait_exit(proc, 5.0)
    return proc.poll()


def tail(path, n=60):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


def _mkdir(path):
    os.makedirs(str(path), exist_ok=True)
    return os.path.abspath(str(path))


# -- redis -----------------------------------------------------------------

class RedisServer:
    def __init__(self, tmpdir, port=None, unix_socket=False, password=None):
        self.dir = _mkdir(tmpdir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.password = password
        self.unix_path = None
        if unix_socket:
            path = os.path.join(self.dir, "redis.sock")
            if len(path) > 100:  # sun_path limit
                import tempfile
                path = os.path.join(tempfile.mkdtemp(prefix="apigw-rs-"),
                                    "redis.sock")
            self.unix_path = path
        self.log = os.path.join(self.dir, "redis.log")
        self.proc = None

    @property
    def addr(self):
        """the apigw_redis address"""
        if self.unix_path:
            return "unix:" + self.unix_path
        return "%s:%d" % (self.host, self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        if self.running:
            return self
        argv = [REDIS_BIN, "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--logfile", self.log,
                "--protected-mode", "no"]
        if self.unix_path:
            argv += ["--unixsocket", self.unix_path, "--unixsocketperm", "777"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = popen(argv, os.path.join(self.dir, "redis.stdout"))

        def up():
            if self.proc.poll() is not None:
                raise HarnessError("redis-server exited rc=%s\n%s" % (
                    self.proc.returncode, tail(self.log)))
            return self.ping()
        try:
            wait_for(up, START_TIMEOUT, what="redis-server PING on %d"
                     % self.port)
        except HarnessError:
            self.kill()
            raise HarnessError("redis-server did not start on %d\n%s" % (
                self.port, tail(self.log)))
        return self

    def client(self, decode=True, **kw):
        import redis
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        kw.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port,
                           decode_responses=decode, **kw)

    def ping(self):
        try:
            c = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                return bool(c.ping())
            finally:
                c.close()
        except Exception:  # noqa: BLE001
            return False

    def commandstats(self):
        """{command: calls} from INFO commandstats ("evalsha", "get", ...)"""
        c = self.client()
        try:
            info = c.info("commandstats")
        finally:
            c.close()
        out = {}
        for k, v in info.items():
            name = k[len("cmdstat_"):] if k.startswith("cmdstat_") else k
            if isinstance(v, dict):
                out[name] = int(v.get("calls", 0))
            else:  # older redis-py: "calls=1,usec=..." strings
                m = re.search(r"calls=(\d+)", str(v))
                out[name] = int(m.group(1)) if m else 0
        return out

    def pause(self):
        signal_proc(self.proc, signal.SIGSTOP)

    def resume(self):
        signal_proc(self.proc, signal.SIGCONT)

    def stop(self):
        if self.proc is not None:
            signal_proc(self.proc, signal.SIGCONT)  # a paused redis ignores TERM
            terminate(self.proc, signal.SIGTERM)

    def kill(self):
        if self.proc is not None:
            signal_proc(self.proc, signal.SIGCONT)
            terminate(self.proc, signal.SIGKILL, timeout=5.0)

    def restart(self):
        self.stop()
        # the port may linger for a moment after the exit
        wait_for(lambda: not port_open(self.port), 5.0,
                 what="redis port %d to close" % self.port)
        return self.start()


# -- upstream --------------------------------------------------------------

class Upstream:
    def __init__(self, tmpdir, port=None):
        self.dir = _mkdir(tmpdir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log = os.path.join(self.dir, "upstream.log")
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def url(self, path="/"):
        return "http://%s:%d%s" % (self.host, self.port, path)

    def _get(self, method, path, timeout=5.0):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def start(self):
        if self.running:
            return self
        self.proc = popen([PYTHON, UPSTREAM_PY, "--host", self.host,
                            "--port", str(self.port)], self.log)

        def up():
            if self.proc.poll() is not None:
                raise HarnessError("demo_upstream exited rc=%s\n%s" % (
                    self.proc.returncode, tail(self.log)))
            return self._get("GET", "/ok", 0.5)[0] == 200
        try:
            wait_for(up, START_TIMEOUT, what="upstream on %d" % self.port)
        except HarnessError:
            self.kill()
            raise HarnessError("upstream did not start on %d\n%s" % (
                self.port, tail(self.log)))
        return self

    def counts(self):
        return json.loads(self._get("GET", "/__counts")[1])

    def requests(self):
        return json.loads(self._get("GET", "/__requests")[1])

    def reset(self):
        self._get("POST", "/__reset")

    def stop(self):
        terminate(self.proc, signal.SIGTERM)

    def kill(self):
        terminate(self.proc, signal.SIGKILL, timeout=5.0)


# -- nginx -----------------------------------------------------------------

_PLACEHOLDER_RE = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PROBLEM_RE = re.compile(r"exited on signal|\[alert\]|\[emerg\]")
_SANITIZER_RE = re.compile(r"==\d+==ERROR: \w+Sanitizer|SUMMARY: \w+Sanitizer"
                           r"|\S+:\d+:\d+: runtime error: ")

# every Nginx created since the guard last looked (see conftest.py)
_instances = []


def _port_of(x):
    if x is None or isinstance(x, int):
        return x
    return x.port


class Nginx:
    def __init__(self, tmpdir, http_conf, *, module=True, worker_processes=1,
                 env=None, port=None, redis=None, upstream=None, vars=None,
                 main_conf="", log_level="debug", _full_conf=None):
        self.dir = _mkdir(tmpdir)
        self._dead_port = None
        self.module = module
        self.worker_processes = worker_processes
        self.env = env
        self.port = port or free_port()
        self.redis = redis
        self.upstream = upstream
        self.vars = dict(vars or {})
        self.main_conf = main_conf
        self.log_level = log_level
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self.error_log_path = os.path.join(self.dir, "error.log")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.stdout_path = os.path.join(self.dir, "nginx.stdout")
        self.pid_path = os.path.join(self.dir, "nginx.pid")
        self.proc = None
        self.allowed = []
        self._seen_workers = set()
        self._full_conf = _full_conf
        self.http_conf = http_conf
        if module and not module_built():
            raise HarnessError("module not built: %s (run `make build`)"
                               % MODULE)
        _instances.append(self)

    # -- configuration --

    def _values(self):
        v = {"port": self.port, "tmp": self.dir, "root": ROOT,
             "dead_port": self.dead_port}
        if self.upstream is not None:
            v["upstream_port"] = _port_of(self.upstream)
        if self.redis is not None:
            v["redis_port"] = _port_of(self.redis)
            v["redis_addr"] = (self.redis.addr if hasattr(self.redis, "addr")
                               else "127.0.0.1:%d" % self.redis)
        v.update(self.vars)
        return v

    def substitute(self, text):
        values = self._values()

        def rep(m):
            name = m.group(1)
            if name not in values:
                raise HarnessError(
                    "placeholder {%s} has no value (known: %s)" % (
                        name, ", ".join(sorted(values))))
            return str(values[name])
        return _PLACEHOLDER_RE.sub(rep, text)

    def render(self):
        """the whole nginx.conf text"""
        if self._full_conf is not None:
            return self._full_conf
        d = self.dir
        vars_ = (" rid=$apigw_request_id err=$apigw_error_code"
                 if self.module else "")
        lines = []
        if self.module:
            lines.append("load_module %s;" % MODULE)
        if os.geteuid() == 0:
            lines.append("user root;")
        lines += [
            "daemon off;",
            "master_process %s;" % ("off" if NGINX_WRAPPER else "on"),
            "worker_processes %d;" % self.worker_processes,
            "pid %s;" % self.pid_path,
            "lock_file %s/nginx.lock;" % d,
            "error_log %s %s;" % (self.error_log_path, self.log_level),
            self.substitute(self.main_conf),
            "events { worker_connections 1024; }",
            "http {",
            "    log_format test '$remote_addr \"$request\" $status "
            "$body_bytes_sent%s rt=$request_time';" % vars_,
            "    access_log %s test;" % self.access_log_path,
            "    client_body_temp_path %s/client_body;" % d,
            "    proxy_temp_path %s/proxy;" % d,
            "    fastcgi_temp_path %s/fastcgi;" % d,
            "    uwsgi_temp_path %s/uwsgi;" % d,
            "    scgi_temp_path %s/scgi;" % d,
            "",
            self.substitute(self.http_conf),
            "}",
            ""]
        return "\n".join(lines)

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write(self.render())

    @classmethod
    def from_example(cls, name, tmpdir, *, port=None, redis=None,
                     upstream=None, dead_port=None, module=True, env=None,
                     worker_processes=None):
        """A conf-examples/ file with its literal ports and load_module
        rewritten (worker_processes=N also overrides that directive)."""
        path = os.path.join(EXAMPLES, name)
        if not os.path.exists(path) and not name.endswith(".conf"):
            path += ".conf"
        with open(path) as f:
            text = f.read()
        port = port or free_port()
        dead_port = dead_port or free_port()
        text = rewrite_example(
            text, port=port, redis_port=_port_of(redis),
            upstream_port=_port_of(upstream), dead_port=dead_port,
            module=module)
        if os.geteuid() == 0 and not re.search(r"^\s*user\s", text, re.M):
            text = "user root;  # added by the test harness\n" + text
        if worker_processes is not None:
            text = re.sub(r"^(\s*worker_processes\s+)\S+;",
                          r"\g<1>%d;" % worker_processes, text, flags=re.M)
        n = cls(tmpdir, "", module=module, env=env, port=port, redis=redis,
                upstream=upstream, _full_conf=text,
                worker_processes=worker_processes or _example_workers(text))
        n._dead_port = dead_port
        return n

    @property
    def dead_port(self):
        """a free port nothing listens on (an upstream that is down)"""
        if self._dead_port is None:
            self._dead_port = free_port()
        return self._dead_port

    # -- processes --

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _argv(self, *extra):
        wrapper = [a.replace("{dir}", self.dir)
                   for a in shlex.split(NGINX_WRAPPER)]
        return wrapper + [NGINX_BIN, "-p", self.dir + "/", "-c",
                          self.conf_path] + list(extra)

    def _env(self):
        if not self.env and not NGINX_PRELOAD:
            return None
        e = dict(os.environ)
        e.update({k: str(v) for k, v in (self.env or {}).items()})
        if NGINX_PRELOAD:
            # what a test preloads itself comes first: libfaketime hangs
            # when loaded after the ASan runtime, which works after it
            # when told not to insist on being first
            own = (self.env or {}).get("LD_PRELOAD")
            e["LD_PRELOAD"] = " ".join(filter(None, [own, NGINX_PRELOAD]))
            for var, name in (("ASAN_OPTIONS", "asan"),
                              ("UBSAN_OPTIONS", "ubsan")):
                e[var] = ":".join(filter(None, [
                    e.get(var),
                    "verify_asan_link_order=0" if own and name == "asan"
                    else "",
                    "log_path=" + os.path.join(self.dir, name)]))
        return e

    def test_config(self):
        """(rc, output) of nginx -t on the config as it is now"""
        self.write_config()
        p = subprocess.run(self._argv("-t", "-e", "stderr"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=self._env(),
                           timeout=30)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def start(self):
        if self.running:
            return self
        self.write_config()
        self.proc = popen(self._argv("-e", self.error_log_path),
                           self.stdout_path, env=self._env())

        def up():
            if self.proc.poll() is not None:
                raise NginxError("nginx exited rc=%s" % self.proc.returncode)
            return port_open(self.port)
        try:
            wait_for(up, START_TIMEOUT, what="nginx on port %d" % self.port)
            if not NGINX_WRAPPER:
                wait_for(lambda: (self.proc.poll() is None and len(
                    self.worker_pids()) >= self.worker_processes),
                    START_TIMEOUT,
                    what="%d nginx workers" % self.worker_processes)
        except HarnessError as e:
            self.stop()
            raise NginxError("nginx did not start: %s\n--- nginx.conf ---\n%s"
                             "\n--- error.log (tail) ---\n%s\n%s" % (
                                 e, self.render(), tail(self.error_log_path),
                                 tail(self.stdout_path, 20)))
        return self

    def worker_pids(self, include_exiting=False):
        """pids of the master's worker processes"""
        if not self.running:
            return []
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != self.proc.pid:
                    continue
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(
                        "utf-8", "replace")
            except (OSError, ValueError, IndexError):
                continue
            if "worker process" not in cmd:
                continue
            if "shutting down" in cmd and not include_exiting:
                continue
            out.append(int(d))
        self._seen_workers.update(out)
        return sorted(out)

    def reload(self, http_conf=None):
        """Rewrites the config (with http_conf if given), SIGHUPs the
        master and waits for a full set of new workers, the old ones
        exiting.  NginxError (with the log) when nginx refuses the new
        config: the test must then allow_log(r"\\[emerg\\]")."""
        if not self.running:
            raise NginxError("reload: nginx is not running")
        if http_conf is not None:
            self.http_conf = http_conf
        self.write_config()
        old = set(self.worker_pids(include_exiting=True))
        try:
            offset = os.path.getsize(self.error_log_path)
        except OSError:
            offset = 0
        signal_proc(self.proc, signal.SIGHUP)

        def new_workers():
            with open(self.error_log_path, "rb") as f:
                f.seek(offset)
                fresh = f.read().decode("utf-8", "replace")
            if "[emerg]" in fresh:
                raise NginxError("reload refused:\n" + fresh[-4000:])
            if self.proc.poll() is not None:
                raise NginxError("nginx exited during reload")
            now = set(self.worker_pids())
            # a full new set, and the old ones exiting or gone
            return (len(now - old) >= self.worker_processes
                    and not now & old)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if new_workers():
                    return self
            except NginxError as e:
                raise NginxError("%s\n--- error.log (tail) ---\n%s" % (
                    e, tail(self.error_log_path)))
            if time.monotonic() > deadline:
                raise NginxError("reload: no new workers after %.0fs\n%s" % (
                    START_TIMEOUT, tail(self.error_log_path)))
            time.sleep(0.05)

    def stop(self):
        """graceful (SIGQUIT), then SIGTERM, then SIGKILL; leftover workers
        are killed by pid.  Returns the master's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.worker_pids(include_exiting=True)
        rc = self.proc.poll()
        if rc is None:
            signal_proc(self.proc, signal.SIGQUIT)
            if not wait_exit(self.proc, STOP_TIMEOUT):
                signal_proc(self.proc, signal.SIGTERM)
                if not wait_exit(self.proc, 5.0):
                    signal_proc(self.proc, signal.SIGKILL)
                    wait_exit(self.proc, 5.0)
            rc = self.proc.poll()
        for pid in self._seen_workers:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if b"nginx" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        self._seen_workers.clear()
        return rc

    # -- logs --

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def error_log(self):
        return self._read(self.error_log_path)

    def access_log(self):
        return self._read(self.access_log_path)

    def wait_log(self, regex, which="access", timeout=5.0):
        """the first line of the access (or error) log matching regex,
        waiting for it (logs are written after the response is sent)"""
        rx = re.compile(regex)
        path = self.access_log_path if which == "access" \
            else self.error_log_path

        def find():
            for line in self._read(path).splitlines():
                if rx.search(line):
                    return line
            return None
        return wait_for(find, timeout, what="%s log line /%s/" % (
            which, regex))

    def allow_log(self, regex):
        """lines matching regex are not reported by the crash guard"""
        self.allowed.append(re.compile(regex))

    def log_problems(self):
        """error-log lines the guard rejects: 'exited on signal', [alert],
        [emerg], except those matching allow_log() patterns"""
        out = []
        for line in self.error_log().splitlines():
            if _PROBLEM_RE.search(line) and not any(
                    a.search(line) for a in self.allowed):
                out.append(line)
        return out

    def sanitizer_reports(self):
        """[(path, text)] of ASan/UBSan reports this nginx wrote (see
        APIGW_NGINX_PRELOAD): report files, and report lines in what nginx
        made of its stderr (error.log, nginx.stdout) where a runtime that
        ignores log_path writes; never allowed"""
        out = []
        for name in sorted(os.listdir(self.dir)):
            if re.match(r"(asan|ubsan)\.\d+$", name):
                path = os.path.join(self.dir, name)
                out.append((path, self._read(path)))
        for path in (self.error_log_path, self.stdout_path):
            lines = [ln for ln in self._read(path).splitlines()
                     if _SANITIZER_RE.match(ln)]
            if lines:
                out.append((path, "\n".join(lines)))
        return out


def _example_workers(text):
    m = re.search(r"^\s*worker_processes\s+(\d+)\s*;", text, re.M)
    return int(m.group(1)) if m else 1


def rewrite_example(text, *, port, redis_port=None, upstream_port=None,
                    dead_port=None, module=True):
    """tools/exampleconf.py's rewrite with the built module"""
    return exampleconf.rewrite(
        text, port=port, redis_port=redis_port, upstream_port=upstream_port,
        dead_port=dead_port, module_path=MODULE, without_module=not module)


def check_instances(instances):
    """Stops each Nginx and raises AssertionError listing every unexpected
    error-log line (the autouse guard in conftest.py calls this)."""
    problems = []
    for n in instances:
        try:
            n.stop()
        except Exception as e:  # noqa: BLE001
            problems.append("%s: stop failed: %r" % (n.dir, e))
        for line in n.log_problems():
            problems.append("%s: %s" % (n.error_log_path, line))
        for path, text in n.sanitizer_reports():
            problems.append("%s:\n%s" % (path, "\n".join(
                text.splitlines()[:60])))
    if problems:
        raise AssertionError(
            "nginx error log shows a crash or an alert (use "
            "nginx.allow_log(regex) if expected), or a sanitizer "
            "reported:\n" + "\n".join(problems))


# -- raw HTTP --------------------------------------------------------------

def _response_end(data, head_request=False):
    """index just past the first complete response in data, or None
    (needs more) or -1 (delimited by close)"""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = data[:i].decode("latin-1")
    start = i + 4
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return -1
    if 100 <= status < 200 and status != 101:
        rest = _response_end(data[start:], head_request)
        return None if rest is None else (
            -1 if rest == -1 else start + rest)
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    if head_request or status in (204, 304):
        return start
    if "chunked" in ",".join(hdrs.get("transfer-encoding", [])).lower():
        pos = start
        while True:
            j = data.find(b"\r\n", pos)
            if j < 0:
                return None
            try:
                size = int(data[pos:j].split(b";")[0].strip(), 16)
            except ValueError:
                return -1
            if size == 0:
                k = data.find(b"\r\n\r\n", j)
                if data[j:j + 4] == b"\r\n\r\n":
                    return j + 4
                return None if k < 0 else k + 4
            pos = j + 2 + size + 2
            if pos > len(data):
                return None
    if "content-length" in hdrs:
        try:
            n = int(hdrs["content-length"][0])
        except ValueError:
            return -1
        return start + n if len(data) >= start + n else None
    return -1


def raw_request(port, data, timeout=5.0, until_close=False,
                host="127.0.0.1"):
    """Sends data as is; returns the raw bytes of the answer (see top)."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    head_req = data.lstrip().upper().startswith(b"HEAD ")
    deadline = time.monotonic() + timeout
    buf = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if not until_close:
                end = _response_end(buf, head_req)
                if end is not None and end != -1:
                    return buf
    return buf


def parse_raw_responses(data, head_request=False):
    """every response in data -> [(status, headers, body), ...]"""
    out = []
    for _ in range(1000):
        if not data:
            break
        end = _response_end(data, head_request)
        if end is None or end == -1:
            end = len(data)
        out.append(_parse_one(data[:end]))
        data = data[end:]
    return out


def parse_raw_response(data, head_request=False):
    """(status, {lowercased name: [values]}, body bytes, de-chunked)"""
    if not data:
        raise ValueError("empty response")
    end = _response_end(data, head_request)
    if end is None or end == -1:
        end = len(data)
    return _parse_one(data[:end])


def _parse_one(data):
    i = data.find(b"\r\n\r\n")
    if i < 0:
        raise ValueError("incomplete response head: %r" % data[:200])
    lines = data[:i].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError("bad status line: %r" % lines[0])
    status = int(parts[1])
    body = data[i + 4:]
    if 100 <= status < 200 and status != 101:
        return _parse_one(body)
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        out, pos = bytearray(), 0
        for _ in range(len(body) + 1):
            j = body.find(b"\r\n", pos)
            if j < 0:
                break
            size = int(body[pos:j].split(b";")[0].strip(), 16)
            if size == 0:
                break
            out += body[j + 2:j + 2 + size]
            pos = j + 2 + size + 2
        body = bytes(out)
    return status, headers, body

