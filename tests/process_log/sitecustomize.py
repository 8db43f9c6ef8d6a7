"""With this folder on PYTHONPATH and PROCESS_LOG set, every Python process appends one JSON line to that
file as it exits: its pid, its parent's, when it started and ended, its argv. tests/e2e/test_sweep.py
counts a sweep's processes with it."""

import atexit
import json
import os
import sys
import time

if os.environ.get("PROCESS_LOG"):
    _started = time.time()

    @atexit.register
    def _record() -> None:
        line = {"pid": os.getpid(), "ppid": os.getppid(), "start": _started, "end": time.time(), "argv": sys.argv}
        with open(os.environ["PROCESS_LOG"], "a") as log:
            log.write(json.dumps(line) + "\n")
