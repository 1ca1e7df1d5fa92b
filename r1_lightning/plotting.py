"""Reading a run's CSV-logger metrics and plotting training curves (used by the quickstart and the
notebooks)."""

from __future__ import annotations

import csv
from pathlib import Path

CURVES = (
    ("train/reward_mean", "train reward"),
    ("val/answer_accuracy", "held-out accuracy"),
    ("train/response_length", "response length (tokens)"),
    ("train/entropy", "token entropy"),
)


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Read a CSVLogger `metrics.csv` (or the folder holding it) into {metric: [(step, value)]}.

    The CSV logger writes one row per logging call with empty cells for metrics not logged then.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for name, cell in row.items():
                if name == "step" or cell in ("", None):
                    continue
                try:
                    series.setdefault(name, []).append((step, float(cell)))
                except ValueError:
                    continue
    return series


def plot_curves(series: dict[str, list[tuple[int, float]]], out_png: str | Path, title: str = "") -> Path:
    """Plot the standard curves that exist in `series` against step, one panel each; save PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(key, label) for key, label in CURVES if series.get(key)]
    if not present:
        raise ValueError(f"none of {[k for k, _ in CURVES]} were logged; nothing to plot")
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], present):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------- several runs
COMPARISON = (
    ("train/reward_mean", "train reward"),
    ("val/answer_accuracy", "held-out accuracy"),
    ("train/entropy", "token entropy"),
    ("train/response_length", "response length (tokens)"),
)


def updates_per_grpo_step(hparams_yaml: Path) -> int:
    """A GRPO run's optimizer updates per rollout batch, from its logged hyperparameters (1 for
    other modules, or when they were not logged)."""
    import yaml

    hparams = yaml.safe_load(hparams_yaml.read_text()) if hparams_yaml.is_file() else None
    batching = hparams.get("batching") if isinstance(hparams, dict) else None
    keys = ("epochs_per_rollout_batch", "rollout_batch_size", "train_batch_size")
    if not isinstance(batching, dict) or not all(k in batching for k in keys):
        return 1
    return batching["epochs_per_rollout_batch"] * (batching["rollout_batch_size"] // batching["train_batch_size"])


def read_run(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Every metric of a run folder against the GRPO step (rollout batches trained on so far),
    merged over its CSV logs (a resumed run writes one `version_*` per launch; later ones win).

    The two kinds of rows count steps differently: metrics logged in `training_step` carry
    Lightning's batch count (the GRPO step), the evaluation callback's `val/*` the optimizer
    updates, which an off-policy run makes several of per GRPO step: those are divided by the
    run's updates per GRPO step.
    """
    paths = sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: (len(p.parts), str(p)))
    if not paths:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv below it (not a run folder, or the run logged nothing)")
    merged: dict[str, dict[float, float]] = {}
    for path in paths:
        updates = updates_per_grpo_step(path.parent / "hparams.yaml")
        for name, points in read_metrics(path).items():
            scale = updates if name.startswith("val/") else 1
            merged.setdefault(name, {}).update({step / scale: value for step, value in points})
    return {name: sorted(points.items()) for name, points in merged.items()}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the first ones average what there is)."""
    return [sum(values[max(0, i + 1 - window) : i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def comparison_figure(series: dict[str, dict[str, list[tuple[float, float]]]], title: str = "", smooth: int = 1):
    """The 2x2 figure of `plot_comparison` from already-read metrics ({run name: `read_run(...)`});
    in a notebook it shows inline."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes.flat, COMPARISON):
        for i, (name, metrics) in enumerate(series.items()):
            if not metrics.get(key):
                continue
            steps, values = zip(*metrics[key])
            if key.startswith("train/") and smooth > 1:
                values = moving_average(list(values), smooth)
            ax.plot(steps, values, label=name, color=colors[i % len(colors)], linestyle="-" if i < len(colors) else "--",
                    marker="o" if key.startswith("val/") else None, markersize=3)
        ax.set_title(label + (f" ({smooth}-step mean)" if key.startswith("train/") and smooth > 1 else ""))
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    legend = {}  # one entry per run, from whichever panel has its line
    for ax in axes.flat:
        legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())})
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 + 0.03 * ((len(legend) - 1) // 5), 1, 1))
    return fig


def plot_comparison(runs, out_png: str | Path, title: str = "", smooth: int = 1) -> Path:
    """Train reward, held-out accuracy, token entropy and response length of several runs, side by
    side: one 2x2 figure, one line per run (legend: the run's name), against the GRPO step.

    runs: {name: run folder} (or a list of folders, named by their last part). smooth: trailing
    moving average over this many steps for the train curves (evaluations are drawn as they are).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(runs, dict):
        runs = {Path(r).name: r for r in runs}
    if not runs:
        raise ValueError("plot_comparison: no runs given")
    fig = comparison_figure({name: read_run(folder) for name, folder in runs.items()}, title, smooth)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
