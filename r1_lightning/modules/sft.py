"""Supervised fine-tuning on (prompt, response) pairs: masked NLL on the response tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from r1_lightning.functional import (
    get_response_log_probs,
    microbatch_groups,
    pack_prompt_and_output_ids,
    sft_microbatch_loss,
    tokenize_prompt_and_output,
)
from r1_lightning.modules.base import PolicyModule
from r1_lightning.modules.rollout import RolloutModule


def truncate_batch(tokens: dict[str, torch.Tensor], max_length: int | None) -> dict[str, torch.Tensor]:
    """Keep the first `max_length` tokens of each sequence (prompt first, then response).

    The `(B, L-1)` tensors are shifted by one, so `max_length` tokens are `max_length - 1` columns;
    slicing columns keeps `response_mask` aligned with `labels`.
    """
    if max_length is None or tokens["input_ids"].shape[1] <= max_length - 1:
        return tokens
    return {k: v[:, : max_length - 1] for k, v in tokens.items()}


def sft_microbatches(
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    gradient_accumulation_steps: int,
    max_length: int | None,
    microbatch_max_tokens: int | None = None,
) -> list[list[int]]:
    """Index lists of the microbatches of one SFT update: `gradient_accumulation_steps` equal
    slices in data order, or, with `microbatch_max_tokens`, the length-sorted examples cut into
    microbatches of at most that many padded tokens (after truncation to `max_length`)."""
    n = len(prompt_ids)
    if not microbatch_max_tokens and n % gradient_accumulation_steps:
        raise ValueError(
            f"the batch of {n} examples is not divisible by gradient_accumulation_steps="
            f"{gradient_accumulation_steps}; change data.init_args.batch_size or "
            f"model.init_args.gradient_accumulation_steps"
        )
    # packed rows are one shorter than the (truncated) sequence: inputs and labels are shifted
    lengths = [min(len(p) + len(r), max_length or len(p) + len(r)) - 1 for p, r in zip(prompt_ids, response_ids)]
    return microbatch_groups(lengths, n // gradient_accumulation_steps, microbatch_max_tokens, sort_by_length=False)


def sft_update(
    module: PolicyModule,
    prompts: Sequence[str],
    responses: Sequence[str],
    gradient_accumulation_steps: int,
    max_length: int | None,
    normalize_constant: float,
    microbatch_max_tokens: int | None = None,
) -> dict[str, float]:
    """One optimizer update of masked-NLL SFT over `prompts`/`responses` (microbatches from
    `sft_microbatches`). Each microbatch's loss is divided by (examples / its size), so the losses
    sum to the update's mean over examples however the batch was cut. Shared by `SFTModule` and
    expert iteration."""
    start = time.perf_counter()
    tokenizer = module.tokenizer
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    groups = sft_microbatches(prompt_ids, response_ids, gradient_accumulation_steps, max_length, microbatch_max_tokens)
    total_loss = torch.zeros((), device=module.device)  # on the device: no host sync per microbatch
    n_response_tokens = torch.zeros((), device=module.device, dtype=torch.long)
    n_tokens = 0
    for position, group in enumerate(groups):
        tokens = pack_prompt_and_output_ids([prompt_ids[i] for i in group], [response_ids[i] for i in group],
                                            tokenizer.pad_token_id)
        tokens = {key: value.to(module.device) for key, value in truncate_batch(tokens, max_length).items()}
        with module.attention_kernels():
            out = get_response_log_probs(
                module.policy, tokens["input_ids"], tokens["labels"], chunk_size=module.logprob_chunk_size,
                compile_backend=module.compile_backend,
            )
            loss, _ = sft_microbatch_loss(
                out["log_probs"], tokens["response_mask"], len(prompts) / len(group), normalize_constant
            )
            module.backward_microbatch(loss, ends_update=position == len(groups) - 1)
        total_loss += loss.detach()
        n_tokens += tokens["input_ids"].numel()
        n_response_tokens += tokens["response_mask"].sum()
    metrics = module.optimizer_update(total_loss)
    seconds = time.perf_counter() - start
    metrics.update({
        "train/loss": float(total_loss),
        "train/response_tokens": float(n_response_tokens),
        "perf/train_tokens_per_s": n_tokens / max(seconds, 1e-9),
    })
    return metrics


class SFTModule(PolicyModule):
    """SFT with manual optimization: each training batch is one optimizer update.

    Args (beyond `PolicyModule`'s):
        gradient_accumulation_steps: microbatches per update (the data batch is split evenly).
        max_length: truncate prompt+response to this many tokens (None: no truncation).
        normalize_constant: the masked NLL sum is divided by it (CS336 semantics; 1.0 = sum over
            response tokens, averaged over examples).
    """

    def __init__(
        self,
        model_name_or_path: str,
        gradient_accumulation_steps: int = 1,
        max_length: int | None = 2048,
        normalize_constant: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_length = max_length
        self.normalize_constant = normalize_constant
        self.save_hyperparameters()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        metrics = sft_update(
            self, batch["prompt"], batch["response"], self.gradient_accumulation_steps,
            self.max_length, self.normalize_constant, self.microbatch_max_tokens,
        )
        metrics.update(self.peak_memory_metrics())
        self.log_metrics(metrics, prog_bar=("train/loss",))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Mean NLL per response token on held-out pairs."""
        tokens = tokenize_prompt_and_output(batch["prompt"], batch["response"], self.tokenizer)
        tokens = {key: value.to(self.device) for key, value in truncate_batch(tokens, self.max_length).items()}
        out = get_response_log_probs(self.policy, tokens["input_ids"], tokens["labels"], chunk_size=self.logprob_chunk_size,
                                     compile_backend=self.compile_backend)
        mask = tokens["response_mask"]
        nll = -(out["log_probs"] * mask).sum() / mask.sum().clamp(min=1)
        self.log("val/loss", nll, batch_size=len(batch["prompt"]), prog_bar=True)


class ExpertIterationModule(RolloutModule):
    """Expert iteration: each training batch of questions is one EI step — sample `group_size`
    answers per question with the engine (`sampling_*`, `RolloutModule`'s settings, as GRPO's),
    keep the correct ones, then run `sft_epochs` passes of SFT over them in updates of
    `sft_batch_size` examples (`gradient_accumulation_steps`, `max_length`, `normalize_constant`:
    as `SFTModule`'s).

    `trainer.max_steps` counts optimizer updates (Lightning's global step), so an EI step takes a
    variable number of them; bound a run by `max_epochs`/`limit_train_batches` or by max_steps.
    On several ranks (DDP), the batch sizes are per rank and the ranks pool their kept answers:
    an update trains on `sft_batch_size` x world size of them, each rank its share.
    """

    def __init__(
        self, model_name_or_path: str, group_size: int = 4, sft_epochs: int = 1, sft_batch_size: int = 32,
        gradient_accumulation_steps: int = 16, max_length: int | None = 2048, normalize_constant: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if sft_batch_size % gradient_accumulation_steps:
            raise ValueError(
                f"model.init_args.sft_batch_size ({sft_batch_size}) must be divisible by "
                f"model.init_args.gradient_accumulation_steps ({gradient_accumulation_steps})"
            )
        self.set_group_size(group_size)
        self.sft_epochs = sft_epochs
        self.sft_batch_size = sft_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_length = max_length
        self.normalize_constant = normalize_constant
        self.save_hyperparameters(ignore=["engine"])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        completions, metrics = self.rollout(batch["prompt"], self.step_sampling())
        records, grading_metrics = self.grade(batch, completions)
        metrics.update(grading_metrics)
        self.last_rollout_records = records
        # The ranks keep different numbers of answers, so they pool them and every rank walks the
        # same pool: the same number of updates on every rank (DDP needs each backward on all of
        # them), and rank r trains on its share of each update. Sorted before the seeded shuffle, so
        # the updates are those of one process on the same prompts however they were spread.
        kept = sorted(self.pool_across_ranks([(r["prompt"], r["response"]) for r in records if r["reward"] >= 1.0]))
        world, rank = self.trainer.world_size, self.global_rank
        metrics.update({
            "train/reward_mean": sum(r["reward"] for r in records) / len(records),
            "ei/kept": float(len(kept)),  # over all ranks
            "ei/kept_fraction": len(kept) / (len(records) * world),
        })
        update_size = self.sft_batch_size * world  # examples per update, over all ranks
        # Whole updates only: the remainder that does not fill an update is dropped (it is a
        # random subset, since the order is shuffled with a step-derived seed, the same on every rank).
        generator = torch.Generator().manual_seed(self.seed + self.global_step)
        for _ in range(self.sft_epochs):
            order = torch.randperm(len(kept), generator=generator).tolist()
            for start in range(0, len(order) - update_size + 1, update_size):
                share = order[start + rank * self.sft_batch_size : start + (rank + 1) * self.sft_batch_size]
                metrics.update(sft_update(
                    self, [kept[i][0] for i in share], [kept[i][1] for i in share],
                    self.gradient_accumulation_steps, self.max_length, self.normalize_constant,
                    self.microbatch_max_tokens,
                ))
        metrics.update(self.peak_memory_metrics())
        self.log_metrics(metrics, prog_bar=("train/reward_mean", "ei/kept"))
