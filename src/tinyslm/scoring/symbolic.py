"""The time-bounded symbolic check (math-verify): a SIGALRM deadline in the main thread, else a helper
process that is killed when it overruns; no model text ever reaches eval or exec.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tinyslm.core.errors import UserError
from tinyslm.scoring.extract import WORKER_GRACE_S

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Time-bounded symbolic check (math-verify)
# --------------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Deadline(BaseException):
    """Raised by our SIGALRM handler.

    A BaseException on purpose: math-verify and sympy wrap their work in ``except Exception``, which
    would swallow an ordinary exception and carry on with the next (equally slow) comparison.
    """


_MATH_VERIFY: Any = None


def _math_verify() -> Any:
    """Import and warm up math-verify on first use (a second or so; number-style runs never pay it)."""
    global _MATH_VERIFY
    if _MATH_VERIFY is None:
        try:
            import math_verify
        except ImportError as e:
            raise UserError("math-verify is required for MATH scoring: pip install 'math-verify>=0.7'") from e

        class _DropNoTimeoutWarning(logging.Filter):
            # We pass timeout=None on purpose (we bound time ourselves); math-verify warns about that once.
            def filter(self, record: logging.LogRecord) -> bool:
                return not str(record.msg).startswith("Timeout is disabled")

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropNoTimeoutWarning())
        # The first parse builds math-verify's parser tables (about a second): do it now, outside any
        # answer's deadline, or the first MATH answer of a run could be timed out on a busy machine.
        config = [math_verify.LatexExtractionConfig()]
        math_verify.verify(
            math_verify.parse("$x^2+1$", extraction_config=config, parsing_timeout=None),
            math_verify.parse("$(x+1)^2$", extraction_config=config, parsing_timeout=None),
            timeout_seconds=None,
        )
        _MATH_VERIFY = math_verify
    return _MATH_VERIFY


def _as_latex(s: str) -> str:
    """Wrap an answer in ``$...$`` for math-verify's LaTeX extractor (unescaped ``$`` inside removed)."""
    return "$" + re.sub(r"(?<!\\)\$", "", s) + "$"


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple:
    """Gold answers repeat across models, shots and samples: parse each once."""
    return tuple(_parse_math(gold))


def _parse_math(s: str) -> list:
    """math-verify's parse of one answer (untimed; callers bound the time). Used by the tests too.

    LaTeX extraction only: math-verify's plain-expression extractor goes through sympy's ``parse_expr``,
    which ``eval``s its input, and model text must never reach an ``eval``. Answers are wrapped in
    ``$...$``, so the LaTeX extractor sees everything anyway.
    """
    mv = _math_verify()
    return mv.parse(_as_latex(s), extraction_config=[mv.LatexExtractionConfig()], parsing_timeout=None)


def _verify_now(pred: str, gold: str) -> bool:
    mv = _math_verify()
    g = list(_parse_gold(gold))
    if not g:
        return False
    p = _parse_math(pred)
    return bool(p) and bool(mv.verify(g, p, timeout_seconds=None))


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


_REFIRE_S = 0.1  # after the deadline, the alarm fires again this often until the check has stopped


def _with_alarm(fn: Callable[[], T], timeout_s: float) -> T | None:
    """Run ``fn`` with a SIGALRM deadline; None when it ran out of time.

    One deadline covers the whole check (parse gold, parse prediction, every comparison), unlike
    math-verify's own per-step ``timeout_seconds``, which can add up to several times the limit and takes
    whole seconds only. An alarm someone else had set (pytest-timeout, say) is re-armed afterwards with
    its remaining time. Limitation of any signal deadline: it is checked between Python bytecodes, so a
    single huge C-level operation (a 10^9-digit power) would not be interrupted; :data:`_EXPLOSIVE` and
    the size guards keep such inputs away from sympy.

    The alarm repeats every :data:`_REFIRE_S` seconds after the deadline: a :class:`_Deadline` raised
    inside a bare ``except:`` (sympy has some), a ``__del__`` or a gc callback is swallowed, and one
    swallowed alarm must not leave the check unbounded. Such a swallowed deadline reaches
    ``sys.unraisablehook``, which is wrapped for the check's duration: ours are dropped, and no re-fire
    lands inside another hook. ``active`` turns the handler into a no-op as soon as ``fn`` has stopped,
    and both exits restore the previous handler, timer and hook (once).
    """
    active = [True]
    restored = [False]
    in_hook = [False]

    def on_alarm(signum: int, frame: Any) -> None:
        if active[0] and not in_hook[0]:
            raise _Deadline

    def unraisable(u: Any) -> None:
        # A deadline swallowed by a __del__ or gc callback is ours and already handled by the re-firing
        # alarm: drop it. Anything else goes to the previous hook, with the alarm held off meanwhile, so
        # a re-fire cannot break the hook itself (pytest's imports tracemalloc there).
        if isinstance(u.exc_value, _Deadline):
            return
        in_hook[0] = True
        try:
            old_hook(u)
        finally:
            in_hook[0] = False

    def restore() -> None:
        active[0] = False
        if restored[0]:
            return
        restored[0] = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        sys.unraisablehook = old_hook
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - start), 0.001)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)

    start = time.monotonic()
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.01), _REFIRE_S)
    try:
        try:
            return fn()
        finally:
            restore()
    except _Deadline:  # also one that fired while the finally above was starting: restore once more
        restore()
        return None


def symbolic_equal(pred: str, gold: str, timeout_s: float) -> bool:
    """math-verify's verdict within ``timeout_s`` seconds of wall time; False when it runs out.

    On the main thread (the normal case: the eval loop scores as it generates) the check runs in-process
    under one SIGALRM deadline: a few milliseconds, no process overhead. Signals only work on the main
    thread, and math-verify's own timeouts use them, so off the main thread (a thread pool, a server)
    the check goes to a helper process that runs the same code under its own alarm and is killed if it
    does not answer in ``timeout_s`` + 2 s. Size caps alone are no substitute: ``9^{9^{9}}`` or
    ``\\binom{10^9}{10^5}`` are a dozen characters and keep sympy busy for minutes.
    """
    if _can_use_alarm():
        _math_verify()  # import and warm up outside the deadline
        result = _with_alarm(lambda: _verify_now(pred, gold), timeout_s)
    else:
        result = _worker_check(pred, gold, timeout_s)
    if result is None:
        logger.warning(
            "math answer check timed out after %.1fs; counted as wrong (pred=%.80r, gold=%.80r)",
            timeout_s,
            pred,
            gold,
        )
        return False
    return result


# The helper process: one JSON request per stdin line, one "R <json>" reply per stdout line.


class _Worker:
    """A python subprocess running :func:`_worker_main`, used one request at a time under a lock."""

    def __init__(self) -> None:
        self.owner = os.getpid()  # a fork()ed child (a data-loader worker, say) must not share our pipes
        src = str(Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.insert(0, {src!r}); from tinyslm.scoring.symbolic import _worker_main; _worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name="tinyslm-scoring-reader").start()
        if self._reply(60.0) != "ready":
            self.kill()
            raise RuntimeError("math answer checker process did not start")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("R "):
                self.replies.put(line[2:].strip())
        self.replies.put(None)

    def _reply(self, wait_s: float) -> str | None:
        try:
            return self.replies.get(timeout=wait_s)
        except queue.Empty:
            return None

    def check(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout_s": timeout_s}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(timeout_s + WORKER_GRACE_S)
        if reply is None:
            raise TimeoutError
        return json.loads(reply)["ok"]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _worker_check(pred: str, gold: str, timeout_s: float) -> bool | None:
    """Ask the helper process; None when it timed out (it is then killed and restarted on next use)."""
    global _WORKER
    with _WORKER_LOCK:
        try:
            if _WORKER is None or _WORKER.owner != os.getpid():
                _WORKER = _Worker()
            return _WORKER.check(pred, gold, timeout_s)
        except Exception as e:  # timeout, dead process, broken pipe: start afresh next time
            if not isinstance(e, TimeoutError):
                logger.warning("math answer checker process failed (%s); counted as wrong", e)
            if _WORKER is not None and _WORKER.owner == os.getpid():
                _WORKER.kill()
            _WORKER = None
            return None


@atexit.register
def _stop_worker() -> None:
    if _WORKER is not None and _WORKER.owner == os.getpid():
        _WORKER.kill()


def _worker_main() -> None:
    """Entry point of the helper process (its main thread, so the alarm deadline works here)."""
    try:
        import resource

        limit = 4 << 30  # a runaway sympy computation dies of MemoryError instead of swapping the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)
    _math_verify()
    print("R ready", flush=True)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if _can_use_alarm():
                ok = _with_alarm(lambda r=req: _verify_now(r["pred"], r["gold"]), float(req["timeout_s"]))
            else:
                ok = _verify_now(req["pred"], req["gold"])
        except Exception:
            ok = False
        print("R " + json.dumps({"ok": bool(ok)}), flush=True)
