"""A small run of benchmarks/grader_fuzz.py: every category is generated and graded from several
threads, and the report has the figures the benchmark promises."""

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES_PATH = Path(__file__).parent / "fixtures" / "grader_cases.tsv"


def test_grader_fuzz_benchmark_runs_and_reports(tmp_path):
    lines = [line for line in CASES_PATH.read_text().splitlines() if not line.startswith("#")]
    truths = {row["ground_truth"] for row in csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)}
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"answer": truth}) + "\n" for truth in sorted(truths)))
    out = tmp_path / "fuzz.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grader_fuzz.py"), "--answers", str(answers),
                          "--fuzz", "36", "--constants", "4", "--truths", "10", "--threads", "2", "--timeout", "0.3",
                          "--out", str(out)], check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["truths_used"] >= 10
    assert report["calls"] == 36 + 4 * report["settings"]["truths_used"]
    assert set(report["by_category"]) == {"random_latex", "huge_number", "deep_nesting", "unbalanced",
                                          "long_string", "random_response", "universal"}
    assert report["crashes"] == 0 and report["worker_failures"] == 0
    assert report["universal"]["over_limit"] == {}
    assert report["honest"]["calls"] > 0 and report["honest"]["starved"] == 0
    assert report["honest"]["idle_rewarded"] == report["honest"]["of"]  # equal rewrites are equal
    assert {"python", "sympy", "math_verify", "commit", "cpu_cores"} <= set(report["environment"])
    # Equal forms of the fixture's ground truths (plain-text pi and sqrt, double inequalities): none refused.
    assert set(report["false_negatives"]) == {"plain_pi", "plain_sqrt", "double_inequality"}
    assert all(entry["of"] > 0 and entry["refused"] == 0 for entry in report["false_negatives"].values())
