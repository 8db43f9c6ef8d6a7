"""Run Python work in a fork of this process: on CPU the stages and the runs they start pay for
torch, transformers and Lightning once (about 9 s a process on 2 cores), not once per process.
On a GPU they keep processes of their own: a fork must not inherit a CUDA context, and each
process's memory is what a stage measures."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# what the CPU stages and `scripts/train.py` import, imported once before the first fork
WARM_IMPORTS = ("torch", "transformers", "lightning", "hydra", "pytest", "tinyzero.models", "tinyzero.train.build")


def warm_up() -> None:
    for name in WARM_IMPORTS:
        __import__(name)


def run_forked(target: Callable[[], object], log: Path, timeout: float | None = None) -> int | str:
    """`target()` in a fork of this process in a process group of its own, its output in `log`: the
    exit status (0 when it returns, a `SystemExit`'s code, 1 for an exception), or "timeout" when it
    ran past `timeout` seconds (the whole group killed: runs it started end with it)."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1), os.dup2(fd, 2)
            target()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: the group exists before a kill, whoever runs first
    except OSError:
        pass  # the child set it (or already ended)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def run_command(command: list[str], log: Path, timeout: float | None = None) -> int | str:
    """`command` in a session of its own, its output in `log`: the exit status, or "timeout" when it
    ran past `timeout` seconds (its whole group killed, as `run_forked` does)."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"


def run_python(arguments: list[str], log: Path, forked: bool) -> int:
    """`python <script> <arguments...>` or `python -m <module> <arguments...>`, run from the
    repository's root with `tests/` importable, its output in `log`: in a fork of this process
    (`forked`), or in a process of its own. The exit status."""

    def as_main():
        os.chdir(ROOT)
        if arguments[0] == "-m":
            sys.argv = [arguments[1], *arguments[2:]]
            runpy.run_module(arguments[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(arguments)
            runpy.run_path(arguments[0], run_name="__main__")

    if forked:
        return run_forked(as_main, log)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as output:
        command = [sys.executable, *arguments]
        return subprocess.run(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT).returncode
