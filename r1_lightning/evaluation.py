"""Evaluation: grading sampled answers, summarizing them and writing them out.

One implementation for `r1-lightning validate` (zero-shot or any checkpoint: the validation loop
of `RolloutModule`) and for `callbacks.MathEvalCallback`, the periodic evaluation during fitting.
Both sample with the module's engine and `eval_sampling` (greedy by default) on weights the engine
is known to hold (`RolloutModule.sync_engine`), grade each answer with the module's reward function
(`grade_completions`, which GRPO and expert iteration use for their rollouts too), log
`val/<summary key>` metrics and write `eval_<tag>.jsonl` and `eval_<tag>_summary.json`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from r1_lightning.rollout import Completion
from r1_lightning.sample_metrics import k_sample_summary, k_values
from r1_lightning.stopping import raise_if_stop_requested

log = logging.getLogger(__name__)


def grade_completions(batch: dict, completions: Sequence[Completion], reward_fn: Callable) -> list[dict]:
    """One record per (example, sample): question, response, ground truth, rewards, length, and
    the example's level/subject when the batch has them. `completions` is prompt-major. A stop
    signal ends it between two answers (`StopRequested`)."""
    n = len(completions) // max(1, len(batch["prompt"]))
    records = []
    for j, completion in enumerate(completions):
        raise_if_stop_requested()
        i = completion.prompt_index
        rewards = reward_fn(completion.text, batch["ground_truth"][i])
        record = {
            "prompt": batch["prompt"][i],
            "response": completion.text,
            "ground_truth": batch["ground_truth"][i],
            "format_reward": float(rewards["format_reward"]),
            "answer_reward": float(rewards["answer_reward"]),
            "reward": float(rewards["reward"]),
            "response_tokens": len(completion.token_ids),
            "finish_reason": completion.finish_reason,
        }
        for key in ("level", "subject", "unique_id"):
            if key in batch and batch[key][i] is not None:
                record[key] = batch[key][i]
        if n > 1:
            record["sample"] = j % n
        records.append(record)
    return records


def summarize(records: Sequence[dict]) -> dict:
    """Format rate, answer accuracy, mean response length, and accuracy by level and subject; with
    several samples per problem (records with "sample"), also pass@k, maj@k and mean@k for k = 1, 2,
    4, ... up to the samples per problem, overall and by level and subject (`sample_metrics`)."""
    if not records:
        return {"n": 0}
    n = len(records)
    summary: dict = {
        "n": n,
        "answer_accuracy": sum(r["answer_reward"] for r in records) / n,
        "format_rate": sum(r["format_reward"] for r in records) / n,
        "reward_mean": sum(r["reward"] for r in records) / n,
        "response_tokens_mean": sum(r["response_tokens"] for r in records) / n,
        "truncated_rate": sum(r["finish_reason"] == "length" for r in records) / n,
    }
    for key in ("level", "subject"):
        groups: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if key in r:
                groups[str(r[key])].append(r["answer_reward"])
        if groups:
            summary[f"accuracy_by_{key}"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    samples = 1 + max(r.get("sample", 0) for r in records)
    if samples > 1:
        summary["samples_per_problem"] = samples
        summary.update(k_sample_summary(records, k_values(samples)))
    return summary


def val_metrics(summary: dict) -> dict[str, float]:
    """The summary's scalar entries as `val/<name>` metrics for loggers (nested breakdowns stay in
    the written summary file)."""
    return {f"val/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}


def write_eval_outputs(records: Sequence[dict], folder: str | Path, tag: str) -> dict:
    """Summarize `records` and write `eval_{tag}.jsonl` (one line per example) and
    `eval_{tag}_summary.json` into `folder`, never over an earlier evaluation's files: where `folder`
    already holds `eval_{tag}.jsonl` (a folder named for several runs, or one run directory without
    a logger evaluated twice), they are `eval_{tag}-v1.jsonl` and so on, the first name free, as
    Lightning versions a second `last.ckpt`. Returns the summary."""
    summary = summarize(records)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = claim_free_name(folder, tag)
    with open(folder / f"{name}.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    (folder / f"{name}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def claim_free_name(folder: Path, tag: str) -> str:
    """`eval_{tag}`, or its first free version `eval_{tag}-v{k}` where `folder` holds that evaluation
    already. The name is claimed by creating its `.jsonl` exclusively, so two evaluations writing
    into one folder at once still get two names."""
    name, version = f"eval_{tag}", 0
    while True:
        try:
            (folder / f"{name}.jsonl").touch(exist_ok=False)
            break
        except FileExistsError:
            version += 1
            name = f"eval_{tag}-v{version}"
    if version:
        log.warning("%s already holds the evaluation eval_%s.jsonl: this one is %s.jsonl", folder, tag, name)
    return name
