"""Fuzz the verifiable reward: generated answers against real ground truths, from several threads.

    python benchmarks/grader_fuzz.py --answers PATH/TO/math/validation.jsonl \
        --out benchmarks/results/raw/grader_fuzz.json

Every answer is graded with `r1_zero_reward_fn` inside an R1-Zero response, against a ground truth
from `--answers` (a JSONL file with an "answer" field, e.g. the MATH validation split). Categories:
random LaTeX, huge numbers, deep nesting, unbalanced braces, long strings, random responses with
tags, and universal-answer candidates (constant answers: infinities, absolute values, huge, tiny and
cancelling powers, nan, empty sets, short decimals), each graded against the same `--truths` distinct
ground truths (plus 0, 1, 1/2 and pi where the file has them, which some constants do equal). `--threads` threads grade the shuffled work at once while one more thread keeps
sending honest answers (ground truths rewritten in an equal form) and times them.

Reports: crashes (an exception out of the reward function, or a worker that died), calls over 5 s,
latencies, timeouts, the constants rewarded on more than `--universal-limit` distinct ground truths,
and whether an honest call was starved (its verdict differed from the one it gets on an idle grader,
or it took over 5 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from r1_lightning.rewards import grader_stats, r1_zero_reward_fn, start_grader

SLOW_S = 5.0
ATOMS = ["0", "1", "2", "7", "12", "-3", "0.5", "3.14", r"\pi", "e", "i", "x", "y", "n", r"\infty",
         r"\frac{1}{2}", r"\sqrt{2}", "10^{100}", "2^{1000}", r"\theta", r"\text{odd}", "(C)"]
CONSTANT_LEAVES = [r"\infty", r"-\infty", "0^0", r"\frac{0}{0}", r"\frac{1}{0}", r"\text{nan}", "nan", "zoo",
                   r"\emptyset", r"\{\}", r"\mathbb{R}", "x", "0", "1", "0.0", "1.00", "1.000000", r"\pi",
                   "2^{1000}", "10^{-100}", "e^{-1000}", "9^{99999}", r"\sin(10^{100})"]


def random_latex(rng: random.Random, depth: int = 0) -> str:
    if depth > 4 or rng.random() < 0.3:
        return rng.choice(ATOMS)
    a, b = random_latex(rng, depth + 1), random_latex(rng, depth + 1)
    return rng.choice([
        f"{a} + {b}", f"{a} - {b}", rf"{a} \cdot {b}", f"{a}^{{{b}}}", rf"\frac{{{a}}}{{{b}}}", rf"\sqrt{{{a}}}",
        f"|{a}|", rf"\sin({a})", rf"\log({a})", f"({a})!", f"({a}, {b})", f"[{a}, {b})", rf"\{{{a}, {b}\}}",
        rf"\begin{{pmatrix}} {a} \\ {b} \end{{pmatrix}}", f"x = {a}", f"{a} = {b}", rf"{a} \cup {b}",
        rf"\left( {a} \right)", f"{a}, {b}", rf"{a} \text{{ cm}}", f"{a}{b}",
    ])


def huge_number(rng: random.Random) -> str:
    n = rng.randint(2, 99)
    return rng.choice([
        "9" * rng.randint(20, 5000), f"{n}^{{{rng.randint(1000, 99999)}}}", f"{n}^{{-{rng.randint(1000, 99999)}}}",
        f"({n}^{{{rng.randint(5, 9)}}})!", f"{rng.randint(100, 999)}!", f"{n}^{{{n}^{{{n}}}}}",
        rf"\frac{{{'7' * rng.randint(50, 400)}}}{{{'3' * rng.randint(50, 400)}}}", f"{n}^{{{n}}}^{{{n}}}",
        f"10^{{{rng.randint(20, 300)}}} + {rng.randint(1, 9)} - 10^{{{rng.randint(20, 300)}}}",
    ])


def deep_nesting(rng: random.Random) -> str:
    k = rng.randint(5, 3000)
    return rng.choice(["(" * k + "1" + ")" * k, r"\frac{1}{" * k + "2" + "}" * k, r"\sqrt{" * k + "2" + "}" * k,
                       "{" * k + "x" + "}" * k, "2^{" * min(k, 50) + "2" + "}" * min(k, 50)])


def unbalanced(rng: random.Random) -> str:
    text = random_latex(rng)
    return rng.choice(["3} + {4", text + "}" * rng.randint(1, 5), "{" * rng.randint(1, 5) + text,
                       text.replace("}", "", 1), r"\frac{1}{2", r"\left( 1, 2", "1]" + text + "[2"])


def long_string(rng: random.Random) -> str:
    n = rng.randint(600, 200_000)
    return rng.choice(["1+" * (n // 2) + "1", "x" * n, r"\frac{1}{2}" + r"\," * (n // 2), " ".join(["1"] * (n // 2)),
                       "".join(rng.choice("0123456789+-*/^(){}[]\\ abcxyz") for _ in range(min(n, 20_000)))])


def random_response(rng: random.Random) -> str:
    parts = ["<think>", "</think>", " ", "<answer>", "</answer>", "</think> <answer>", r"\boxed{", "{", "}",
             "\\", "42", r"\frac{1}{2}", "$", "\n", r"\boxed{}"]
    return "".join(rng.choice(parts) for _ in range(rng.randint(1, 40)))


def constant_family(rng: random.Random, count: int) -> list[str]:
    """Universal-answer candidates: the leaves and random combinations of them."""
    def combine(depth: int) -> str:
        a = rng.choice(CONSTANT_LEAVES) if depth > 1 or rng.random() < 0.3 else combine(depth + 1)
        b = rng.choice(CONSTANT_LEAVES)
        return rng.choice([f"|{a}|", f"{a} - {b}", f"{a} + {b}", f"{a}^{{{b}}}", rf"\frac{{{a}}}{{{b}}}",
                           f"({a} + 3) - {a}", rf"{a} \cdot {b}"])
    candidates = list(CONSTANT_LEAVES) + [r"|\infty|", r"\infty^{\infty}", "2^{1000} - 2^{1000}"]
    while len(candidates) < count:
        candidates.append(combine(0))
    return list(dict.fromkeys(candidates))[:count]


def equal_rewrite(truth: str, rng: random.Random) -> str:
    """An answer equal to `truth` by the grader's documented leniencies."""
    rewrite = rng.choice([
        lambda t: t, lambda t: rf"\boxed{{{t}}}", lambda t: t.replace(r"\frac", r"\dfrac"), lambda t: f"  {t} ",
        lambda t: t if "=" in t or "," in t else f"x = {t}", lambda t: rf"\left({t}\right)" if t.startswith("(") else t,
    ])
    return rewrite(truth)


# Equal forms of a ground truth that a reader accepts but earlier graders refused: plain-text pi and
# sqrt(), and an interval written as a double inequality. Each is (kind, rewrite or None if it
# does not apply to that truth).
_PI = re.compile(r"(?<=[\d}])\s*\\pi(?![a-zA-Z])")
_SQRT = re.compile(r"(\d?)(\s*)\\sqrt\{([^{}]+)\}")
_INTERVAL = re.compile(r"(?:\\left)?([\[(])\s*([^,\[\](){}]+|\\frac\{[^{}]+\}\{[^{}]+\}|-\\frac\{[^{}]+\}\{[^{}]+\})"
                       r"\s*,\s*([^,\[\](){}]+|\\frac\{[^{}]+\}\{[^{}]+\})\s*(?:\\right)?([\])])")


def equivalent_forms(truth: str) -> list[tuple[str, str]]:
    forms = []
    if r"\pi" in truth:
        forms.append(("plain_pi", re.sub(r"\\pi(?![a-zA-Z])", "pi", _PI.sub("*pi", truth))))
    if _SQRT.search(truth):
        forms.append(("plain_sqrt", _SQRT.sub(lambda m: f"{m[1]}*sqrt({m[3]})" if m[1] else f"{m[2]}sqrt({m[3]})", truth)))
    interval = _INTERVAL.fullmatch(truth.strip())
    # Only with a square bracket: (a, b) may be a point rather than an interval.
    if interval and r"\infty" not in truth and interval[1] + interval[4] != "()":
        left, low, high, right = interval.groups()
        below, above = ("<" if left == "(" else r"\le"), ("<" if right == ")" else r"\le")
        high = high.replace(r"\right", "").strip()
        forms.append(("double_inequality", f"{low.strip()} {below} x {above} {high}"))
    return forms


def false_negatives(truths: list[str]) -> dict:
    """How many equal forms (`equivalent_forms`) of `truths` the grader refuses, by kind."""
    report: dict[str, dict] = {}
    for truth in truths:
        for kind, form in equivalent_forms(truth):
            entry = report.setdefault(kind, {"of": 0, "refused": 0, "examples": []})
            entry["of"] += 1
            if not r1_zero_reward_fn(f"r </think> <answer> {form} </answer>", truth)["reward"]:
                entry["refused"] += 1
                if len(entry["examples"]) < 5:
                    entry["examples"].append({"answer": form, "truth": truth})
    for entry in report.values():
        entry["rate"] = round(entry["refused"] / entry["of"], 4)
    return report


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values else None


def environment() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "r1_lightning"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=False)
    return {"python": platform.python_version(), "sympy": metadata.version("sympy"),
            "math_verify": metadata.version("math-verify"), "cpu_cores": os.cpu_count(),
            "platform": platform.platform(), "commit": commit.stdout.strip(), "r1_lightning_dirty": bool(dirty.stdout),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", required=True, help="JSONL with an 'answer' field (ground truths)")
    parser.add_argument("--fuzz", type=int, default=5000, help="generated answers, one ground truth each")
    parser.add_argument("--constants", type=int, default=25, help="universal-answer candidates")
    parser.add_argument("--truths", type=int, default=250, help="distinct ground truths each constant meets")
    parser.add_argument("--universal-limit", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1.0, help="the grader's per-call CPU budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="where to write the JSON report")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    with open(args.answers) as lines:
        truths_all = sorted({json.loads(line)["answer"] for line in lines if line.strip()})
    truths = rng.sample(truths_all, min(args.truths, len(truths_all)))
    # Plus the values some constants really equal, so that the count is seen to count.
    truths += [t for t in ("0", "1", r"\frac{1}{2}", r"\pi") if t in truths_all and t not in truths]
    makers = {"random_latex": random_latex, "huge_number": huge_number, "deep_nesting": deep_nesting,
              "unbalanced": unbalanced, "long_string": long_string, "random_response": random_response}
    work = []  # (category, response, ground truth)
    for i in range(args.fuzz):
        category = list(makers)[i % len(makers)]
        answer = makers[category](rng)
        response = answer if category == "random_response" else f"r </think> <answer> {answer} </answer>"
        work.append((category, response, rng.choice(truths_all)))
    constants = constant_family(rng, args.constants)
    work += [("universal", f"r </think> <answer> {c} </answer>", t) for c in constants for t in truths]
    rng.shuffle(work)
    honest = [(equal_rewrite(t, rng), t) for t in rng.sample(truths_all, min(200, len(truths_all)))]

    start = time.monotonic()
    start_grader(wait=True)
    startup_s = time.monotonic() - start
    refused_forms = false_negatives(truths_all)
    baseline = [r1_zero_reward_fn(f"r </think> <answer> {a} </answer>", t)["reward"] for a, t in honest]
    stats_before = grader_stats()

    results, crashes, lock = [], [], threading.Lock()
    cursor = iter(range(len(work)))
    done = threading.Event()

    def fuzz_thread() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            category, response, truth = work[index]
            t0 = time.monotonic()
            try:
                reward = r1_zero_reward_fn(response, truth)["reward"]
            except Exception:  # noqa: BLE001 - that is what we count
                reward = None
                crashes.append({"category": category, "response": response[:300], "truth": truth,
                                "error": traceback.format_exc(limit=3)})
            results.append((index, reward, time.monotonic() - t0))

    honest_calls = []

    def honest_thread() -> None:
        i = 0
        while not done.is_set():
            answer, truth = honest[i % len(honest)]
            t0 = time.monotonic()
            reward = r1_zero_reward_fn(f"r </think> <answer> {answer} </answer>", truth)["reward"]
            honest_calls.append((i % len(honest), reward, time.monotonic() - t0))
            i += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=fuzz_thread) for _ in range(args.threads)]
    watcher = threading.Thread(target=honest_thread)
    load_start = time.monotonic()
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    load_s = time.monotonic() - load_start
    stats = grader_stats()

    latencies = {category: [] for category in [*makers, "universal"]}
    matched: dict[str, set[str]] = {c: set() for c in constants}
    for index, reward, seconds in results:
        category, response, truth = work[index]
        latencies[category].append(seconds)
        if category == "universal" and reward:
            matched[response[len("r </think> <answer> "):-len(" </answer>")]].add(truth)
    all_latencies = [s for _, _, s in results]
    starved = [{"answer": honest[i][0], "truth": honest[i][1], "reward": r, "idle_reward": baseline[i],
                "seconds": round(s, 3)} for i, r, s in honest_calls if r != baseline[i] or s > SLOW_S]
    top = sorted(matched.items(), key=lambda item: -len(item[1]))[:8]
    report = {
        "environment": environment(),
        "settings": vars(args) | {"work_items": len(work), "constants_used": len(constants), "truths_used": len(truths)},
        "startup_s": round(startup_s, 2), "load_phase_s": round(load_s, 1),
        "calls": len(results), "crashes": len(crashes), "crash_examples": crashes[:5],
        "worker_failures": stats.worker_failures - stats_before.worker_failures,
        "timeouts": stats.timeouts - stats_before.timeouts, "quarantined": stats.quarantined - stats_before.quarantined,
        "calls_over_5s": sum(s > SLOW_S for s in all_latencies),
        "max_latency_s": round(max(all_latencies), 3), "p50_latency_s": percentile(all_latencies, 0.5),
        "p99_latency_s": percentile(all_latencies, 0.99),
        "by_category": {c: {"calls": len(v), "max_s": percentile(v, 1.0), "p99_s": percentile(v, 0.99)}
                        for c, v in latencies.items()},
        "universal": {"limit": args.universal_limit, "max_matches": max(len(v) for v in matched.values()),
                      "over_limit": {c: sorted(v) for c, v in matched.items() if len(v) > args.universal_limit},
                      "most_matched": [{"answer": c, "matches": len(v), "truths": sorted(v)[:8]} for c, v in top]},
        "honest": {"calls": len(honest_calls), "starved": len(starved), "starved_examples": starved[:5],
                   "max_latency_s": round(max(s for _, _, s in honest_calls), 3),
                   "p99_latency_s": percentile([s for _, _, s in honest_calls], 0.99),
                   "idle_rewarded": sum(baseline), "of": len(baseline)},
        "false_negatives": refused_forms,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("crash_examples", "environment")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
