"""vLLM's whole `LLM` in a process of its own (`VLLMEngine(process="separate")`): `LLMProcess`.

A vLLM `LLM` is two parts: a front end, in the process that calls it, and an engine core (scheduler
and model), in a process of its own by default. The front end is Python that runs for every token of
every request: it detokenizes, checks stop strings and builds each token's log-prob entry. Called
from the trainer, that Python shares the trainer's interpreter. With async rollouts the trainer samples
on a thread while it trains, and the two then take turns on one GIL: both the rollout and the update
ran about twice as slow as alone, so the overlap bought nothing.

`LLMProcess` builds the `LLM` in a spawned child process and forwards calls to it over a pipe; the
caller's thread only waits on the pipe, which holds no GIL. What crosses is small: token-id prompts,
sampling options and finished `Completion`s (`call`), weight-transfer metadata (the methods
`NCCLWeightSender` calls), never tensors (weights travel over NCCL between the GPUs).

- One call at a time (a lock): the engine is used by one thread at a time anyway (`RolloutsAhead`).
- A call that raises in the child raises `RuntimeError` here, naming the method and the child's error.
- A child that dies raises `RuntimeError` at the call that was waiting, with its exit code.
- The child ignores Ctrl-C: the trainer decides when it ends (`close`, also run at exit). It ends on
  its own when the trainer's process dies (its pipe closes); vLLM's engine core follows its front end.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

# How long the engine may take to build: a first build on a fresh machine compiles kernels for minutes.
START_TIMEOUT_S = 1800.0


class LLMProcess:
    """`build(**engine_args)` (default `vllm.LLM`) run in a spawned process, with `env` added to its
    environment before anything is imported there.

    `llm_process.method(*args, **kwargs)` calls the `LLM`'s method in the child and returns its
    result; `call("module:function", *args)` runs `function(llm, *args)` there (work on the results
    that should stay out of this process, e.g. turning `RequestOutput`s into `Completion`s).
    """

    def __init__(self, engine_args: dict[str, Any], env: dict[str, str], build: str = "vllm:LLM",
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        context = multiprocessing.get_context("spawn")  # the trainer's CUDA is initialized: no fork
        self._conn, child_conn = context.Pipe()
        # not a daemon: vLLM's front end starts its engine core as a child process of its own
        self._process = context.Process(target=_serve, args=(child_conn, build, engine_args, env),
                                        name="r1-lightning-vllm", daemon=False)
        self._process.start()
        child_conn.close()  # the child holds the only other end: its exit reads as EOF here
        self._lock = threading.Lock()
        # one thread at a time reaps the child: of two waiting at once, one would see it alive after it died
        self._reap_lock = threading.Lock()
        self._closer = weakref.finalize(self, _close, self._process, self._conn, self._reap_lock)
        # multiprocessing joins non-daemon children at exit, in a handler registered when it was
        # imported; atexit runs the last registered first, so this closes the child before that join
        atexit.register(self._closer)
        deadline = time.monotonic() + start_timeout_s
        while not self._conn.poll(1.0):
            if not self._process.is_alive():
                raise RuntimeError(f"the vLLM process exited with code {self._process.exitcode} while building "
                                   f"the engine ({build}); its log is above")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the vLLM process did not build the engine within {start_timeout_s:g} s")
        self._answer("building the engine")

    @property
    def pid(self) -> int:
        return self._process.pid

    def call(self, function: str, *args) -> Any:
        """`function(llm, *args)` in the child, `function` a "module:name" path; returns its result."""
        return self._request(("call", function, args, {}))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._request(("method", name, args, kwargs))

    def close(self, timeout_s: float = 30.0) -> None:
        """End the child (and with it vLLM's engine core), terminating it if it has not ended within
        `timeout_s` (a hung engine); later calls fail."""
        if self._closer.detach() is not None:
            _close(self._process, self._conn, self._reap_lock, timeout_s)

    def _request(self, request: tuple) -> Any:
        with self._lock:
            try:
                self._conn.send(request)
            except (BrokenPipeError, OSError) as error:
                raise RuntimeError(f"the vLLM process is gone (exit code {self._exit_code(0)}); "
                                   f"{request[1]} was not sent") from error
            return self._answer(request[1])

    def _answer(self, what: str) -> Any:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as error:
            raise RuntimeError(f"the vLLM process exited with code {self._exit_code(5)} during {what}; "
                               "its log is above") from error
        if status == "error":
            raise RuntimeError(f"vLLM process, {what}: {value}")
        return value

    def _exit_code(self, timeout_s: float) -> int | None:
        """The child's exit code once it has ended (waiting up to `timeout_s`), else None."""
        with self._reap_lock:
            self._process.join(timeout_s)
            return self._process.exitcode


def _close(process, conn, reap_lock: threading.Lock, timeout_s: float = 30.0) -> None:
    """Ask the child to end, then make sure it has (a hung engine is terminated, then killed)."""
    try:
        conn.send(None)
    except (BrokenPipeError, OSError):
        pass
    with reap_lock:
        process.join(timeout=timeout_s)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():  # SIGTERM handled (vLLM installs handlers) but not acted on: SIGKILL
            process.kill()
            process.join()
    conn.close()


def load(path: str) -> Callable[..., Any]:
    """The object at "module:name"."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _serve(conn, build: str, engine_args: dict[str, Any], env: dict[str, str]) -> None:
    """The child: build the `LLM`, then answer requests until told to stop or the trainer is gone."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        llm = load(build)(**engine_args)
    except BaseException as error:  # noqa: BLE001 - reported to the trainer, which raises it
        conn.send(("error", _describe(error)))
        return
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break  # the trainer's process is gone
        if request is None:
            break
        kind, name, args, kwargs = request
        try:
            target = load(name) if kind == "call" else getattr(llm, name)
            reply = ("ok", target(llm, *args, **kwargs) if kind == "call" else target(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - reported to the trainer, which raises it
            reply = ("error", _describe(error))
        try:
            conn.send(reply)
        except Exception as error:  # noqa: BLE001 - e.g. a result that cannot be pickled
            conn.send(("error", f"its result could not be sent back: {_describe(error)}"))
    del llm  # vLLM shuts its engine core down when its LLM goes
