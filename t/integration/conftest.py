"""pytest fixtures for the apigw integration tests; the API is documented at
the top of harness.py."""

import pytest

import harness
from harness import Nginx, RedisServer, Upstream


@pytest.fixture(autouse=True)
def _nginx_crash_guard():
    """After every test: each Nginx created in it is stopped, and its error
    log must show no worker crash ('exited on signal'), [alert] or [emerg]
    unless the test allowed it with nginx.allow_log(regex), and it must
    have written no ASan/UBSan report (make test-asan)."""
    del harness._instances[:]
    yield
    instances = list(harness._instances)
    del harness._instances[:]
    harness.check_instances(instances)


@pytest.fixture
def redis(tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def upstream(tmp_path):
    u = Upstream(tmp_path / "upstream").start()
    yield u
    u.stop()


class NginxFactory:
    """nginx_factory(http_conf, start=True, **Nginx kwargs) -> Nginx, each
    in its own tmp_path/nginxN; .example(name, start=True, **kwargs) for
    Nginx.from_example.  All are stopped at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.instances = []

    def _dir(self):
        return self.tmp_path / ("nginx%d" % len(self.instances))

    def __call__(self, http_conf, start=True, **kw):
        n = Nginx(self._dir(), http_conf, **kw)
        self.instances.append(n)
        return n.start() if start else n

    def example(self, name, start=True, **kw):
        n = Nginx.from_example(name, self._dir(), **kw)
        self.instances.append(n)
        return n.start() if start else n

    def stop_all(self):
        for n in self.instances:
            try:
                n.stop()
            except Exception:  # noqa: BLE001 - the guard reports it
                pass


@pytest.fixture
def nginx_factory(tmp_path):
    f = NginxFactory(tmp_path)
    yield f
    f.stop_all()
