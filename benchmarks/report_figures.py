"""What the benchmark reports that compare two training runs share: reading the evaluation callback's
summaries, and drawing panels of curves (one line per run) against the GRPO step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple


class Panel(NamedTuple):
    title: str
    lines: dict[str, list[tuple[float, float]]]  # {line label: [(step, value)]}, drawn in this order
    markers: bool = False  # evaluations: few points, each worth seeing


def eval_summaries(folder: Path, prefix: str = "") -> dict[int, dict]:
    """{step: summary} of the `<prefix>eval_step_<N>_summary.json` files in `folder`."""
    return {int(re.fullmatch(rf"{re.escape(prefix)}eval_step_(\d+)_summary\.json", p.name).group(1)):
            json.loads(p.read_text()) for p in folder.glob(f"{prefix}eval_step_*_summary.json")}


def plot_panels(panels: list[Panel], out_png: Path, title: str, columns: int = 3) -> Path:
    """One subplot per panel, its lines solid, dashed, ... in order; the legend on the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.7 * columns, 3.75 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for (label, points), style in zip(panel.lines.items(), ("-", "--", ":", "-.")):
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label=label, marker="o" if panel.markers else None, markersize=4)
        ax.set_title(panel.title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
