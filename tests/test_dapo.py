"""DAPO's options for sparse rewards: overlong filtering and the soft overlong penalty.

Each module-level test records the gradient of the one update of a GRPO step on fixed rollouts
and compares it with the gradient written out by hand from the public functional API: the
token-mean REINFORCE-with-baseline loss over the samples that should be in the loss, with the
advantages of the rewards that should be used."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from ablation_helpers import (
    FixedEngine,
    group_advantages,
    leading_digit_reward,
    record_update_gradients,
    rollout_texts,
)
from grpo_options import grpo_options
from test_ablations import fit_fixed_rollouts
from transformers import AutoModelForCausalLM

from r1_lightning.callbacks import HFExportCheckpoint
from r1_lightning.data import PromptDataModule
from r1_lightning.functional import (
    get_response_log_probs,
    overlong_penalty,
    tokenize_prompt_and_output,
    varied_groups,
)
from r1_lightning.modules import GRPOModule
from r1_lightning.rollout import Completion

TRUNCATED = {2, 5}  # the samples (k % 8) that the engine reports as cut off at the length limit
EPS = 1.0  # advantage_eps: large, so that no advantage is near 0/0


class TruncatingEngine(FixedEngine):
    """FixedEngine's completions, of which samples 2 and 5 of every 8 end with finish reason "length"."""

    def generate(self, prompts, sampling):
        return [Completion(c.prompt_index, c.prompt_token_ids, c.token_ids, c.text, "length" if k % 8 in TRUNCATED
                           else "stop") for k, c in enumerate(super().generate(prompts, sampling))]


def fit_and_record_gradient(model_dir, task_dir, tmp_path, monkeypatch, **module_kwargs):
    """One update on TruncatingEngine's 8 rollouts (2 microbatches, token_mean); returns the gradient
    it stepped with, the engine, the module and the logged metrics."""
    grads = record_update_gradients(monkeypatch)
    module, engine = fit_fixed_rollouts(model_dir, task_dir, tmp_path, 1, engine=TruncatingEngine(),
                                        gradient_accumulation_steps=2, loss_agg="token_mean", advantage_eps=EPS,
                                        sampling_min_tokens=0, **module_kwargs)
    (grad,) = grads
    return grad, engine, module


def hand_gradient(model_dir, tokenizer, prompts, responses, rewards, in_loss) -> dict[str, torch.Tensor]:
    """The gradient of -sum(advantage x log-prob) / (number of response tokens), over the response
    tokens of the samples in the loss only; advantages from all 8 rewards, per group of 4."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.train()
    advantages = group_advantages(rewards, 4, EPS, True)
    keep = [k for k in range(len(responses)) if in_loss[k]]
    batch = tokenize_prompt_and_output([prompts[k] for k in keep], [responses[k] for k in keep], tokenizer)
    log_probs = get_response_log_probs(policy, batch["input_ids"], batch["labels"])["log_probs"]
    mask = batch["response_mask"].float()
    loss = -(advantages[keep].unsqueeze(1) * log_probs * mask).sum() / mask.sum()
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in policy.named_parameters()}


def assert_gradients(actual, expected, equal: bool) -> None:
    close = all(torch.allclose(actual[n], expected[n], rtol=1e-4, atol=1e-7) for n in expected)
    assert close == equal
    assert any(g.abs().max() > 0 for g in expected.values())


@pytest.mark.parametrize("overlong_filter", [True, False], ids=["filter", "no_filter"])
def test_overlong_filter_trains_as_if_truncated_samples_were_not_sampled(tiny_model_dir, toy_task_dir, tmp_path,
                                                                           monkeypatch, overlong_filter):
    """With the filter, the update's gradient is the token-mean loss over the 6 finished samples
    only (their advantages still from all 4 rewards of their group); without it, all 8 count."""
    grad, engine, module = fit_and_record_gradient(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch,
                                                   overlong_filter=overlong_filter)
    prompts, responses = rollout_texts(engine)
    rewards = [leading_digit_reward(r, "")["reward"] for r in responses]
    finished = [k % 8 not in TRUNCATED for k in range(len(responses))]
    expected = hand_gradient(tiny_model_dir, module.tokenizer, prompts, responses, rewards, finished)
    assert_gradients(grad, expected, equal=overlong_filter)
    metrics = module.trainer.callback_metrics
    assert float(metrics["train/truncated_fraction"]) == pytest.approx(2 / 8)
    assert float(metrics["train/overlong_filtered"]) == pytest.approx(2 / 8 if overlong_filter else 0.0)


def test_overlong_penalty_follows_dapo_formula():
    """DAPO's R_length with L_max = 10, L_cache = 4: 0 up to 6 tokens, (6 - |y|) / 4 up to 10,
    -1 beyond; scaled by the factor 0.5."""
    lengths = torch.tensor([0, 5, 6, 7, 8, 9, 10, 12])
    expected = 0.5 * torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, max_tokens=10, buffer=4, factor=0.5), expected)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, max_tokens=10, buffer=0)


@pytest.mark.parametrize("penalty", [0.5, None], ids=["penalty", "no_penalty"])
def test_overlong_penalty_enters_the_rewards_before_the_advantages(tiny_model_dir, toy_task_dir, tmp_path,
                                                                   monkeypatch, penalty):
    """With max 4 tokens and a buffer of 2, a response of n tokens loses 0.5 x (n - 2) / 2 when n > 2
    before its group is normalized: the gradient is the hand one with those rewards (and differs
    from it without the penalty); the logged reward stays the reward function's."""
    grad, engine, module = fit_and_record_gradient(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch,
                                                   sampling_max_tokens=4, overlong_penalty=penalty, overlong_buffer=2)
    prompts, responses = rollout_texts(engine)
    lengths = [len(module.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
    assert max(lengths) <= 4 and any(n > 2 for n in lengths), lengths  # some samples in the buffer
    rewards = [leading_digit_reward(r, "")["reward"] for r in responses]
    penalized = [r - 0.5 * max(0, n - 2) / 2 for r, n in zip(rewards, lengths)]
    expected = hand_gradient(tiny_model_dir, module.tokenizer, prompts, responses, penalized, [True] * 8)
    assert_gradients(grad, expected, equal=penalty is not None)
    metrics = module.trainer.callback_metrics
    assert float(metrics["train/reward_mean"]) == pytest.approx(sum(rewards) / 8)
    if penalty is not None:
        assert float(metrics["train/overlong_penalty"]) == pytest.approx((sum(penalized) - sum(rewards)) / 8)


def test_dapo_options_are_checked(tiny_model_dir):
    for buffer in (None, 0, 2000):
        with pytest.raises(ValueError, match="overlong_buffer"):
            GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), overlong_penalty=1.0, overlong_buffer=buffer))
    with pytest.raises(ValueError, match="overlong_penalty"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), overlong_penalty=-1.0, overlong_buffer=8))
    with pytest.raises(ValueError, match="dynamic_sampling_max_rounds"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), dynamic_sampling=True, dynamic_sampling_max_rounds=0))


# ----------------------------------------------------------------------------- dynamic sampling
def test_varied_groups_finds_the_groups_with_any_reward_difference():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.2, 0.2, 0.3])
    assert varied_groups(rewards, 3).tolist() == [False, True, False, True]


class SometimesConstantEngine(FixedEngine):
    """All samples of a question with an even answer a + b start with the same digit (a group
    without reward variance); a question with an odd answer gets FixedEngine's distinct samples."""

    def response(self, prompt: str, k: int) -> str:
        return "5" if has_even_answer(prompt) else super().response(prompt, k)


def has_even_answer(prompt: str) -> bool:
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt).groups())
    return (a + b) % 2 == 0


class RecordSteps(L.Callback):
    """Per step: the data batch's prompts, the trained records and the logged metrics."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.steps.append((list(batch["prompt"]), list(pl_module.last_rollout_records), metrics))


def fit_dynamic(model_dir, task_dir, tmp_path, steps, engine, callbacks=(), ckpt_path=None):
    """GRPO with dynamic sampling: 2 groups of 4 per step, up to 3 slices of 2 questions."""
    module = GRPOModule(model_dir, **grpo_options(engine=engine, rollout_batch_size=8, group_size=4, train_batch_size=8,
                        gradient_accumulation_steps=1, reward_fn="ablation_helpers.leading_digit_reward",
                        learning_rate=1e-2, seed=0, sampling_min_tokens=0, dynamic_sampling=True,
                        dynamic_sampling_max_rounds=3))
    data = PromptDataModule(str(task_dir / "train.jsonl"), batch_size=6, seed=0)
    checkpointing = any(isinstance(c, HFExportCheckpoint) for c in callbacks)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=checkpointing,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def test_dynamic_sampling_trains_on_varied_groups_from_extra_slices(tiny_model_dir, toy_task_dir, tmp_path):
    """Each step samples slices of 2 of its 6 questions until 2 have varied rewards (at most 3
    slices), trains on those first (then on constant ones if it ran out), and logs the first
    slice's and the trained batch's share of constant groups and the questions it sampled."""
    engine, recorder = SometimesConstantEngine(), RecordSteps()
    fit_dynamic(tiny_model_dir, toy_task_dir, tmp_path, 8, engine, callbacks=[recorder])
    calls = iter(engine.calls)
    rounds_seen = set()
    for step, (questions, records, metrics) in enumerate(recorder.steps):
        varied = [not has_even_answer(q) for q in questions]
        rounds = next((r for r in (1, 2, 3) if sum(varied[: 2 * r]) >= 2), 3)
        rounds_seen.add((rounds, sum(varied[: 2 * rounds]) >= 2))
        seeds = []
        for r in range(rounds):  # the engine saw exactly these slices, each with its own seed
            prompts, sampling = next(calls)
            assert prompts == questions[2 * r : 2 * r + 2]
            seeds.append(sampling.seed)
        assert seeds[0] == step and len(set(seeds)) == rounds  # the first slice: the step's usual seed
        sampled = questions[: 2 * rounds]
        expected = ([q for q in sampled if not has_even_answer(q)] + [q for q in sampled if has_even_answer(q)])[:2]
        assert [rec["prompt"] for rec in records[::4]] == expected
        for g in range(2):  # a trained group varies exactly when its question's answer is odd
            rewards = {rec["reward"] for rec in records[4 * g : 4 * g + 4]}
            assert (len(rewards) > 1) == (not has_even_answer(expected[g]))
        assert metrics["train/frac_groups_zero_std_before"] == sum(not v for v in varied[:2]) / 2
        assert metrics["train/frac_groups_zero_std"] == sum(has_even_answer(q) for q in expected) / 2
        assert metrics["train/dynamic_sampling_prompts"] == 2 * rounds
    assert next(calls, None) is None
    # the steps covered one slice, extra slices, and running out of slices
    assert {(1, True), (3, False)} <= rounds_seen and any(r > 1 and full for r, full in rounds_seen), rounds_seen


def test_dynamic_sampling_resumes_exactly(tiny_model_dir, toy_task_dir, tmp_path):
    """4 steps straight, and 2 steps then a resume from last.ckpt to 4, sample the same slices with
    the same seeds after the resume and end at the same weights."""
    straight_engine = SometimesConstantEngine()
    straight = fit_dynamic(tiny_model_dir, toy_task_dir, tmp_path / "straight", 4, straight_engine)
    ckpt_dir = tmp_path / "ckpt"
    first, second = SometimesConstantEngine(), SometimesConstantEngine()
    fit_dynamic(tiny_model_dir, toy_task_dir, tmp_path / "a", 2, first,
                callbacks=[HFExportCheckpoint(dirpath=ckpt_dir, save_last=True, export_hf=False)])
    resumed = fit_dynamic(tiny_model_dir, toy_task_dir, tmp_path / "b", 4, second,
                          callbacks=[HFExportCheckpoint(dirpath=ckpt_dir, save_last=True, export_hf=False)],
                          ckpt_path=str(ckpt_dir / "last.ckpt"))
    calls = [(prompts, sampling.seed) for prompts, sampling in straight_engine.calls]
    assert [(p, s.seed) for p, s in first.calls + second.calls] == calls
    assert len(calls) > 4  # some step sampled more than one slice
    for name, param in straight.policy.named_parameters():
        assert torch.equal(param, dict(resumed.policy.named_parameters())[name]), name
