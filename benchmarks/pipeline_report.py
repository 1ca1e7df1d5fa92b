"""The curves and the accuracy table of the SmolLM2 GSM8K pipeline (r1-lightning beside TRL), from the
files `bash benchmarks/gpu/run.sh pipeline` leaves (copied into one folder):

    r1_grpo_metrics.csv, r1_sft_metrics.csv     the r1-lightning runs' CSV logs
    r1_eval_step_<N>_summary.json               its greedy GSM8K-test evaluations during GRPO (step 0 = after SFT)
    trl_pipeline.json                            benchmarks/trl_gsm8k_pipeline.py's JSON (evaluations, GRPO log)
    base_eval_summary.json                       the starting model's evaluation (optional)

    python benchmarks/pipeline_report.py benchmarks/results/raw/pipeline_gsm8k \\
        --png benchmarks/results/pipeline_gsm8k.png

prints a markdown table of the accuracies and draws, against the GRPO step, each side's train reward,
answer reward, format reward, fraction of groups with zero reward variance, response length and the
held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from report_figures import Panel, eval_summaries, plot_panels

from r1_lightning.plotting import read_metrics

# (r1-lightning metric, TRL log key, panel title)
PANELS = (
    ("train/reward_mean", "reward", "train reward (answer + 0.1 format)"),
    ("train/answer_reward", "rewards/answer_reward/mean", "train answer reward"),
    ("train/format_reward", "rewards/format_reward/mean", "train format reward"),
    ("train/frac_groups_zero_std", "frac_reward_zero_std", "groups with zero reward variance"),
    ("train/response_length", "completions/mean_length", "response length (tokens)"),
)


def read_pipeline(folder: Path) -> dict:
    """Both sides' curves ({panel metric: [(step, value)]}) and evaluations ({stage: summary})."""
    r1 = read_metrics(folder / "r1_grpo_metrics.csv")
    r1_evals = eval_summaries(folder, prefix="r1_")
    trl = json.loads((folder / "trl_pipeline.json").read_text())
    rows = [row for row in trl["grpo_log"] if "reward" in row]  # the last row is the run's summary
    trl_curves = {r1_key: [(row["step"], row[trl_key]) for row in rows if trl_key in row] for r1_key, trl_key, _ in PANELS}
    base = folder / "base_eval_summary.json"
    steps = max(step for step, _ in r1["train/reward_mean"]) + 1
    return {
        "r1": {key: r1.get(key, []) for key, _, _ in PANELS},
        "trl": trl_curves,
        "r1_accuracy": sorted((step, e["answer_accuracy"]) for step, e in r1_evals.items()),
        "trl_accuracy": [(0, trl["evaluations"]["sft"]["answer_accuracy"])]
        + [(rows[-1]["step"], e["answer_accuracy"]) for e in trl["evaluations"]["grpo"][-1:]],
        "table": {
            "start": json.loads(base.read_text()) if base.is_file() else None,
            "r1_sft": r1_evals[0], "r1_grpo": r1_evals[max(r1_evals)], "r1_grpo_steps": steps,
            "trl_sft": trl["evaluations"]["sft"], "trl_grpo": (trl["evaluations"]["grpo"] or [None])[-1],
            "trl_grpo_steps": rows[-1]["step"] if rows else 0,
        },
    }


def markdown_table(table: dict) -> str:
    def cells(summary):
        if not summary:
            return "–", "–", "–"
        return (f"{100 * summary['answer_accuracy']:.1f}%", f"{100 * summary['format_rate']:.1f}%",
                f"{summary['response_tokens_mean']:.0f}")

    lines = ["| model | GSM8K test accuracy (greedy, 1,319) | format rate | mean response tokens |",
             "|---|---|---|---|"]
    rows = [("SmolLM2-135M-Instruct (start)", table["start"]),
            ("r1-lightning SFT", table["r1_sft"]), (f"r1-lightning SFT + GRPO ({table['r1_grpo_steps']} steps)", table["r1_grpo"]),
            ("TRL SFT", table["trl_sft"]), (f"TRL SFT + GRPO ({table['trl_grpo_steps']} steps)", table["trl_grpo"])]
    lines += [f"| {name} | " + " | ".join(cells(summary)) + " |" for name, summary in rows]
    return "\n".join(lines)


def plot(data: dict, out_png: Path) -> Path:
    sides = (("r1", "r1-lightning"), ("trl", "TRL"))
    panels = [Panel(title, {label: data[side][key] for side, label in sides}) for key, _, title in PANELS]
    panels.append(Panel("GSM8K test accuracy (greedy, 1,319)",
                        {label: data[f"{side}_accuracy"] for side, label in sides}, markers=True))
    return plot_panels(panels, out_png,
                       "SmolLM2-135M-Instruct on GSM8K: SFT then GRPO, r1-lightning (GPU 0) beside TRL (GPU 1)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the pipeline's files (see above)")
    parser.add_argument("--png", type=Path, help="draw the curves here")
    args = parser.parse_args(argv)
    data = read_pipeline(args.folder)
    print(markdown_table(data["table"]))
    if args.png:
        print(f"curves: {plot(data, args.png)}")


if __name__ == "__main__":
    main()
