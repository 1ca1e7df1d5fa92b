"""The grader's symbolic workers: child processes shared by every thread of a process.

- Cheap to replace: workers are forked from a warm fork server (`_symbolic_worker.py`), so a worker
  killed for overrunning is replaced in milliseconds; only the server's own start pays the one to
  three seconds of importing sympy (`start_grader()` pays it ahead of time).
- Bounded: a comparison gets `timeout_s` of its worker's CPU time. On Linux the parent reads that
  time from /proc, so a comparison slowed by a busy machine (other workers, other jobs) is given
  more wall time, up to `WALL_FACTOR * timeout_s`, instead of being scored 0 for someone else's
  load; elsewhere the bound is wall time. Waiting for a free worker and the server's start-up are
  not part of the bound. A worker that overruns is killed.
- Fair: a caller who finds no idle worker gets a newly forked one (up to `MAX_WORKERS`), so
  concurrent comparisons share the CPUs and a short one finishes in its own few milliseconds of
  CPU even while others overrun; past that, callers wait in one first-in first-out queue.
- Counted: `grader_stats()` reports comparisons, timeouts, pairs refused because they timed out
  before, and worker failures; `grader_timeouts()` is the number of comparisons scored 0 without a
  verdict (the sum of the last three), monotonically increasing, for logging.
- Stoppable: a caller waiting for a worker or a verdict raises `StopRequested` within
  `POLL_SECONDS` of a stop signal (`r1_lightning.stopping`); the worker it was using is replaced.
- An (answer, ground truth) pair whose comparison used its whole CPU budget is remembered (the last
  `QUARANTINE_SIZE`) and scored 0 at once when it comes again: it would take the same time and a
  worker again. The same answer against another ground truth is compared afresh: what overran may
  have been that ground truth's side, and a correct answer must not lose its reward everywhere.

POSIX only (fork, Unix sockets, select on sockets), like the training stack it serves.
"""

import atexit
import collections
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from r1_lightning.stopping import POLL_SECONDS, StopRequested, raise_if_stop_requested

NUM_WORKERS = 2  # started by start_grader(); more are forked while callers wait, up to MAX_WORKERS
MAX_WORKERS = 16
WORKER_STARTUP_TIMEOUT_S = 60.0  # the server importing sympy on a busy machine; not part of a call's budget
WALL_FACTOR = 3.0  # the most wall time a comparison gets, in units of its CPU budget
QUARANTINE_SIZE = 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class GraderStats:
    """Process-wide counts since start-up (all monotonically increasing)."""

    symbolic_calls: int = 0  # comparisons sent to a worker
    timeouts: int = 0  # of those, killed for overrunning their time budget (scored 0)
    quarantined: int = 0  # (answer, ground truth) pairs scored 0 at once because they timed out before
    worker_failures: int = 0  # comparisons scored 0 because a worker died or did not start
    worker_starts: int = 0  # workers forked
    server_starts: int = 0  # fork servers started (one, unless one died)


_stats = GraderStats()
_stats_lock = threading.Lock()


def _count(**increments: int) -> None:
    global _stats
    with _stats_lock:
        _stats = GraderStats(**{k: v + increments.get(k, 0) for k, v in vars(_stats).items()})


def grader_stats() -> GraderStats:
    return _stats


def grader_timeouts() -> int:
    """Comparisons scored 0 without a verdict (timed out, refused as a repeat, or worker failure)."""
    stats = _stats
    return stats.timeouts + stats.quarantined + stats.worker_failures


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid`, or None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


# What a comparison ends in, besides True/False: it overran its CPU budget, it ran out of wall
# time while starved of CPU (not its own fault, so not quarantined), or the worker failed.
TIMEOUT, STARVED, FAILED = (object() for _ in range(3))
STOPPED = object()  # abandoned for a stop signal: not a comparison, counted nowhere


class ForkServer:
    """The process that forks workers: `fork_worker()` returns a new worker at once; the worker
    becomes ready as soon as the server has warmed up and forked it."""

    def __init__(self):
        package_parent = str(Path(__file__).resolve().parents[2])  # importable from a source checkout
        env = dict(os.environ, PYTHONHASHSEED="0")  # every worker orders sets alike: same verdicts
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        self._control, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "r1_lightning.rewards._symbolic_worker", str(theirs.fileno())],
            stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()], env=env,
        )
        theirs.close()
        _count(server_starts=1)

    def alive(self) -> bool:
        return self._process.poll() is None

    def fork_worker(self) -> "SymbolicWorker":
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self._control, [b"w"], [theirs.fileno()])
        except OSError:  # the server died: this worker never answers and is replaced
            pass
        theirs.close()
        _count(worker_starts=1)
        return SymbolicWorker(ours)

    def close(self) -> None:
        self._control.close()  # the server exits on end of file; its idle workers on theirs
        # A server still warming up (seconds on a busy machine) reads the end of file only once
        # warm; it holds nothing worth waiting for, so a process that ends (a stop signal) ends now.
        try:
            self._process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class SymbolicWorker:
    """One forked worker process behind a socket, used by one thread at a time."""

    def __init__(self, connection: socket.socket):
        self._connection = connection
        self._unread = b""
        self._pid: int | None = None
        self._last_request_id = 0

    def compare(self, given: str, ground_truth: str, timeout_s: float) -> bool | object:
        """True/False, or TIMEOUT, STARVED or FAILED (then the worker must be replaced)."""
        if not self.wait_ready():
            return FAILED
        self._last_request_id += 1
        try:
            self._connection.sendall((json.dumps([self._last_request_id, given, ground_truth]) + "\n").encode())
        except OSError:  # the worker died (e.g. out of memory) since the last request
            return FAILED
        reply = self._read_reply(timeout_s)
        if reply is TIMEOUT or reply is STARVED:
            return reply
        try:
            request_id, equal = json.loads(reply)
            if request_id == self._last_request_id:
                return equal is True
        except (TypeError, ValueError):  # dead (None) or not our protocol
            pass
        return FAILED

    def wait_ready(self, timeout_s: float = WORKER_STARTUP_TIMEOUT_S) -> bool:
        """Whether the worker is up (it sends its pid first), waiting for the server if need be."""
        if self._pid is None:
            line = self._read_line(time.monotonic() + timeout_s)
            self._pid = int(line) if isinstance(line, str) and line.isdigit() else None
        return self._pid is not None

    def _read_reply(self, timeout_s: float) -> str | object | None:
        """The reply line, TIMEOUT once the request used `timeout_s` of CPU time, STARVED after
        `WALL_FACTOR * timeout_s` of wall time with less CPU than that, None if the worker died."""
        start, cpu_start = time.monotonic(), _cpu_seconds(self._pid)
        hard_deadline = start + WALL_FACTOR * timeout_s
        deadline = start + timeout_s
        while True:
            line = self._read_line(deadline)
            if line is not TIMEOUT:
                return line
            now, cpu_now = time.monotonic(), _cpu_seconds(self._pid)
            cpu_left = timeout_s - (cpu_now - cpu_start) if cpu_start is not None and cpu_now is not None else 0
            if cpu_left <= 0.02:
                return TIMEOUT
            if now >= hard_deadline:
                return STARVED
            deadline = min(now + cpu_left, hard_deadline)  # it was waiting for a CPU: let it have one

    def _read_line(self, deadline: float) -> str | object | None:
        """The next line, TIMEOUT if none arrives before `deadline`, None if the worker exited."""
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMEOUT
            if not select.select([self._connection], [], [], min(remaining, POLL_SECONDS))[0]:
                raise_if_stop_requested()
                continue
            try:
                chunk = self._connection.recv(65536)
            except OSError:
                return None
            if not chunk:  # end of file: the worker exited
                return None
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return line.decode()

    def exited(self) -> bool:
        """Whether an idle worker has died (its socket, which has nothing to say, became readable)."""
        return self._pid is not None and bool(select.select([self._connection], [], [], 0)[0])

    def close(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)  # it may be deep in C code; the server reaps it
            except OSError:
                pass
        self._connection.close()  # an idle or unborn worker exits on end of file


class WorkerPool:
    """Workers forked from one server: `size` at start, up to `max_size` while callers wait."""

    def __init__(self, size: int = NUM_WORKERS, max_size: int = MAX_WORKERS):
        self._size, self._max_size = size, max_size
        self._condition = threading.Condition()
        self._server: ForkServer | None = None
        self._workers: list[SymbolicWorker] = []  # idle or busy
        self._idle: list[SymbolicWorker] = []
        self._waiting: collections.deque = collections.deque()
        self._quarantine: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def start(self) -> None:
        """Start the server and the workers now (idempotent); they warm up in the background."""
        with self._condition:
            while len(self._workers) < self._size:
                self._workers.append(self._fork())
                self._idle.append(self._workers[-1])

    def _fork(self) -> SymbolicWorker:
        """A new worker, from a new server if the last one died (call with the condition held)."""
        if self._server is None or not self._server.alive():
            self._server = ForkServer()
        return self._server.fork_worker()

    def wait_ready(self) -> bool:
        with self._condition:
            workers = list(self._workers)
        return all(worker.wait_ready() for worker in workers)

    def compare(self, given: str, ground_truth: str, timeout_s: float) -> bool:
        pair = (given, ground_truth)
        with self._condition:
            if pair in self._quarantine:
                self._quarantine.move_to_end(pair)
                _count(quarantined=1)
                return False
        worker = self._acquire()
        result = FAILED
        try:
            result = worker.compare(given, ground_truth, timeout_s)
        except StopRequested:
            result = STOPPED  # the worker may be busy with the request: replaced below
            raise
        finally:
            if not isinstance(result, bool):
                worker = self._replace(worker, pair if result is TIMEOUT else None)
            if result is not STOPPED:
                _count(symbolic_calls=1, timeouts=result is TIMEOUT or result is STARVED,
                       worker_failures=result is FAILED)
            with self._condition:
                self._idle.append(worker)
                self._condition.notify_all()
        return result is True

    def _acquire(self) -> SymbolicWorker:
        if len(self._workers) < self._size:
            self.start()  # on first use, or after close()
        ticket = object()
        with self._condition:
            self._waiting.append(ticket)
            try:
                while True:
                    if self._waiting[0] is ticket:
                        if not self._idle and len(self._workers) < self._max_size:
                            self._workers.append(self._fork())
                            self._idle.append(self._workers[-1])
                        if self._idle:
                            break
                    self._condition.wait(POLL_SECONDS)
                    raise_if_stop_requested()
            except StopRequested:
                self._waiting.remove(ticket)
                self._condition.notify_all()  # the next in line may be first now
                raise
            self._waiting.popleft()
            self._condition.notify_all()  # the next in line may take another idle worker
            worker = self._idle.pop()
        return self._replace(worker, None) if worker.exited() else worker

    def _replace(self, worker: SymbolicWorker, timed_out_pair: tuple[str, str] | None) -> SymbolicWorker:
        worker.close()
        with self._condition:
            if timed_out_pair is not None:
                self._quarantine[timed_out_pair] = None
                if len(self._quarantine) > QUARANTINE_SIZE:
                    self._quarantine.popitem(last=False)
            replacement = self._fork()
            if worker in self._workers:  # (not after close())
                self._workers[self._workers.index(worker)] = replacement
            return replacement

    def close(self) -> None:
        with self._condition:
            workers, server = self._workers, self._server
            self._workers, self._idle, self._server = [], [], None
        for worker in workers:
            worker.close()
        if server is not None:
            server.close()


_pool: WorkerPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def worker_pool() -> WorkerPool:
    """The process-wide pool; a forked child makes its own rather than share its parent's sockets."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = WorkerPool(), os.getpid()
        return _pool


@atexit.register
def _close_workers() -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()


def _forget_pool_in_child() -> None:
    """In a child forked from this process (a DataLoader worker, say), drop the parent's pool
    without killing anything, so the parent's fork server still exits when the parent does; the
    child starts its own pool if it grades. Locks another thread held at the fork are replaced."""
    global _pool, _pool_lock, _stats_lock
    _pool_lock, _stats_lock = threading.Lock(), threading.Lock()
    if _pool is not None:
        for worker in _pool._workers:
            worker._connection.close()
        if _pool._server is not None:
            _pool._server._control.close()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
