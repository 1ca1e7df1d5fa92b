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
