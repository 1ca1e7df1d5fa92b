"""The grader under load: an honest call is never starved or scored 0 because other threads send
answers that overrun, every overrun is counted, and the workers can be started ahead of time."""

import threading
import time

from r1_lightning.rewards import grade, grader_stats, grader_timeouts, start_grader
from r1_lightning.rewards.pool import WALL_FACTOR, WorkerPool

TIMEOUT_S = 0.5


def hostile(n: int) -> str:
    """A different answer for each n < 34,895 (so no cache helps), each a factorial of ~400 million:
    it passes the cheap guards and overruns any time budget."""
    return f"({n % 7 + 2}^{{{n % 5 + 3}}} + 9^{{9}} + {n % 997})!"


def test_start_grader_is_idempotent_and_makes_the_first_call_fast():
    start_grader(wait=True)
    servers = grader_stats().server_starts
    start_grader(wait=True)
    assert grader_stats().server_starts == servers
    start = time.monotonic()
    assert grade(r"\sqrt{75}", r"5\sqrt{3}") is True
    assert time.monotonic() - start < 0.5  # no import of sympy, no warm-up


def test_every_overrun_is_counted_and_a_repeat_is_refused_at_once():
    start_grader(wait=True)
    before, stats = grader_timeouts(), grader_stats()
    answer = hostile(0)
    assert grade(answer, "1", timeout_s=TIMEOUT_S) is False
    assert grader_timeouts() == before + 1
    assert grader_stats().timeouts == stats.timeouts + 1
    start = time.monotonic()
    assert grade(answer, "1", timeout_s=TIMEOUT_S) is False  # the same pair again
    assert time.monotonic() - start < 0.1
    assert grader_timeouts() == before + 2
    assert grader_stats().quarantined == stats.quarantined + 1


def test_honest_calls_are_not_starved_by_overrunning_threads():
    start_grader(wait=True)
    timeouts_before = grader_timeouts()
    stop = time.monotonic() + 3.0
    hostile_calls, honest = [], []

    def send_hostile(thread: int) -> None:
        n = 1000 * (thread + 1)
        while time.monotonic() < stop:
            n += 1
            hostile_calls.append(grade(hostile(n), "1", timeout_s=TIMEOUT_S))

    def send_honest() -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            start = time.monotonic()
            verdict = grade(rf"\sqrt{{{4 * (i + 1)}}}", rf"2\sqrt{{{i + 1}}}", timeout_s=TIMEOUT_S)
            honest.append((verdict, time.monotonic() - start))

    threads = [threading.Thread(target=send_hostile, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=send_honest))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(hostile_calls) >= 4 and not any(hostile_calls)
    assert len(honest) >= 10 and all(verdict for verdict, _ in honest)
    # An honest comparison takes milliseconds of CPU; it never waits for an overrunning one.
    assert max(latency for _, latency in honest) < TIMEOUT_S
    assert grader_timeouts() - timeouts_before == len(hostile_calls)


def test_workers_of_different_servers_agree():
    """Verdicts must not depend on which worker (which process, which hash seed) grades."""
    pairs = [(r"\{a, b, c\}", r"\{c, a, b\}"), (r"\{1, x, \pi\}", r"\{\pi, 1, x\}"), (r"|\infty|", "73.5"),
             (r"\infty^{\infty}", "850"), (r"(1, \sqrt{2}) \cup (3, 4)", r"(3, 4) \cup (1, \sqrt2)")]
    pool = WorkerPool(size=1)  # a second fork server beside the process-wide one
    try:
        own_server = [pool.compare(given, truth, WALL_FACTOR) for given, truth in pairs]
    finally:
        pool.close()
    assert [grade(given, truth, WALL_FACTOR) for given, truth in pairs] == own_server
    assert own_server == [True, True, False, False, True]
