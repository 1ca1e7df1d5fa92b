"""`r1-lightning quickstart`: the offline CPU demo, end to end through the real CLI.

1. writes the procedurally generated task (train / held-out val / SFT traces) as jsonl;
2. SFT warm-up of the built-in model (`configs/quickstart_sft.yaml`);
3. GRPO from the SFT export with the HF engine (`configs/quickstart.yaml`), evaluating held-out
   accuracy before the first update and after the last;
4. prints before/after accuracy and where logs, checkpoints and the PNG plot are.

`r1-lightning quickstart --ckpt_path last` resumes an interrupted run (whichever phase it was in);
`--seed N` draws another task, data order and sampling (a rerun with the same seed on the same CPU
repeats the run number for number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from r1_lightning.cli import build_cli
from r1_lightning.cli_errors import SubcommandParser
from r1_lightning.quickstart.task import write_task_files

# The shipped `data/quickstart/` files are these with the default seed (`--seed 0`).
TASK_SIZES = {"n_train": 4000, "n_val": 200, "n_sft": 4000, "seed": 0}


def find_configs_dir(given: str | None) -> Path:
    candidates = [Path(given)] if given else [Path("configs"), Path(__file__).resolve().parents[2] / "configs"]
    for folder in candidates:
        if (folder / "quickstart.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"quickstart.yaml not found in {', '.join(map(str, candidates))}: run from the repository root "
        f"or pass --configs <folder with quickstart.yaml and quickstart_sft.yaml>"
    )


def phase_args(config: Path, out: Path, extra: list[str]) -> list[str]:
    """CLI arguments that make `out` the phase's run directory (its logs and checkpoints go under it)."""
    return ["fit", "--config", str(config), "--trainer.default_root_dir", str(out), *extra]


def eval_summaries(phase_dir: Path) -> dict[int, dict]:
    """Every evaluation summary a phase wrote, by step, across resumed runs (log versions)."""
    summaries = {}
    for path in phase_dir.glob("logs/version_*/eval/eval_step_*_summary.json"):
        summaries[int(path.name.split("_")[2])] = json.loads(path.read_text())
    return summaries


@contextlib.contextmanager
def quiet_hf_progress_bars():
    """Without transformers' progress bars: `save_pretrained` draws a "Writing model shards" bar for
    every Hugging Face export (19 in a quickstart), between Lightning's own progress output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def repeatable_arithmetic(threads: int):
    """A fixed torch thread count and deterministic kernels, so a rerun on the same CPU repeats the
    run number for number (a different thread count may split reductions differently); the caller's
    settings come back afterwards."""
    import torch

    was_threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(was_threads)
        torch.use_deterministic_algorithms(was_deterministic)


def build_parser() -> SubcommandParser:
    parser = SubcommandParser(prog="r1-lightning quickstart", description=__doc__)
    parser.add_argument("--output", default="runs/quickstart", help="folder for data, logs, checkpoints, plot")
    parser.add_argument("--configs", default=None, help="folder holding quickstart.yaml and quickstart_sft.yaml")
    parser.add_argument("--ckpt_path", default=None, choices=["last"], help="'last' resumes an interrupted run")
    parser.add_argument("--sft_steps", type=int, default=None, help="override the SFT config's max_steps")
    parser.add_argument("--grpo_steps", type=int, default=None, help="override the GRPO config's max_steps")
    parser.add_argument("--seed", type=int, default=TASK_SIZES["seed"],
                        help="seed of the generated task, the data order and the sampling in both phases (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the model is so small that more threads mostly add "
                             "synchronization, and one thread never fights other processes for the cores)")
    return parser


def run_quickstart(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    with quiet_hf_progress_bars(), repeatable_arithmetic(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    configs, out = find_configs_dir(args.configs), Path(args.output)
    data = write_task_files(out / "data", **{**TASK_SIZES, "seed": args.seed})
    seeded = ["--seed_everything", str(args.seed)]  # the data order and the sampling of both phases
    sft_dir, grpo_dir = out / "sft", out / "grpo"
    sft_export = sft_dir / "checkpoints" / "last_hf"
    sft_done = sft_dir / "DONE"

    if not sft_done.exists():
        extra = ["--model.init_args.model_name_or_path", "builtin:quickstart",
                 "--data.init_args.train_path", str(data["sft"])]
        if args.sft_steps:
            extra += ["--trainer.max_steps", str(args.sft_steps)]
        if args.ckpt_path and (sft_dir / "checkpoints" / "last.ckpt").exists():
            extra += ["--ckpt_path", "last"]
        build_cli(phase_args(configs / "quickstart_sft.yaml", sft_dir, [*seeded, *extra]))
        sft_done.write_text("the SFT warm-up finished; its export is checkpoints/last_hf\n")

    extra = ["--model.init_args.model_name_or_path", str(sft_export),
             "--data.init_args.train_path", str(data["train"]), "--data.init_args.val_path", str(data["val"]),
             "--data.init_args.template", str(data["template"])]  # the prompts the SFT data was rendered with
    if args.grpo_steps:
        extra += ["--trainer.max_steps", str(args.grpo_steps)]
    if args.ckpt_path and (grpo_dir / "checkpoints" / "last.ckpt").exists():
        extra += ["--ckpt_path", "last"]
    build_cli(phase_args(configs / "quickstart.yaml", grpo_dir, [*seeded, *extra]))

    from r1_lightning.plotting import plot_curves, read_run

    summaries = eval_summaries(grpo_dir)
    before, after = summaries[min(summaries)], summaries[max(summaries)]
    plot = plot_curves(read_run(grpo_dir), out / "grpo_curves.png", title="r1-lightning quickstart: GRPO")
    result = {
        "accuracy_before_grpo": before["answer_accuracy"],
        "accuracy_after_grpo": after["answer_accuracy"],
        "format_rate_before_grpo": before["format_rate"],
        "format_rate_after_grpo": after["format_rate"],
        "held_out_examples": after["n"],
        "grpo_steps": max(summaries),
        "seed": args.seed,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "logs": str(grpo_dir / "logs"),
        "checkpoints": str(grpo_dir / "checkpoints"),
        "plot": str(plot),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nr1-lightning quickstart finished in {result['wall_seconds']:.0f} s\n"
        f"  held-out accuracy after SFT warm-up (before GRPO): {100 * result['accuracy_before_grpo']:.1f}%\n"
        f"  held-out accuracy after {result['grpo_steps']} GRPO steps:          {100 * result['accuracy_after_grpo']:.1f}%\n"
        f"  ({result['held_out_examples']} held-out problems, greedy decoding)\n"
        f"  logs:        {result['logs']}  (CSV; also {sft_dir / 'logs'})\n"
        f"  checkpoints: {result['checkpoints']}  (Lightning .ckpt + Hugging Face *_hf folders)\n"
        f"  plot:        {result['plot']}\n"
        f"  summary:     {out / 'summary.json'}\n"
    )
    return result
