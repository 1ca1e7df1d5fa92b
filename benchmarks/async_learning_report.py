"""Synchronous against one-step-off GRPO on the same task: the curves and the evaluation table, from
the files `bash benchmarks/gpu/run.sh async_learning` leaves, one folder per run:

    sync/metrics.csv, async/metrics.csv             each run's CSV log
    sync/eval_step_<N>_summary.json, async/...      its greedy held-out evaluations at step N
    (`--lagged FOLDER LABEL` reads another one-step-off variant's folder in place of async/)

    python benchmarks/async_learning_report.py benchmarks/results/raw/async_learning_smollm2_seeds/seed0 \\
        --png curves.png

prints a markdown table (held-out accuracy and format rate at each evaluation, the first step whose
train format reward reached one half, the mean train answer reward over the last ten steps) and draws,
against the GRPO step, both runs' train reward, answer reward, format reward, response length and
held-out accuracy and format rate. Given several folders (one per seed), it prints each one's table,
then the table and the curves of their means (step by step over the seeds), and the seeds' paired
differences (one step off minus synchronous, mean and standard error over the seeds): held-out
accuracy at each evaluation, and the train answer and format rewards over each ten steps.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from report_figures import Panel, eval_summaries, plot_panels

from r1_lightning.plotting import read_metrics

RUNS = (("sync", "synchronous"), ("async", "one step off"))
TRAIN = (
    ("train/reward_mean", "train reward (answer + 0.1 format)"),
    ("train/answer_reward", "train answer reward"),
    ("train/format_reward", "train format reward"),
    ("train/response_length", "response length (tokens)"),
)
HELD_OUT = (("answer_accuracy", "held-out accuracy (greedy)"), ("format_rate", "held-out format rate"))


def read_runs(folder: Path, lagged: tuple[str, str] = RUNS[1]) -> dict[str, dict]:
    """{run label: {"train": {metric: [(step, value)]}, "evals": [(step, summary)] by step}}: the
    synchronous run and `lagged`, (its folder, its label)."""
    runs = {}
    for name, label in (RUNS[0], lagged):
        if not (folder / name / "metrics.csv").is_file():
            raise FileNotFoundError(f"{folder / name / 'metrics.csv'}: missing (expected one folder per run: sync/, async/)")
        metrics = read_metrics(folder / name / "metrics.csv")
        runs[label] = {"train": {key: metrics.get(key, []) for key, _ in TRAIN},
                       "evals": sorted(eval_summaries(folder / name).items())}
    return runs


def mean_of_runs(seeds: list[dict[str, dict]]) -> dict[str, dict]:
    """The runs of several seeds (each as `read_runs` gives them) averaged step by step, in the same form;
    a step counts only where every seed has it."""
    def mean_points(series: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
        by_step = [dict(points) for points in series]
        steps = sorted(set.intersection(*(set(points) for points in by_step)))
        return [(step, sum(points[step] for points in by_step) / len(by_step)) for step in steps]

    averaged = {}
    for label in seeds[0]:
        runs = [seed[label] for seed in seeds]
        evals = [dict(run["evals"]) for run in runs]
        steps = sorted(set.intersection(*(set(e) for e in evals)))
        averaged[label] = {
            "train": {key: mean_points([run["train"][key] for run in runs]) for key in runs[0]["train"]},
            "evals": [(step, {key: sum(e[step][key] for e in evals) / len(evals) for key, _ in HELD_OUT}
                              | {"n": evals[0][step]["n"]}) for step in steps],
        }
    return averaged


def paired_differences(seeds: list[dict[str, dict]], window: int = 10) -> str:
    """A markdown table: per quantity the two runs' means over the seeds and their paired difference
    (one step off minus synchronous) as mean ± standard error of the mean over the seeds."""
    sync, lagged = list(seeds[0])
    evals = [{label: dict(seed[label]["evals"]) for label in (sync, lagged)} for seed in seeds]
    rows = []  # (name, [(sync value, one-step-off value) per seed], scale, unit)
    for step in sorted(set.intersection(*(set(e[label]) for e in evals for label in (sync, lagged)))):
        rows.append((f"held-out accuracy, step {step}",
                     [(e[sync][step]["answer_accuracy"], e[lagged][step]["answer_accuracy"]) for e in evals], 100, " pts"))
    last = min(max((step for step, _ in seed[label]["train"]["train/answer_reward"]), default=-1)
               for seed in seeds for label in (sync, lagged))

    def window_mean(run: dict, key: str, start: int) -> float:
        values = [v for step, v in run["train"][key] if start <= step < start + window]
        return sum(values) / len(values)

    for key, name in (("train/answer_reward", "train answer reward"), ("train/format_reward", "train format reward")):
        for start in range(0, last + 1, window):
            rows.append((f"{name}, steps {start}–{min(start + window, last + 1) - 1}",
                         [(window_mean(seed[sync], key, start), window_mean(seed[lagged], key, start)) for seed in seeds],
                         1, ""))
    lines = [f"| quantity | {sync} | {lagged} | difference (mean ± SE over {len(seeds)} seeds) |",
             "|---|---|---|---|"]
    for name, pairs, scale, unit in rows:
        a, b = (sum(p[i] for p in pairs) / len(pairs) * scale for i in (0, 1))
        differences = [(lag - syn) * scale for syn, lag in pairs]
        diff, se = statistics.fmean(differences), statistics.stdev(differences) / len(differences) ** 0.5
        digits = 1 if scale == 100 else 4
        lines.append(f"| {name} | {a:.{digits}f} | {b:.{digits}f} | {diff:+.{digits}f} ± {se:.{digits}f}{unit} |")
    return "\n".join(lines)


def first_step_at_least(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, value in points if value >= threshold), None)


def markdown_table(runs: dict[str, dict]) -> str:
    steps = " / ".join(str(step) for step, _ in next(iter(runs.values()))["evals"])
    header = (f"| run | held-out accuracy at step {steps} | format rate | train format reward ≥ 0.5 from step "
              "| train answer reward, last 10 steps |")
    lines = [header, "|---|---|---|---|---|"]
    for label, run in runs.items():
        accuracy = " / ".join(f"{100 * s['answer_accuracy']:.1f}%" for _, s in run["evals"])
        formats = " / ".join(f"{100 * s['format_rate']:.1f}%" for _, s in run["evals"])
        answers = [value for _, value in run["train"]["train/answer_reward"][-10:]]
        mean = f"{sum(answers) / len(answers):.4f}" if answers else "–"
        lines.append(f"| {label} | {accuracy} | {formats} | "
                     f"{first_step_at_least(run['train']['train/format_reward'], 0.5)} | {mean} |")
    return "\n".join(lines)


def panels(runs: dict[str, dict]) -> list[Panel]:
    n = {s["n"] for run in runs.values() for _, s in run["evals"]}
    train = [Panel(title, {label: run["train"][key] for label, run in runs.items()}) for key, title in TRAIN]
    held_out = [Panel(f"{title}, {'/'.join(map(str, sorted(n)))} questions",
                      {label: [(step, s[key]) for step, s in run["evals"]] for label, run in runs.items()}, markers=True)
                for key, title in HELD_OUT]
    return train + held_out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="the folder holding sync/ and async/ (see above); "
                        "several: one per seed")
    parser.add_argument("--png", type=Path, help="draw the curves here")
    parser.add_argument("--lagged", nargs=2, default=list(RUNS[1]), metavar=("FOLDER", "LABEL"),
                        help="the one-step-off run's folder in each seed's folder, and its label (default: async)")
    parser.add_argument("--title", default="SmolLM2-135M-Instruct on GSM8K, GRPO from the base model: "
                        "synchronous vs one step off")
    args = parser.parse_args(argv)
    seeds = [read_runs(folder, tuple(args.lagged)) for folder in args.folders]
    if len(seeds) > 1:
        for folder, runs in zip(args.folders, seeds):
            print(f"{folder}:\n{markdown_table(runs)}\n")
        print(f"mean of {len(seeds)}:")
    runs = seeds[0] if len(seeds) == 1 else mean_of_runs(seeds)
    print(markdown_table(runs))
    if len(seeds) > 1:
        print(f"\npaired differences:\n{paired_differences(seeds)}")
    if args.png:
        print(f"curves: {plot_panels(panels(runs), args.png, args.title)}")


if __name__ == "__main__":
    main()
