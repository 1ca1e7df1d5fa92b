"""Table-driven test of the grader on real MATH answers.

tests/fixtures/grader_cases.tsv holds (category, expected, ground_truth, given, note) rows: each
ground truth is a real answer from data/math, each `given` a hand-written rewriting that
is equal (expected 1) or a different value (expected 0), decided by hand. A note that starts with
"KNOWN FAILURE" marks a case the grader gets wrong, with the reason; it is an xfail.
"""

import collections
import csv
import json
from pathlib import Path

import pytest

from r1_lightning.rewards import grade

CASES_PATH = Path(__file__).parent / "fixtures" / "grader_cases.tsv"
MATH_DIR = Path(__file__).resolve().parents[1] / "data" / "math"  # shipped with the repository
KNOWN_FAILURE = "KNOWN FAILURE"
CATEGORIES = {
    "fraction", "radical", "interval", "tuple", "degrees", "units", "text", "matrix", "negative",
    "scientific", "x_prefix", "decimal_money_percent", "thousands", "list", "complex", "expression",
}


def load_cases() -> list[dict]:
    lines = [line for line in CASES_PATH.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    for row in rows:
        row["expected"] = row["expected"] == "1"
    return rows


CASES = load_cases()


@pytest.fixture(scope="module")
def graded() -> list[bool]:
    """Every case graded once; the tests below read from it."""
    return [grade(case["given"], case["ground_truth"]) for case in CASES]


def test_table_is_large_and_covers_every_category():
    assert len(CASES) >= 150
    by_category = collections.defaultdict(set)
    for case in CASES:
        by_category[case["category"]].add(case["expected"])
    assert set(by_category) == CATEGORIES
    for category, expectations in by_category.items():
        assert expectations == {True, False}, f"{category} needs both equal and different cases"


def test_ground_truths_are_real_math_answers():
    answers = set()
    for split in ("train", "validation"):
        with open(MATH_DIR / f"{split}.jsonl") as lines:
            answers.update(json.loads(line)["answer"] for line in lines)
    assert [case["ground_truth"] for case in CASES if case["ground_truth"] not in answers] == []


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: f"{CASES[i]['category']}-{i}")
def test_case(index, graded):
    case = CASES[index]
    if case["note"].startswith(KNOWN_FAILURE):
        pytest.xfail(case["note"])
    assert graded[index] == case["expected"], (
        f"grade({case['given']!r}, {case['ground_truth']!r}) should be {case['expected']} ({case['note']})"
    )


def test_accuracy_report(graded, capsys):
    """Per-category accuracy, printed (run with -s to see it); all but the known failures right."""
    right, total = collections.Counter(), collections.Counter()
    for case, result in zip(CASES, graded):
        total[case["category"]] += 1
        right[case["category"]] += result == case["expected"]
    with capsys.disabled():
        print(f"\ngrader accuracy: {sum(right.values())}/{len(CASES)} = {sum(right.values()) / len(CASES):.1%}")
        for category in sorted(total):
            print(f"  {category:24s} {right[category]:3d}/{total[category]}")
    known_failures = sum(case["note"].startswith(KNOWN_FAILURE) for case in CASES)
    assert sum(right.values()) == len(CASES) - known_failures
