"""A prompt, safe stop: SIGTERM or SIGINT in the middle of a step that would run for hours (a long
generation on the CPU) stops the run within seconds, keeps `last.ckpt` at the last complete step,
says how to resume and exits with 128 + the signal number; resuming reproduces the uninterrupted
run. The loops that can run long (generation, grading, waiting for a symbolic worker, background
sampling) check the request; the rest of `r1_lightning.stopping` is checked here too."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_checkpointing import assert_same_tensors, metric_rows
from test_cli import ROOT, run_cli, tiny_grpo_args

from r1_lightning import stopping
from r1_lightning.rewards.pool import SymbolicWorker, WorkerPool
from r1_lightning.stopping import StopRequested, request_stop, stop_on_signals

STOP_WITHIN_S = 30.0


class LongGenerationFrom(L.Callback):
    """From global step `step` on, every rollout answer is `tokens` tokens long (min_tokens =
    max_tokens): with 32 answers a step, hours on a CPU. Touches `marker` when that step starts,
    when the checkpoint of the step before it is complete on disk."""

    def __init__(self, step: int, marker: str, tokens: int = 1_000_000):
        self.step, self.marker, self.tokens = step, marker, tokens

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            pl_module.sampling = dataclasses.replace(pl_module.sampling, min_tokens=self.tokens, max_tokens=self.tokens)
            Path(self.marker).touch()


def run_and_signal(args: list, marker: Path, signum: int, log: Path) -> tuple[int, float]:
    """Run the CLI in a child process, send `signum` one second after `marker` appears; returns the
    exit code and the seconds from the signal to the exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               OMP_NUM_THREADS=str(torch.get_num_threads()))  # the same arithmetic as the runs in this process
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "r1_lightning.cli", *map(str, args)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while not marker.exists():
                assert process.poll() is None, f"the run ended before its long step:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the long step never started:\n{log.read_text()}"
                time.sleep(0.2)
            time.sleep(1.0)  # well inside the generation
            signalled = time.monotonic()
            process.send_signal(signum)
            code = process.wait(timeout=STOP_WITHIN_S + 30)  # measured below; the margin only reports it
            return code, time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


ASYNC = ["--model.init_args.engine.init_args.own_weights", "true", "--model.init_args.async_rollouts.enabled", "true"]


@pytest.mark.parametrize("signum, said, mode", [(signal.SIGTERM, "stopped by SIGTERM", []),
                                                (signal.SIGINT, "KeyboardInterrupt", []),
                                                (signal.SIGTERM, "stopped by SIGTERM", ASYNC)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-async"])
def test_a_signal_stops_a_step_that_would_not_end_and_the_resumed_run_is_exact(
    tiny_model_dir, toy_task_dir, tmp_path, signum, said, mode
):
    """Step 1 generates for hours (in the async run, on the background thread, the batch of step 2
    while step 1 trains; the checkpoint after step 1 waits for it). The signal ends the run within
    seconds, with last.ckpt still the one written after step 0 (the async run's holds step 1's batch)."""
    straight, stopped, marker = tmp_path / "straight", tmp_path / "stopped", tmp_path / "long_step_started"
    long_from_step_1 = [*mode, "--trainer.callbacks+=test_signals.LongGenerationFrom", "--trainer.callbacks.step", 1,
                        "--trainer.callbacks.marker", marker]
    code, seconds = run_and_signal(tiny_grpo_args(tiny_model_dir, toy_task_dir, stopped, max_steps=3,
                                                  extra=long_from_step_1), marker, signum, tmp_path / "log")
    output = (tmp_path / "log").read_text()
    print(f"stopped {seconds:.1f} s after {signal.Signals(signum).name}")
    assert seconds < STOP_WITHIN_S, output
    assert code == 128 + signum, output
    last = stopped / "ckpt" / "last.ckpt"
    kept = "the batch being sampled was abandoned" if mode else f"{last} \\(step 1\\) is already as new"
    assert re.search(f"{said} at step [12]: .*{kept}.*; resume with --ckpt_path last", output), output
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1  # loads: intact
    assert not list(stopped.glob("ckpt/*.partial"))

    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, stopped, max_steps=3, extra=[*mode, "--ckpt_path", "last"]))
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, straight, max_steps=3, extra=mode))
    expected = metric_rows(straight)
    assert {step for step, name in expected if name == "train/loss"} == {0, 1, 2}
    assert metric_rows(stopped) == expected
    assert_same_tensors(load_file(stopped / "ckpt" / "last_hf" / "model.safetensors"),
                        load_file(straight / "ckpt" / "last_hf" / "model.safetensors"))


# ----------------------------------------------------------------------------- the pieces
@pytest.fixture
def stop_forgotten():
    yield
    stopping.reset()


def stops_within(seconds: float, wait) -> float:
    """Run `wait` on a thread, request a stop after half a second; assert it raised StopRequested
    (exit code 143) within `seconds` of the request, and return how long it took."""
    errors = []

    def run() -> None:
        try:
            wait()
        except StopRequested as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)
    requested = time.monotonic()
    request_stop(signal.SIGTERM)
    thread.join(timeout=seconds)
    took = time.monotonic() - requested
    assert not thread.is_alive() and [error.code for error in errors] == [143]
    return took


def test_waiting_for_a_symbolic_worker_or_its_verdict_stops_at_a_request(stop_forgotten):
    silent, _other_end = socket.socketpair()  # a worker that never answers
    assert stops_within(2.0, lambda: SymbolicWorker(silent)._read_line(time.monotonic() + 600)) < 1.0
    stopping.reset()

    pool = WorkerPool(size=1, max_size=1)
    try:
        held = pool._acquire()  # the only worker is busy: the next caller queues
        assert stops_within(2.0, pool._acquire) < 1.0
        assert not pool._waiting  # the stopped caller left the queue
        pool._idle.append(held)
    finally:
        pool.close()


def test_the_signal_handlers_chain_and_set_the_exit_code(stop_forgotten):
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        stopping.also_stop_on(signal.SIGUSR1)  # after Lightning's SLURM requeue handler, say
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == [signal.SIGUSR1] and stopping.stop_signal() == signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, previous)
    stopping.reset()

    sigterm_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # only recorded: no default action, no exception here
        stopping.raise_if_stop_requested()
    assert exit_info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is sigterm_before  # restored, and the request forgotten
    assert stopping.stop_signal() is None

    with pytest.raises(SystemExit) as exit_info, stop_on_signals():
        sys.exit(2)  # an exit without a signal keeps its code
    assert exit_info.value.code == 2

    stopping.allow_mid_step_stops(False)  # several ranks: Lightning stops them together between steps
    request_stop(signal.SIGTERM)
    stopping.raise_if_stop_requested()
