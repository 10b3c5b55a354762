#!/usr/bin/env python3
"""make test-valgrind: the Redis-fault tests of t/integration/test_auth.py,
those of t/integration/test_ratelimit_batch.py where a client leaves
while its rate-limit check waits in a batch (in flight, or not yet sent),
the idempotency tests where Redis pauses or the client leaves while the
response's end waits for the completed record (test_idempotency_ack.py),
and the subrequests of test_redirects.py, with nginx under valgrind
(memcheck), then a verdict on the valgrind logs.

    t/valgrind/run.py --root REPO --out build/valgrind [pytest args]

nginx runs in one process (master_process off, see APIGW_NGINX_WRAPPER in
t/integration/harness.py), so the one valgrind sees every request, the
Redis adapter, the timers and the exit (exit_process frees the
connection).  Each nginx writes <its dir>/valgrind.<pid>; pytest's
--basetemp is OUT/tmp, so the logs stay there after the run.

Verdict: every error valgrind reports (invalid read/write/free,
uninitialised use, definitely lost block) whose stack holds a frame of the
module (ngx_http_apigw_*, apigw_*, ngx_http_apigw_module.so) or of hiredis
fails the run and is printed whole; the others (nginx's, OpenSSL's own) are
counted and listed by their first line.  apigw.supp holds the two known
leaks at exit that are not defects (each explained there).  The exit
status is 1 when pytest failed or one of ours was found.

Without pytest arguments the selection is the tests above; any given
arguments replace it (e.g. `make test-valgrind PYTEST_ARGS=test_auth.py`).
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

PY = "/usr/bin/python3"

DEFAULT_TESTS = ["test_auth.py", "test_ratelimit_batch.py",
                 "test_idempotency_ack.py", "test_redirects.py", "-k",
                 "redis_paused or redis_restart or redis_killed "
                 "or client_leaves or client_gone_while_call_in_flight "
                 "or streams_reset_before_the_send or subrequest"]

# --keep-debuginfo: nginx unloads the module before valgrind's leak report
VALGRIND = ("valgrind --tool=memcheck --error-limit=no --num-callers=40 "
            "--keep-debuginfo=yes --suppressions=%s "
            "--leak-check=full --show-leak-kinds=definite "
            "--errors-for-leak-kinds=definite --track-origins=yes "
            "--log-file={dir}/valgrind.%%p"
            % shlex.quote(os.path.join(
                os.path.dirname(os.path.abspath(__file__)), "apigw.supp")))

OURS = re.compile(r"ngx_http_apigw|\bapigw_|ngx_http_apigw_module\.so"
                  r"|libhiredis|\bredis[A-Z]\w*")
PREFIX = re.compile(r"^==\d+== ?")
ERROR_START = re.compile(
    r"^(Invalid (read|write|free)|Mismatched free|Conditional jump|"
    r"Use of uninitialised|Syscall param|Source and destination overlap|"
    r"Argument '.*' of function|.* are definitely lost|"
    r"Process terminating)")


def blocks(path):
    """the error blocks of one valgrind log: lists of lines, prefix cut"""
    with open(path, "rb") as f:
        lines = [PREFIX.sub("", ln) for ln in
                 f.read().decode("utf-8", "replace").splitlines()]
    out, cur = [], None
    for ln in lines:
        if ERROR_START.match(ln):
            cur = [ln]
            out.append(cur)
        elif cur is not None and ln.strip():
            cur.append(ln)
        else:
            cur = None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    args, pytest_args = ap.parse_known_args()

    if shutil.which("valgrind") is None:
        print("valgrind is not installed (make deps-sanitizers)")
        return 2

    tmp = os.path.join(args.out, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)

    env = dict(os.environ, APIGW_ROOT=args.root, APIGW_NGINX_WRAPPER=VALGRIND)
    argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--basetemp", tmp] + (pytest_args or DEFAULT_TESTS)
    print("+", " ".join(argv), flush=True)
    rc = subprocess.call(argv, cwd=os.path.join(args.root, "t",
                                                "integration"), env=env)

    # pytest's "<name>current" links would list each log twice
    logs = sorted({os.path.realpath(p) for p in glob.glob(
        os.path.join(tmp, "**", "valgrind.*"), recursive=True)})
    ours, others, suppressed = [], {}, 0
    for path in logs:
        with open(path, "rb") as f:
            m = re.findall(rb"ERROR SUMMARY: .*\(suppressed: (\d+) from",
                           f.read())
        suppressed += sum(int(x) for x in m)
        for b in blocks(path):
            if any(OURS.search(ln) for ln in b):
                ours.append((path, b))
            else:
                others[b[0]] = others.get(b[0], 0) + 1

    print("\nvalgrind: %d nginx run(s), logs under %s" % (len(logs), tmp))
    for first, n in sorted(others.items()):
        print("  not ours (%dx): %s" % (n, first))
    for path, b in ours:
        print("\n== OURS, in %s:\n%s" % (path, "\n".join(b)))
    print("valgrind: %d error(s) in apigw/hiredis code, %d elsewhere, "
          "%d suppressed (apigw.supp); pytest rc %d" % (
              len(ours), sum(others.values()), suppressed, rc))

    if not logs:
        print("valgrind: no log was written: did nginx run under it?")
        return 1
    return 1 if rc != 0 or ours else 0


if __name__ == "__main__":
    sys.exit(main())
