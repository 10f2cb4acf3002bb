"""Run many ``edgeinfer`` CLI invocations, each in its own child process, without paying Python's
start-up and import time for each (about 1 s per process on the test machine).

Protocol: one JSON request per stdin line ``{"argv": [...], "cwd": DIR, "tmp": DIR, "timeout": S}``;
one JSON reply per stdout line ``{"returncode": N, "stdout": "...", "stderr": "...", "seconds": S}``.
Each request forks a fresh child of this process (which has imported the CLI and the engines but
opened no session), redirects its stdin/stdout/stderr, points TMPDIR at ``tmp``, runs
``edgeinfer.cli.main`` with ``argv`` and exits with its code. A child killed by a signal reports
``-signal`` like ``subprocess`` does; one still running after ``timeout`` seconds is killed and
reported as ``"timeout": true``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

import edgeinfer.cli  # noqa: F401  (imported once, before forking)
import numpy  # noqa: F401
import PIL.Image  # noqa: F401

for optional in ("onnxruntime", "ai_edge_litert.interpreter", "onnx", "converters.inspect"):
    try:
        __import__(optional)
    except ImportError:
        pass


def _child(req: dict, out_path: str, err_path: str) -> None:
    code = 70
    try:
        os.chdir(req["cwd"])
        os.environ["TMPDIR"] = req["tmp"]
        tempfile.tempdir = req["tmp"]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = ["edgeinfer", *req["argv"]]
        try:
            edgeinfer.cli.main(prog_name="edgeinfer")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # anything escaping the CLI is a finding: show it like Python would
        import traceback
        traceback.print_exc()
        code = 71
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    scratch = tempfile.mkdtemp(prefix="forkserver-")
    out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(req, out_path, err_path)
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - t0 > req.get("timeout", 60):
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.002)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        with open(out_path, errors="replace") as fo, open(err_path, errors="replace") as fe:
            reply = {"returncode": rc, "stdout": fo.read()[:20000], "stderr": fe.read()[:20000],
                     "seconds": round(time.perf_counter() - t0, 3), "timeout": timed_out}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for p in (out_path, err_path):
        if os.path.exists(p):
            os.unlink(p)
    os.rmdir(scratch)


if __name__ == "__main__":
    serve()
