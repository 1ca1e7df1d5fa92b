"""Grader behaviours that are right and that a one-line change could break without another test
noticing: two decimals compared as exact numbers, an infinite interval endpoint never "close
enough" to a huge number, and a comparison starved of CPU counted but never held against its
answer. Expected values are decided by hand from the docstrings of r1_lightning.rewards.grader,
.normalize and .symbolic."""

import os
import signal
import time

import pytest

from r1_lightning.rewards import grade, grader_stats, grader_timeouts
from r1_lightning.rewards.pool import WALL_FACTOR, WorkerPool


@pytest.mark.parametrize("given, ground_truth, expected", [
    ("0.50", "0.5", True),
    ("0.5", "0.5000", True),
    ("0.3333", "0.333333", False),
    ("0.333333", "0.3333", False),
    # 7 and 8 significant digits, 3.3e-9 apart: within the rounding window of the first (5e-8),
    # but the rounding rule is only for a decimal against an exact value.
    ("0.3333333", "0.33333333", False),
    ("0.33333333", "0.3333333", False),
    ("0.3333333", "(0.33333333)", False),  # the same in the symbolic step
    (r"\{0.50, 1\}", r"\{0.5, 1\}", True),
    (r"\{0.3333333, 1\}", r"\{0.33333333, 1\}", False),
])
def test_two_decimals_are_equal_only_as_the_same_number(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth", [
    (r"[1, 10^{100})", r"[1, \infty)"),
    (r"[1, \infty)", r"[1, 10^{100})"),
    (r"(-10^{100}, 0)", r"(-\infty, 0)"),
    (r"(-\infty, -10^{100}) \cup (0, 1)", r"(-\infty, \infty) \cup (0, 1)"),
])
def test_an_infinite_endpoint_is_not_a_huge_number(given, ground_truth):
    assert grade(given, ground_truth) is False
    assert grade(ground_truth, ground_truth.replace(" ", "")) is True  # the interval itself is fine


def test_a_comparison_starved_of_cpu_is_counted_and_its_answer_not_refused():
    """A worker that gets no CPU (here: stopped, as on a machine busy with other jobs) runs out of
    wall time without using its CPU budget. That comparison scores 0 and is counted, but it says
    nothing about the answer: the same pair, asked again, is compared and found equal."""
    timeout_s = 0.3
    pool = WorkerPool(size=1, max_size=1)  # its own single worker, so the test can stop that one
    try:
        pool.start()
        assert pool.wait_ready()
        os.kill(pool._workers[0]._pid, signal.SIGSTOP)
        before, stats = grader_timeouts(), grader_stats()
        start = time.monotonic()
        assert pool.compare(r"\sqrt{75}", r"5\sqrt{3}", timeout_s) is False
        assert time.monotonic() - start >= WALL_FACTOR * timeout_s * 0.9  # waited out the wall bound
        assert grader_stats().timeouts == stats.timeouts + 1
        assert grader_timeouts() == before + 1
        assert pool.compare(r"\sqrt{75}", r"5\sqrt{3}", timeout_s) is True  # a fresh worker, no refusal
        assert grader_stats().quarantined == stats.quarantined
    finally:
        pool.close()
