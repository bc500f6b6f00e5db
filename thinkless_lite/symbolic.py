"""math-verify's symbolic equality in a pool of killable child processes, the grader's slow path.

Why child processes: sympy can hang on innocent-looking input (``9^{9^{9^{9}}}``) inside C code that no
signal can interrupt, and math-verify's own timeouts use ``signal.alarm``, which raises outside the main
thread. A child process we can kill gives a hard deadline and works from any thread.

The child is a plain ``python -c`` subprocess that runs this file, not a multiprocessing "spawn" process:
spawn re-imports the caller's ``__main__`` in the child, so a training script would load torch/transformers
into every grader (and a script without a main guard dies). So this file imports nothing but the standard
library at its top.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time

logger = logging.getLogger("thinkless_lite.grading")  # its warnings are the grader's, as before the split

STARTUP_TIMEOUT_S = 60.0  # importing sympy + math-verify in a fresh interpreter; not per call
_POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
_WORKER_BOOT = ("import sys, runpy; del sys.path[0]; "  # drop cwd so nothing shadows stdlib
                "runpy.run_path(sys.argv[1], run_name='__thinkless_grader__')")


def _limit_cpu(seconds: float) -> None:
    """Let the kernel end this worker after ``seconds`` more CPU time (SIGXCPU).

    The parent kills an overrunning worker itself; this covers a parent that died meanwhile.
    A worker stuck in sympy holds the GIL and would never notice its stdin closing.
    """
    try:
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = used.ru_utime + used.ru_stime
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(spent + seconds) + 2
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, OSError, ValueError):
        pass


def _worker_loop() -> None:
    """Child side: one JSON ``[pred, gold, seconds]`` per stdin line, one JSON verdict per line."""
    logging.disable(logging.CRITICAL)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        try:
            pred, gold, seconds = json.loads(line)
            _limit_cpu(seconds)
            # Bare LaTeX only parses inside a delimiter; \boxed{} is the most robust one.
            # Timeouts off (None): they use signal.alarm; the parent's deadline replaces them.
            gold_parsed = parse(f"\\boxed{{{gold}}}", configs, parsing_timeout=None)
            pred_parsed = parse(f"\\boxed{{{pred}}}", configs, parsing_timeout=None)
            verdict = bool(gold_parsed and pred_parsed
                           and verify(gold_parsed, pred_parsed, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - sympy raises anything; the verdict is then "wrong"
            verdict = False
        print(json.dumps(verdict), flush=True)


class _SymbolicWorker:
    """One math-verify child process, started on first use and killed on any overrun.

    Used by one thread at a time: the pool hands it out exclusively, so it needs no lock.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._buffer = b""

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self._buffer = b""
        if self._read_line(time.monotonic() + STARTUP_TIMEOUT_S) != "ready":
            raise TimeoutError("grading worker did not start")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=5)
            process.stdin.close()
            process.stdout.close()

    def _read_line(self, deadline: float):
        """The next JSON line from the child, or TimeoutError at ``deadline``."""
        fd = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("grading worker overran its deadline")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("grading worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def check(self, pred: str, gold: str, timeout_s: float) -> bool:
        """math-verify's verdict; the clock starts once the worker is up (first start is slower).

        A worker found dead before the request (killed from outside) is replaced and the request
        sent again, once; one that dies or overruns while answering costs this answer a False.
        """
        request = json.dumps([pred, gold, max(timeout_s, 0.0)]).encode() + b"\n"
        for _ in range(2):
            try:
                if self._process is None or self._process.poll() is not None:
                    self.stop()
                    self._start()
                deadline = time.monotonic() + max(timeout_s, 0.0)
                self._process.stdin.write(request)
            except BrokenPipeError:
                self.stop()
                continue
            except (OSError, EOFError, TimeoutError, ValueError) as error:
                logger.warning("could not start a grading worker (%s)", error)
                self.stop()
                return False
            try:
                return self._read_line(deadline) is True
            except (OSError, EOFError, TimeoutError, ValueError) as error:
                logger.warning("symbolic grading failed (%s); restarting the worker", error)
                self.stop()
                return False
        return False


_pool: queue.LifoQueue | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _get_pool() -> queue.LifoQueue:
    """The process-wide worker pool; rebuilt after a fork, whose inherited pipes are not ours."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = queue.LifoQueue()  # LIFO: a single caller keeps reusing one warm worker
            for _ in range(_POOL_SIZE):
                _pool.put(_SymbolicWorker())
            _pool_pid = os.getpid()
        return _pool


def symbolic_equal(pred: str, gold: str, timeout_s: float) -> bool:
    """math-verify's verdict within ``timeout_s`` of waiting for a worker plus ``timeout_s`` of work.

    A worker's first start (about a second of imports) has its own allowance, so the first
    symbolic answer of a run is not graded wrong for being first.
    """
    pool = _get_pool()
    try:
        worker = pool.get(timeout=max(timeout_s, 0.0))
    except queue.Empty:
        logger.warning("no free grading worker within %.1fs; grading as wrong", timeout_s)
        return False
    try:
        return worker.check(pred, gold, timeout_s)
    finally:
        pool.put(worker)


def shutdown_workers() -> None:
    """Stop the grading child processes (they restart on demand). Registered at exit."""
    with _pool_lock:
        pool = _pool if _pool_pid == os.getpid() else None
    if pool is None:
        return
    workers = []
    while True:
        try:
            workers.append(pool.get_nowait())
        except queue.Empty:
            break
    for worker in workers:
        worker.stop()
        pool.put(worker)


atexit.register(shutdown_workers)

if __name__ == "__thinkless_grader__":
    _worker_loop()
