"""Helpers for tests/test_ablations.py: a rollout engine with fixed completions, a reward that tells
every sample apart, and an independent re-computation of one GRPO step from the public functional
API (CS336 names) and a plain `torch.optim.AdamW` loop."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from r1_lightning.functional import (
    get_response_log_probs,
    grpo_microbatch_train_step,
    tokenize_prompt_and_output,
)
from r1_lightning.rollout import Completion, HFEngine, SamplingConfig

# Sample k of a rollout (prompt k // n, sample k % n): its leading digit decides the reward, its
# length is a permutation within every 4 samples, so sorting a train batch by length reorders it.
LEADING_DIGITS = [3, 7, 1, 5, 8, 2, 6, 0]
LENGTHS = [3, 1, 4, 2, 2, 4, 1, 3]


def leading_digit_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Reward = the response's leading digit / 10: distinct for every fixed sample."""
    reward = int(response[0]) / 10
    return {"format_reward": 1.0, "answer_reward": reward, "reward": reward}


class FixedEngine(HFEngine):
    """An engine that ignores the policy and returns the same completions at every call: sample k
    is `LEADING_DIGITS[k]` followed by `LENGTHS[k] - 1` letters. Records each call's prompts and
    `SamplingConfig`. (An HFEngine subclass, so a config can name it as `engine`.)"""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], SamplingConfig]] = []

    def response(self, prompt: str, k: int) -> str:
        return str(LEADING_DIGITS[k % 8]) + "q" * (LENGTHS[k % 8] - 1)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        self.calls.append((list(prompts), sampling))
        out = []
        for i, prompt in enumerate(prompts):
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            for j in range(sampling.n):
                text = self.response(prompt, i * sampling.n + j)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                out.append(Completion(i, prompt_ids, ids, text, "length"))
        return out


class AdditionEngine(FixedEngine):
    """Answers the toy task's `What is a + b?` in turn as a free-form `\\boxed{}` answer, in the
    R1-Zero format, wrong, and with nothing: question_only and r1_zero rewards tell them apart."""

    def response(self, prompt: str, k: int) -> str:
        a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt).groups())
        return [f"so \\boxed{{{a + b}}}", f"</think> <answer> {a + b} </answer>", f"\\boxed{{{a + b + 1}}}", "no"][k % 4]


def rollout_texts(engine: FixedEngine, call: int = 0) -> tuple[list[str], list[str]]:
    """(prompt, response) per sample of the engine's `call`-th rollout, in rollout order."""
    prompts, sampling = engine.calls[call]
    completions = engine.generate(prompts, sampling)
    engine.calls.pop()
    return [prompts[c.prompt_index] for c in completions], [c.text for c in completions]


def group_advantages(rewards: list[float], group_size: int, eps: float, by_std: bool) -> torch.Tensor:
    """(r - group mean) / (unbiased group std + eps), written out per group in plain Python."""
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g : g + group_size]
        mean = sum(group) / len(group)
        std = (sum((r - mean) ** 2 for r in group) / (len(group) - 1)) ** 0.5
        out += [(r - mean) / (std + eps) if by_std else r - mean for r in group]
    return torch.tensor(out)


def reference_grpo_step(model_dir: str, tokenizer, prompts: list[str], responses: list[str], *, group_size: int,
                        train_batch_size: int, epochs: int, loss_type: str, learning_rate: float,
                        cliprange: float = 0.2, advantage_eps: float = 1e-6, use_std_normalization: bool = True,
                        max_grad_norm: float = 1.0, betas=(0.9, 0.95)) -> dict[str, torch.Tensor]:
    """One GRPO step the long way: advantages per group, old log-probs of the whole rollout batch
    under the initial policy (when it makes more than one update), then `epochs` passes over the
    train batches in rollout order, one clipped AdamW update each. Returns the final parameters."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.train()
    rewards = [leading_digit_reward(r, "")["reward"] for r in responses]
    advantages = group_advantages(rewards, group_size, advantage_eps, use_std_normalization).unsqueeze(1)
    raw = torch.tensor(rewards).unsqueeze(1)
    batch = tokenize_prompt_and_output(prompts, responses, tokenizer)
    n_updates = epochs * len(responses) // train_batch_size
    old = None
    if loss_type == "grpo_clip" and n_updates > 1:
        with torch.no_grad():
            old = get_response_log_probs(policy, batch["input_ids"], batch["labels"])["log_probs"]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=learning_rate, betas=betas, eps=1e-8, weight_decay=0.0)
    for _ in range(epochs):
        for start in range(0, len(responses), train_batch_size):
            rows = slice(start, start + train_batch_size)
            log_probs = get_response_log_probs(policy, batch["input_ids"][rows], batch["labels"][rows])["log_probs"]
            grpo_microbatch_train_step(
                log_probs, batch["response_mask"][rows], 1, loss_type, raw_rewards=raw[rows],
                advantages=advantages[rows], old_log_probs=(old[rows] if old is not None else log_probs.detach()),
                cliprange=cliprange,
            )
            torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
    return {name: p.detach() for name, p in policy.named_parameters()}


def record_update_gradients(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Make every optimizer update first copy the gradient it steps with (before clipping) into
    the returned list, one dict of named gradients per update."""
    from r1_lightning.modules.base import PolicyModule

    grads: list[dict[str, torch.Tensor]] = []
    original = PolicyModule.optimizer_update

    def recording_update(self, *args):
        grads.append({k: p.grad.detach().clone() for k, p in self.policy.named_parameters()})
        return original(self, *args)

    monkeypatch.setattr(PolicyModule, "optimizer_update", recording_update)
    return grads


def read_csv_metrics(log_dir: Path) -> list[dict[str, float]]:
    """The rows of the one `metrics.csv` under `log_dir`, empty cells dropped."""
    (path,) = Path(log_dir).rglob("metrics.csv")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def column(rows: list[dict[str, float]], name: str) -> list[float]:
    return [row[name] for row in rows if name in row]


def constant_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Reward 1 for everything: every group-normalized advantage is 0, only raw rewards are not."""
    return {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}


def read_jsonl(log_dir: Path, name: str) -> list[dict]:
    (path,) = Path(log_dir).rglob(name)
    return [json.loads(line) for line in path.read_text().splitlines()]
