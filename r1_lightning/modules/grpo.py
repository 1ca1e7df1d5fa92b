"""GRPO-family policy optimization with verifiable rewards.

One `training_step` is one GRPO step (CS336 / DeepSeek-R1-Zero):

    rollout (engine) -> rewards -> group-normalized advantages -> [old / reference log-probs]
    -> `epochs_per_rollout_batch` passes over the rollouts in train batches of
       `gradient_accumulation_steps` microbatches, one optimizer update per train batch.

Lightning's global step (and so `trainer.max_steps`) counts optimizer updates, as in TRL: a GRPO
step makes `epochs_per_rollout_batch * rollout_batch_size / train_batch_size` of them (1 with the
CS336 defaults).

Under DDP the batch sizes are per rank: each rank samples whole groups for its own prompts, and an
update equals one process's update on the ranks' batches together (see `grpo_batches.token_mean_divisors`).

Dynamic sampling (DAPO) keeps resume exact by taking its extra questions from the step's own data
batch: the data module hands each step `dynamic_sampling_max_rounds` x `prompts_per_step`
questions, the step samples the first `prompts_per_step` and only samples the next slice while
groups with varied rewards are still missing. The loader's position is per batch, so a resumed run
sees the same questions at the same step; the questions a step does not need are skipped, not kept.

Asynchronous rollouts (`async_rollouts`, `async_rollouts.py`) sample the next step's batch on a
background thread during this step's update; its dynamic-sampling rounds run there too, all with
the weights that sampled its first round. Under DDP each rank samples its own batch ahead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn

from r1_lightning.functional import (
    RATIO_LOSSES,
    PolicyLossConfig,
    get_response_log_probs,
    group_normalized_advantages,
    grpo_microbatch_loss,
)
from r1_lightning.models import load_causal_lm
from r1_lightning.modules.async_rollouts import RolloutsAhead, SampledBatch
from r1_lightning.modules.grpo_batches import (
    MetricSums,
    check_batch_sizes,
    dynamic_sampling_choice,
    join_groups,
    overlong_penalties,
    pack_microbatches,
    rollout_metrics,
    split_groups,
    token_mean_divisors,
    train_batch_token_counts,
)
from r1_lightning.modules.rollout import RolloutModule

# Seed offset between the rollout rounds of one dynamic-sampling step: beyond any step count (the
# step is added to the seed too), far below the rank stride, so no two (rank, step, round) collide.
ROUND_SEED_STRIDE = 1_000_003

# The default truncated-importance-sampling cap of asynchronous rollouts (`tis_cap`), the cap of the
# TIS paper (Yao et al., 2025) and verl.
ASYNC_TIS_CAP = 2.0


class GRPOModule(RolloutModule):
    """GRPO, Dr. GRPO, DAPO-style clip-higher / token-mean, GSPO and REINFORCE baselines.

    The CS336 hyperparameters keep their names: `rollout_batch_size`, `group_size`,
    `sampling_temperature`, `sampling_min_tokens`, `sampling_max_tokens` (with `sampling_top_p`,
    `RolloutModule`'s, as every sampling setting), `epochs_per_rollout_batch`, `train_batch_size`, `gradient_accumulation_steps`, `loss_type`
    (no_baseline | reinforce_with_baseline | grpo_clip), `use_std_normalization`,
    `advantage_eps`, `cliprange`. Beyond them, the loss options `loss_agg`, `cliprange_high`,
    `importance_level`, `beta`, `tis_cap`, `tis_level` and `loss_normalize_constant` (default
    `sampling_max_tokens`): all of the loss's options are bundled, checked once, into
    `self.loss_config`, a `PolicyLossConfig` (see it for their meaning); `beta` > 0 also loads a
    frozen copy of the initial policy as the KL reference. And:
        engine_logprobs: ask the engine for log-probs of all sampled tokens (true) or none (false).
            None: all when TIS needs them; else, when the engine holds its own copy of the weights,
            those of the first `engine_logprob_check_prompts` prompts' samples, for the
            engine/trainer gap (`train/engine_logprob_gap`, the alarm for a broken weight sync).
        engine_logprob_check_prompts: prompts per step whose samples carry engine log-probs for that
            check (default 1: `group_size` samples). A sample, not all: vLLM turns every log-prob
            into Python objects, and for all samples that halved SmolLM2's rollout throughput.
        overlong_filter: DAPO's overlong filtering: samples cut off at `sampling_max_tokens`
            (finish reason "length") get no loss, as if they had not been sampled, since their
            reward judges an unfinished answer. They still count in their group's advantage
            baseline. Exact for `token_mean` (they leave its token count); the seq_mean
            aggregations still divide by the train batch size. Logs `train/overlong_filtered`
            (the share of samples dropped; `train/truncated_fraction` is the share cut off).
        overlong_penalty, overlong_buffer: DAPO's soft overlong punishment, added to each reward
            before the advantages: 0 up to `sampling_max_tokens - overlong_buffer` tokens, then
            linearly down to -`overlong_penalty` at the limit (`functional.overlong_penalty`; DAPO
            uses 1.0 and a buffer of 4,096 of 20,480 tokens). `train/reward_mean` stays the reward
            function's; `train/overlong_penalty` logs the mean penalty.
        dynamic_sampling, dynamic_sampling_max_rounds: DAPO's dynamic sampling: train only on groups
            whose rewards (with any overlong penalty) vary, sampling further slices of
            `prompts_per_step` questions until `prompts_per_step` such groups are found, at most
            `dynamic_sampling_max_rounds` slices; then groups without variance fill what is still
            missing (a fixed batch shape, the same on every rank). Needs data batches of
            `dynamic_sampling_max_rounds x prompts_per_step` questions (see the module docstring).
            Logs `train/frac_groups_zero_std_before` (the first slice's share; the trained batch's
            is `train/frac_groups_zero_std`) and `train/dynamic_sampling_prompts` (questions sampled).
        async_rollouts: one-step-off asynchronous rollouts (off by default): the engine samples the
            next step's batch while the policy trains on this one, with the weights before this
            step's updates, so every batch but the first is one step old (`train/policy_lag`: the
            optimizer updates in between, 1 with the CS336 batch sizes; `perf/rollout_wait_seconds`:
            what the step still waited for the engine). Needs an engine with its own weights
            (VLLMEngine, or HFEngine with own_weights). TIS corrects for the lag: `tis_cap` defaults
            to `ASYNC_TIS_CAP` unless `engine_logprobs` is false, and `train/engine_logprob_gap` then
            measures the lag plus any sync error. A checkpoint saves the batch sampled ahead (resume
            is exact; see `async_rollouts.py`).
        rollout_lag: with `async_rollouts`, 1 (one-step-off) or 0: the next batch is sampled after
            the update instead, which reproduces the synchronous run with the same `tis_cap` exactly
            (a check).
        async_warmup_steps: with `async_rollouts`, the first GRPO steps sampled synchronously
            (`train/policy_lag` 0) before one step off begins.
    The prompt template is the data module's (`data.init_args.template`: r1_zero | question_only).
    """

    def __init__(
        self,
        model_name_or_path: str,
        # the CS336 GRPO settings
        rollout_batch_size: int = 256, group_size: int = 8, epochs_per_rollout_batch: int = 1,
        train_batch_size: int = 256, gradient_accumulation_steps: int = 128,
        loss_type: str = "reinforce_with_baseline", use_std_normalization: bool = True,
        advantage_eps: float = 1e-6, cliprange: float = 0.2,
        # the loss beyond CS336 (with loss_type and cliprange: PolicyLossConfig)
        cliprange_high: float | None = None, importance_level: str = "token", loss_agg: str = "seq_mean_token_mean",
        loss_normalize_constant: float | None = None, beta: float = 0.0, tis_cap: float | None = None,
        tis_level: str = "token",
        # the engine's log-probs
        engine_logprobs: bool | None = None, engine_logprob_check_prompts: int = 1,
        # DAPO's overlong handling
        overlong_filter: bool = False, overlong_penalty: float | None = None, overlong_buffer: int | None = None,
        # DAPO's dynamic sampling
        dynamic_sampling: bool = False, dynamic_sampling_max_rounds: int = 3,
        # one-step-off asynchronous rollouts
        async_rollouts: bool = False, rollout_lag: int = 1, async_warmup_steps: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if rollout_lag not in (0, 1):
            raise ValueError(f"GRPOModule: rollout_lag must be 0 or 1, got {rollout_lag}")
        if async_warmup_steps < 0 or (async_warmup_steps and not async_rollouts):
            raise ValueError(f"GRPOModule: async_warmup_steps ({async_warmup_steps}) must be >= 0, and needs "
                             "async_rollouts true")
        if async_rollouts:
            self.rollouts_ahead = RolloutsAhead(rollout_lag, async_warmup_steps)
            if self.engine.shares_policy_weights:
                raise ValueError("GRPOModule: async_rollouts samples while the policy trains, so the engine needs its "
                                 "own copy of the weights: VLLMEngine, or HFEngine with own_weights: true")
            if tis_cap is None and engine_logprobs is not False:
                tis_cap = ASYNC_TIS_CAP
            if getattr(self.engine, "process", None) == "in_process":
                rank_zero_warn("GRPOModule async_rollouts with VLLMEngine process 'in_process': vLLM then samples on "
                               "a thread of this process and its Python shares the interpreter with training, which "
                               "slows both; set --model.init_args.engine.init_args.process separate to overlap them")
        check_batch_sizes(rollout_batch_size, group_size, train_batch_size, gradient_accumulation_steps,
                          epochs_per_rollout_batch)
        self.set_group_size(group_size)
        try:
            self.loss_config = PolicyLossConfig(
                loss_type=loss_type, loss_agg=loss_agg, cliprange=cliprange, cliprange_high=cliprange_high,
                importance_level=importance_level, beta=beta, tis_cap=tis_cap, tis_level=tis_level,
                loss_normalize_constant=loss_normalize_constant or float(self.sampling.max_tokens),
            )
        except ValueError as error:
            raise ValueError(f"GRPOModule: {error}") from None
        self.rollout_batch_size = rollout_batch_size
        self.epochs_per_rollout_batch = epochs_per_rollout_batch
        self.train_batch_size = train_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.use_std_normalization = use_std_normalization
        self.advantage_eps = advantage_eps
        if tis_cap is not None and engine_logprobs is False:
            raise ValueError("GRPOModule: tis_cap needs the engine's log-probs; leave engine_logprobs unset (or true)")
        if engine_logprob_check_prompts < 0:
            raise ValueError(f"GRPOModule: engine_logprob_check_prompts must be >= 0, got {engine_logprob_check_prompts}")
        self.engine_logprobs = engine_logprobs
        self.engine_logprob_check_prompts = engine_logprob_check_prompts
        if overlong_penalty is not None and not (
            overlong_penalty >= 0 and overlong_buffer is not None and 1 <= overlong_buffer <= self.sampling.max_tokens
        ):
            raise ValueError(
                f"GRPOModule: overlong_penalty ({overlong_penalty}) must be >= 0 and needs overlong_buffer in "
                f"[1, sampling_max_tokens={self.sampling.max_tokens}], got {overlong_buffer}"
            )
        self.overlong_filter = overlong_filter
        self.overlong_penalty = overlong_penalty
        self.overlong_buffer = overlong_buffer
        if dynamic_sampling_max_rounds < 1:
            raise ValueError(f"GRPOModule: dynamic_sampling_max_rounds must be >= 1, got {dynamic_sampling_max_rounds}")
        self.dynamic_sampling = dynamic_sampling
        self.dynamic_sampling_max_rounds = dynamic_sampling_max_rounds
        self.async_rollouts = async_rollouts
        self.updates_per_rollout = epochs_per_rollout_batch * (rollout_batch_size // train_batch_size)
        self._reference: list[torch.nn.Module] = []  # a list, so Lightning neither saves nor optimizes it
        self.last_rollout_records: list[dict] = []
        self.save_hyperparameters(ignore=["engine"])

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // self.group_size

    @property
    def questions_per_step(self) -> int:
        """The data batch size a step needs: `prompts_per_step`, times the rounds of dynamic sampling."""
        return self.prompts_per_step * (self.dynamic_sampling_max_rounds if self.dynamic_sampling else 1)

    @property
    def engine_logprob_request(self) -> dict:
        """The SamplingConfig fields that ask the engine for log-probs (see `engine_logprobs`)."""
        if self.engine_logprobs is not None or self.loss_config.tis_cap is not None:
            return {"logprobs": self.engine_logprobs is not False, "logprobs_prompts": None}
        if self.engine.shares_policy_weights or self.engine_logprob_check_prompts == 0:
            return {"logprobs": False, "logprobs_prompts": None}
        return {"logprobs": True, "logprobs_prompts": self.engine_logprob_check_prompts}

    @property
    def needs_old_log_probs(self) -> bool:
        # Only when the policy moves while the same rollouts are still being trained on: more than
        # one update per rollout batch. With one update, "old" is the current policy, detached.
        return self.loss_config.loss_type in RATIO_LOSSES and self.updates_per_rollout > 1

    # ----------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        if stage == "fit" and batch_size is not None and batch_size != self.questions_per_step:
            rounds = f" x dynamic_sampling_max_rounds {self.dynamic_sampling_max_rounds}" if self.dynamic_sampling else ""
            raise ValueError(
                f"data.init_args.batch_size ({batch_size}) must equal model.init_args.rollout_batch_size "
                f"/ group_size{rounds} = {self.questions_per_step} (questions per GRPO step; rollout_batch_size "
                f"{self.rollout_batch_size}, group_size {self.group_size})"
            )

    def configure_model(self) -> None:
        super().configure_model()
        if self.loss_config.beta > 0 and not self._reference:
            reference = load_causal_lm(self.model_name_or_path, self.dtype_name, self.attn_implementation)
            self._reference.append(reference.eval().requires_grad_(False))

    def on_fit_start(self) -> None:
        for reference in self._reference:
            reference.to(self.device)

    # ----------------------------------------------------------------------------- the step
    def training_step(self, batch: dict, batch_idx: int) -> None:
        step_start = time.perf_counter()
        if len(batch["prompt"]) != self.questions_per_step:
            raise ValueError(
                f"a GRPO step needs {self.questions_per_step} questions (rollout_batch_size / group_size"
                f"{', x dynamic_sampling_max_rounds' if self.dynamic_sampling else ''}), got a batch of "
                f"{len(batch['prompt'])}: set data.init_args.batch_size to {self.questions_per_step}"
            )
        if self.rollouts_ahead is not None:
            sampled = self.rollouts_ahead.batch_for_step(self, batch)
            metrics = {**sampled.metrics, "train/policy_lag": float(self.policy_version - sampled.engine_version),
                       "perf/rollout_wait_seconds": self.rollouts_ahead.pop_waited_seconds()}
        else:
            sampled = self.sampler(batch, self.global_step)()
            metrics = dict(sampled.metrics)
        completions, records, raw_rewards = sampled.completions, sampled.records, sampled.rewards
        self.last_rollout_records = records
        verifier_rewards = torch.tensor([r["reward"] for r in records], dtype=torch.float32)
        if self.overlong_penalty is not None:
            metrics["train/overlong_penalty"] = float((raw_rewards - verifier_rewards).mean())
        advantages, group_std = group_normalized_advantages(
            raw_rewards, self.group_size, self.advantage_eps, self.use_std_normalization
        )
        metrics.update(rollout_metrics(records, verifier_rewards, advantages, group_std))
        in_loss = torch.tensor([not (self.overlong_filter and c.finish_reason == "length") for c in completions])
        metrics["train/overlong_filtered"] = 1.0 - float(in_loss.float().mean())

        # All microbatches go to the GPU now, once: a copy from pageable memory waits for the GPU,
        # so copying inside the update loop would stall it at every microbatch.
        microbatches = [self._to_device(microbatch)
                        for microbatch in self._pack_microbatches(completions, advantages, raw_rewards, in_loss)]
        with self.attention_kernels():
            start = time.perf_counter()
            if self.needs_old_log_probs or self.loss_config.beta > 0:
                self._add_frozen_log_probs(microbatches)
            metrics["perf/old_logprob_seconds"] = time.perf_counter() - start

            start = time.perf_counter()
            train_metrics = self._train_on_rollouts(microbatches)
            metrics["perf/update_seconds"] = time.perf_counter() - start
        n_tokens = sum(int(microbatch["input_ids"].numel()) for microbatch in microbatches) * self.epochs_per_rollout_batch
        metrics["perf/train_tokens_per_s"] = n_tokens / max(metrics["perf/update_seconds"], 1e-9)
        metrics["perf/step_seconds"] = time.perf_counter() - step_start  # rollout to update (the sync is before)
        metrics["train/grpo_step"] = float(batch_idx)
        metrics.update(train_metrics)
        metrics.update(self.peak_memory_metrics())
        self.log_metrics(metrics, prog_bar=("train/reward_mean", "train/loss"))
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.step_ended(self)

    # ----------------------------------------------------------------------------- sampling
    def sampler(self, batch: dict, global_step: int) -> Callable[[], SampledBatch]:
        """What samples `batch` for the step at `global_step` (with that step's seed) from the
        weights the engine holds now: a call that touches only the engine and the grader, so it
        may run on a background thread (asynchronous rollouts)."""
        self.require_current_engine()
        sampling = self.step_sampling(global_step, **self.engine_logprob_request)
        version = self.policy_version

        def sample() -> SampledBatch:
            return SampledBatch(batch, global_step, version, *self._sample_groups(batch, sampling))

        return sample

    def _sample_groups(self, batch: dict, sampling) -> tuple[list, list[dict], torch.Tensor, dict[str, float]]:
        """Roll out and grade `prompts_per_step` groups: those of the batch's first `prompts_per_step`
        questions, or, with dynamic sampling, the first groups with varied rewards over as many slices
        of that many questions as it takes (at most `dynamic_sampling_max_rounds`), then groups
        without variance for any still missing. Returns the chosen groups' completions, records and
        rewards (with any overlong penalty), in sampling order but varied groups first, and the
        step's rollout metrics. `sampling`: the step's (`step_sampling`)."""
        per_step = self.prompts_per_step
        groups, metrics = [], {}
        for round_ in range(self.questions_per_step // per_step):
            questions = {key: values[round_ * per_step : (round_ + 1) * per_step] for key, values in batch.items()}
            round_sampling = dataclasses.replace(sampling, seed=sampling.seed + round_ * ROUND_SEED_STRIDE)
            completions, round_metrics = self.generate(questions["prompt"], round_sampling)
            records, grading_metrics = self.grade(questions, completions)
            for name, value in {**round_metrics, **grading_metrics}.items():  # seconds and counts add up
                metrics[name] = metrics.get(name, 0.0) + value
            rewards = torch.tensor([r["reward"] for r in records], dtype=torch.float32)
            rewards = rewards + overlong_penalties(completions, self.sampling.max_tokens, self.overlong_buffer,
                                                   self.overlong_penalty)
            groups += split_groups(completions, records, rewards, self.group_size)
            if not self.dynamic_sampling or sum(group.varied for group in groups) >= per_step:
                break
        metrics["perf/rollout_tokens_per_s"] = (
            sum(len(c.token_ids) for group in groups for c in group.completions)
            / max(metrics["perf/rollout_seconds"], 1e-9)
        )
        if self.dynamic_sampling:
            groups, choice_metrics = dynamic_sampling_choice(groups, per_step)
            metrics.update(choice_metrics)
        return (*join_groups(groups), metrics)

    # ----------------------------------------------------------------------------- the update
    def _pack_microbatches(self, completions, advantages, raw_rewards, in_loss=None) -> list[dict]:
        """`pack_microbatches` with this module's batch sizes and each train batch's `token_mean_divisors`
        over the trainer's ranks. `in_loss` (N,) bool: default all in. CPU tensors, in update order."""
        in_loss = torch.ones(len(completions), dtype=torch.bool) if in_loss is None else in_loss
        divisors = token_mean_divisors(train_batch_token_counts(completions, in_loss, self.train_batch_size),
                                       self.loss_config.loss_agg, self.trainer.world_size, self.all_reduce_sum)
        return pack_microbatches(
            completions, advantages, raw_rewards, in_loss, divisors, train_batch_size=self.train_batch_size,
            sequences_per_microbatch=self.train_batch_size // self.gradient_accumulation_steps,
            microbatch_max_tokens=self.microbatch_max_tokens, pad_token_id=self.tokenizer.pad_token_id,
            tis_cap=self.loss_config.tis_cap,
        )

    def _to_device(self, microbatch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in microbatch.items()}

    @torch.no_grad()
    def _add_frozen_log_probs(self, microbatches: list[dict]) -> None:
        """Log-probs of the rollouts under the policy before any update ("old") and under the
        reference model, computed once per rollout batch."""
        frozen = {"old_log_probs": self.policy if self.needs_old_log_probs else None,
                  "ref_log_probs": self._reference[0] if self.loss_config.beta > 0 else None}
        for microbatch in microbatches:  # already on the device
            for key, model in frozen.items():
                if model is not None:
                    out = get_response_log_probs(
                        model, microbatch["input_ids"], microbatch["labels"], chunk_size=self.logprob_chunk_size,
                        compile_backend=self.compile_backend,
                    )
                    microbatch[key] = out["log_probs"].float()

    def _train_on_rollouts(self, microbatches: list[dict]) -> dict[str, float]:
        sums = MetricSums()  # on the GPU until the end: no read-back per microbatch
        update_metrics: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.device)
        update_loss = torch.zeros((), device=self.device)  # this update's share of loss_sum
        before_updates = True  # the weights that sampled (async: a step older) against the trainer's
        for _ in range(self.epochs_per_rollout_batch):
            for microbatch in microbatches:
                out = get_response_log_probs(self.policy, microbatch["input_ids"], microbatch["labels"],
                                             return_token_entropy=True, chunk_size=self.logprob_chunk_size,
                                             compile_backend=self.compile_backend)
                log_probs, mask = out["log_probs"], microbatch["response_mask"]
                old_log_probs = microbatch.get("old_log_probs")
                if old_log_probs is None and self.loss_config.loss_type == "grpo_clip":
                    old_log_probs = log_probs.detach()  # on-policy: the sampling policy is this one
                loss, meta = grpo_microbatch_loss(
                    log_probs, mask, microbatch["loss_divisor"], self.loss_config,
                    step_response_tokens=microbatch["token_mean_divisor"],
                    raw_rewards=microbatch["raw_rewards"], advantages=microbatch["advantages"],
                    old_log_probs=old_log_probs, ref_log_probs=microbatch.get("ref_log_probs"),
                    rollout_log_probs=microbatch.get("rollout_log_probs"),
                )
                self.backward_microbatch(loss, microbatch["ends_update"])
                update_loss += loss.detach()  # microbatch losses sum to the update's objective
                sums.add_token_mean("train/entropy", out["token_entropy"].detach(), mask)
                for name, value in meta.items():
                    if isinstance(value, torch.Tensor) and value.numel() == 1:
                        sums.add(f"train/{name}", value.detach().float())
                if before_updates and "rollout_log_probs" in microbatch:
                    # the engine/trainer log-prob gap: the weight-sync alarm (plus the lag, when async)
                    gap = (log_probs.detach().float() - microbatch["rollout_log_probs"]).abs()
                    sums.add_token_mean("train/engine_logprob_gap", gap, mask * microbatch["has_rollout_log_probs"])
                if microbatch["ends_update"]:
                    update_metrics = self.optimizer_update(update_loss)
                    loss_sum, update_loss = loss_sum + update_loss, torch.zeros_like(update_loss)
                    before_updates = False
        # Sums and counts over all ranks (one all-reduce), so token means are over the global batch.
        # The loss sums the ranks' losses, which DDP averages: its count is updates x world size.
        sums.add("train/loss", loss_sum, float(self.updates_per_rollout))
        metrics = sums.means(self.all_reduce_sum, self.device)
        metrics.update(update_metrics)
        return metrics
