"""The symbolic step of the grader, run in a child process: `python -m r1_lightning.rewards._symbolic_worker`.

Protocol (one JSON array per line): the parent writes `[request_id, given, ground_truth]` to stdin,
the worker answers `[request_id, equal]` on stdout. It announces itself with the line `ready` once
math-verify's parser is loaded, and exits when stdin closes (so it never outlives its parent).

Why a process: sympy and the antlr LaTeX parser can run for minutes (or allocate gigabytes) on
hostile input, inside C code that no signal interrupts, and math-verify's own SIGALRM timeouts
only work in the main thread. The parent kills this process when a reply is late, which bounds
every call from any thread. The worker itself disables math-verify's timeouts for that reason.
"""

import functools
import json
import logging
import resource
import signal
import sys

# A hostile expression like (10^6)! or 9^(9^9) must fail fast with MemoryError instead of
# swapping the machine; the parser and sympy need a few hundred MiB.
MEMORY_LIMIT_BYTES = 4 * 1024**3

WARM_UP = [
    ("0.5", "\\frac{1}{2}"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("[0, 3)", "(0, 3]"),
    ("(-\\infty, 3) \\cup (3, \\infty)", "(3, \\infty) \\cup (-\\infty, 3)"),
    ("(1, \\pi/2)", "\\left( 1, \\frac{\\pi}{2} \\right)"),
    ("\\begin{pmatrix} 1 \\\\ 0.5 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ \\frac{1}{2} \\end{pmatrix}"),
    ("(x+1)(x+2)", "x^2 + 3x + 2"),
    ("y = 2x + 3", "2x+3"),
    ("1 + i", "i + 1"),
    ("\\frac{\\sqrt{2}}{2}", "0.707107"),
]


def _limit_memory() -> None:
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))
    except (ValueError, OSError):  # not permitted here: the parent's time bound still holds
        pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    replies, sys.stdout = sys.stdout, sys.stderr  # a stray print() in a library must not break the protocol
    _limit_memory()
    logging.disable(logging.WARNING)  # math-verify warns once that its own timeouts are off
    from math_verify import LatexExtractionConfig, parse, verify

    # The answer is already extracted, so parse the whole string as one LaTeX expression
    # (as if it were boxed) rather than fishing for any number in it: "2 or maybe 3" must not
    # match 3. No fallback to the raw string: an unparsable answer compares as not equal.
    whole_answer = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]

    @functools.lru_cache(maxsize=8192)  # a GRPO group repeats its ground truth and often its answers
    def parse_answer(text: str):
        return parse("\\boxed{" + text + "}", extraction_config=whole_answer,
                     fallback_mode="no_fallback", parsing_timeout=None)

    def equal(given: str, ground_truth: str) -> bool:
        gold, pred = parse_answer(ground_truth), parse_answer(given)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=None))

    # Load the parser and warm sympy's caches before announcing readiness: a cold worker takes up
    # to a second over its first radical or interval, which a caller's timeout must not pay for.
    for given, ground_truth in WARM_UP:
        equal(given, ground_truth)
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        request_id, given, ground_truth = json.loads(line)
        try:
            result = equal(given, ground_truth)
        except Exception:  # noqa: BLE001 - MemoryError, RecursionError, sympy internals: "not equal"
            result = False
        replies.write(json.dumps([request_id, result]) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
