"""Is a model's final answer equal to the ground truth? `grade(given, ground_truth) -> bool`.

Three stages, cheapest first:
1. Guards: answers that are too long, too deeply nested, or build power towers or huge
   factorials are rejected outright. Real MATH answers are at most 159 characters with brackets
   nested 3 deep, so the limits sit far above anything a correct answer needs.
2. Fast path, in this process: normalized strings are equal (`\\dfrac{1}{2}` = `\\frac12`,
   `x = 3` = `3`, `180\\text{ miles}` = `180`), or both answers are plain numbers and their exact
   values are compared (`0.5` = `1/2`, `3.5\\times10^{4}` = `35000`, `2` != `3`).
3. Symbolic path: math-verify (parse + verify with sympy) in a worker process, for radicals,
   intervals, tuples, sets, matrices, expressions. The worker is killed when it overruns
   `timeout_s`; that is the hard bound, and it holds in any thread (math-verify's own SIGALRM
   timeouts only work in the main thread, and no signal stops a long C-level big-integer
   computation). A killed worker is replaced at once by a fresh one, which takes one to two
   seconds to import and warm up sympy; the next symbolic call waits for it (outside its
   `timeout_s`), as does the first symbolic call of a process.

Decimals approximate: a decimal answer equals a value when both round to the same 6 decimal places
(`0.333333` = `\\frac{1}{3}`, `0.33` != `\\frac{1}{3}`), the rule math-verify uses.
Grading never raises and never `eval`s; any failure means "not equal".
"""

import atexit
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from r1_lightning.rewards.extract import unwrap_boxed
from r1_lightning.rewards.normalize import normalize_answer, parse_plain_number

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 600
MAX_BRACKET_DEPTH = 12
DECIMAL_PLACES = 6
NUM_WORKERS = min(4, os.cpu_count() or 1)
WORKER_STARTUP_TIMEOUT_S = 60.0  # importing sympy on a busy machine; not part of a call's budget
WORKER_QUEUE_TIMEOUT_S = 60.0  # waiting for a free worker when many threads grade at once

# A six-digit or longer exponent, or the factorial of a four-digit or longer number: far outside
# MATH, and expensive for sympy to evaluate.
_HUGE_EXPONENT_OR_FACTORIAL = re.compile(r"\^\s*\{?\s*-?\d{6,}|\d{4,}\s*\}?\s*\)?\s*!")
_DIGIT_TIMES_I = re.compile(r"(?<=\d)i\b")


def grade(given: str, ground_truth: str, timeout_s: float = 1.0) -> bool:
    """True iff the answer `given` equals `ground_truth` (both final answers, not full responses;
    a `\\boxed{}` around either is unwrapped). Returns False on any error, and within `timeout_s`
    of symbolic work however hostile `given` is."""
    try:
        return _grade(given, ground_truth, timeout_s)
    except Exception:  # a bug or a surprise in a library must cost one reward, not the run
        logger.debug("grading failed; counted as wrong", exc_info=True)
        return False


def _grade(given: str, ground_truth: str, timeout_s: float) -> bool:
    if not isinstance(given, str) or ground_truth is None:
        return False
    ground_truth = str(ground_truth)
    given, ground_truth = (unwrap_boxed(given) or "").strip(), (unwrap_boxed(ground_truth) or "").strip()
    if not given or not ground_truth or _is_pathological(given):
        return False
    decided = compare_fast(given, ground_truth)
    if decided is not None:
        return decided
    return _worker_pool().compare(_for_math_verify(given), _for_math_verify(ground_truth), timeout_s)


def _for_math_verify(answer: str) -> str:
    # math-verify reads `i` as the imaginary unit only when it stands alone (`\bi\b`), so that
    # "0.56i" would be 0.56 times a real symbol i; "0.56 i" is read as intended.
    return _DIGIT_TIMES_I.sub(" i", answer)


def _is_pathological(answer: str) -> bool:
    """Too long, nested too deep, unbalanced braces, a power tower, a huge exponent or factorial."""
    if len(answer) > MAX_ANSWER_CHARS or _HUGE_EXPONENT_OR_FACTORIAL.search(answer):
        return True
    depth = braces = 0  # all brackets (intervals may leave some open), and `{}` groups alone
    exponent_depths = []  # the depths at which the open exponent groups `^{...}` started
    previous = ""
    after_caret = False
    for char in answer:
        if char == "^" and exponent_depths:  # an exponent inside an exponent: 10^{10^{10}}
            return True
        if char in "([{":
            depth += 1
            braces += char == "{" and previous != "\\"
            if depth > MAX_BRACKET_DEPTH:
                return True
            if char == "{" and after_caret:
                exponent_depths.append(depth)
        elif char in ")]}":
            if exponent_depths and exponent_depths[-1] == depth:
                exponent_depths.pop()
            depth -= 1
            braces -= char == "}" and previous != "\\"
            if braces < 0:  # "3} + {4" would smuggle text out of the box math-verify parses
                return True
        if char == "^":
            after_caret = True
        elif not char.isspace():
            after_caret = False
        previous = char
    return braces != 0


def compare_fast(given: str, ground_truth: str) -> bool | None:
    """Decide equality without sympy when possible: True/False, or None for "needs the symbolic path"."""
    given_normalized, truth_normalized = normalize_answer(given), normalize_answer(ground_truth)
    if not given_normalized:
        return False
    if given_normalized == truth_normalized:
        return True
    if _WORD_ANSWER.fullmatch(given_normalized) and _WORD_ANSWER.fullmatch(truth_normalized):
        return _word_items(given_normalized) == _word_items(truth_normalized)
    given_number = parse_plain_number(given_normalized)
    truth_number = parse_plain_number(truth_normalized)
    if given_number is None or truth_number is None:
        return None
    if given_number.value == truth_number.value:
        return True
    if given_number.is_decimal or truth_number.is_decimal:
        return round(given_number.value, DECIMAL_PLACES) == round(truth_number.value, DECIMAL_PLACES)
    return False


# Answers made of words or letters: "Wednesday", "(C)", "A, B", "CBAD". Compared as text (any case,
# choices in any order), never by sympy, which would read CBAD as the product C*B*A*D = ABCD.
_WORD_ANSWER = re.compile(r"(?:\([A-Za-z]+\)|[A-Za-z]+)(?:,(?:\([A-Za-z]+\)|[A-Za-z]+))*")


def _word_items(answer: str) -> list[str]:
    return sorted(item.strip("()").lower() for item in answer.split(","))


class _SymbolicWorker:
    """One child process running `_symbolic_worker.py`, used by one thread at a time."""

    def __init__(self):
        self._last_request_id = 0
        self._start()

    def _start(self) -> None:
        # Run the module with the package importable even from a source checkout.
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "r1_lightning.rewards._symbolic_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
        )
        self._unread = b""
        self._ready = False

    def compare(self, given: str, ground_truth: str, timeout_s: float) -> bool:
        if not self._ready:
            if self._read_line(WORKER_STARTUP_TIMEOUT_S) != "ready":
                logger.warning("the grader's symbolic worker did not start; answers count as wrong")
                self._restart()
                return False
            self._ready = True
        self._last_request_id += 1
        request = json.dumps([self._last_request_id, given, ground_truth]) + "\n"
        try:
            self._write(request.encode())
        except OSError:  # the worker died (e.g. out of memory) since the last request
            self._restart()
            return False
        reply = self._read_line(timeout_s)
        try:
            request_id, equal = json.loads(reply)
            if request_id == self._last_request_id:
                return equal is True
        except (TypeError, ValueError):  # no reply in time (None), or not our protocol
            pass
        self._restart()  # too slow, dead or confused: a fresh worker for the next call
        return False

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._process.stdin.fileno(), view) :]

    def _read_line(self, timeout_s: float) -> str | None:
        """The next line from the worker, or None if none arrives within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        stdout = self._process.stdout.fileno()
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
                return None
            chunk = os.read(stdout, 65536)
            if not chunk:  # end of file: the worker exited
                return None
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return line.decode()

    def _restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            pipe.close()


class _WorkerPool:
    """Up to `size` workers, started on demand, so that several threads can grade at once."""

    def __init__(self, size: int):
        self._size = size
        self._idle: queue.SimpleQueue[_SymbolicWorker] = queue.SimpleQueue()
        self._workers: list[_SymbolicWorker] = []
        self._lock = threading.Lock()

    def compare(self, given: str, ground_truth: str, timeout_s: float) -> bool:
        worker = self._acquire()
        if worker is None:
            return False
        try:
            return worker.compare(given, ground_truth, timeout_s)
        finally:
            self._idle.put(worker)

    def _acquire(self) -> _SymbolicWorker | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._workers) < self._size:
                self._workers.append(_SymbolicWorker())
                return self._workers[-1]
        try:
            return self._idle.get(timeout=WORKER_QUEUE_TIMEOUT_S)
        except queue.Empty:
            return None

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.close()
            self._workers.clear()


_pool: _WorkerPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> _WorkerPool:
    """The process-wide pool; a forked child makes its own rather than share its parent's pipes."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = _WorkerPool(NUM_WORKERS), os.getpid()
        return _pool


@atexit.register
def _close_workers() -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()
