"""A prompt, safe stop on SIGTERM, SIGINT and SLURM's requeue signal.

Lightning answers SIGTERM by setting a flag that its loops read between training batches, so a
step that takes minutes (rollouts of long answers, on a CPU) runs to its end first. Here the signal
handler only records the request (`request_stop`); the loops that can run long check it at points
where stopping loses nothing but the step in flight (`raise_if_stop_requested`): the HF engine
between two decoded tokens, grading between two answers and while it waits for a symbolic worker,
on any thread (async rollouts sample on a background thread). vLLM's generation is not checked
token by token: it finishes the batch in flight, and the grading after it stops. There they raise
`StopRequested`, which unwinds the step before its update; the checkpoint callback then keeps
`last.ckpt` at the last complete step (`HFExportCheckpoint.on_exception`) and the process exits
with 128 + the signal's number, as if the signal had ended it (143 for SIGTERM, 130 for SIGINT).

The `r1-lightning` command installs the handlers (`stop_on_signals`); from Python, run
`with stop_on_signals(): trainer.fit(...)` for the same behaviour.

`StopRequested` is Lightning's `SIGTERMException`, a `SystemExit`: Lightning handles it as its
own stop, and no `except Exception` on the way (a reward function's "any error scores 0") can
swallow it.

With several ranks, the checks stay off (`allow_mid_step_stops(False)`): a rank that left a step
early would leave the others waiting in a collective. Lightning then stops every rank at the same
step boundary (rank 0's flag is broadcast).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_SECONDS = 0.1  # how often a loop that waits (on a worker, a socket) looks at the request


class StopRequested(SIGTERMException):
    """A stop signal arrived: the step in flight is abandoned; exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


_requested = threading.Event()
_signum: int | None = None
_mid_step = True


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask every checking loop, on any thread, to stop (what the signal handlers do)."""
    global _signum
    if _signum is None:
        _signum = signum
    _requested.set()


def stop_signal() -> int | None:
    """The signal that asked for the stop, or None."""
    return _signum if _requested.is_set() else None


def reset() -> None:
    """Forget a request (after the run it stopped: the next run in this process starts afresh)."""
    global _signum, _mid_step
    _requested.clear()
    _signum, _mid_step = None, True


def allow_mid_step_stops(allowed: bool) -> None:
    """Whether `raise_if_stop_requested` raises (on: one process; off: several ranks)."""
    global _mid_step
    _mid_step = allowed


def raise_if_stop_requested() -> None:
    """Raise `StopRequested` if a stop signal arrived (and mid-step stops are allowed)."""
    if _mid_step and _requested.is_set():
        raise StopRequested(_signum)


def _request_then(previous):
    """A handler that records the request, then runs `previous` (a handler, or SIG_DFL/SIG_IGN: skipped)."""

    def handler(signum, frame) -> None:
        request_stop(signum)
        if callable(previous):
            previous(signum, frame)  # SIGINT: Python's KeyboardInterrupt; the requeue signal: Lightning's

    return handler


def also_stop_on(signum: int) -> None:
    """Chain a stop request after the handler now installed for `signum` (Lightning's SLURM
    requeue handler, which saves its checkpoint and requeues the job first). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, _request_then(signal.getsignal(signum)))


def stop_on_slurm_requeue(trainer) -> None:
    """Under SLURM with Lightning's auto-requeue, make its requeue signal stop the run too, after
    Lightning's handler (installed when `fit` starts) saved its checkpoint and requeued the job:
    the job ends at once instead of running on until SLURM kills it. Lightning restores the
    previous handler when `fit` ends."""
    environment = trainer._accelerator_connector.cluster_environment
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal):
        return
    if signal.getsignal(environment.requeue_signal) not in (None, signal.SIG_DFL, signal.SIG_IGN):
        also_stop_on(environment.requeue_signal)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT request a stop (SIGINT still raises KeyboardInterrupt, which stops
    the main thread at once; the request stops background sampling). Install it before the
    Trainer runs: Lightning's own SIGTERM handler then calls this one after its own. A stop ends
    the process with 128 + the signal number (Lightning would exit 0 after SIGTERM, 1 after SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        also_stop_on(signum)
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        signum = stop_signal()
        if signum is None:
            raise
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        reset()
