"""GRPO-family policy optimization with verifiable rewards.

One `training_step` is one GRPO step (CS336 / DeepSeek-R1-Zero):

    rollout (engine) -> rewards -> group-normalized advantages -> [old / reference log-probs]
    -> `epochs_per_rollout_batch` passes over the rollouts in train batches of
       `gradient_accumulation_steps` microbatches, one optimizer update per train batch.

Lightning's global step (and so `trainer.max_steps`) counts optimizer updates, as in TRL: a GRPO
step makes `epochs_per_rollout_batch * rollout_batch_size / train_batch_size` of them (1 with the
CS336 defaults).

How one GRPO step flows (12 files, in the order a step reaches them):

     1. data/datamodules.py       `PromptDataModule` hands the step its questions (its batch size is
                                  this module's questions per step, set in `setup`)
     2. callbacks/weight_sync.py  `RolloutWeightSync` has the engine load the policy's weights
     3. modules/grpo.py           `training_step` -> `sampler` -> `_sample_groups` (this file)
     4. rollout/hf.py             the engine samples `group_size` answers per question (or vLLM's)
     5. modules/rollout.py        `RolloutModule.grade`, via
     6. evaluation.py             `grade_completions`, calls the reward function of
     7. rewards/reward_fns.py     (`r1_zero_reward_fn`, ...)
     8. modules/grpo_batches.py   groups, DAPO's choice, rollout metrics, `pack_microbatches` ->
                                  typed `Microbatch`es, each with its `loss_divisor`
     9. functional/advantages.py  `estimate_advantages` (called before the packing)
    10. functional/logprobs.py    `get_response_log_probs` of the policy on each microbatch
    11. functional/policy_loss.py `grpo_microbatch_loss`: per-token loss -> aggregation -> / loss_divisor
    12. modules/base.py           `backward_microbatch`, `optimizer_update` (clip, step; skip a non-finite one)
    The options those read are the groups of modules/grpo_config.py; with `async_rollouts.enabled`,
    modules/async_rollouts.py samples the next step's batch while this one trains.

Under DDP the batch sizes are per rank: each rank samples whole groups for its own prompts, and an
update equals one process's update on the ranks' batches together (see `grpo_batches.token_mean_divisors`).

Dynamic sampling (DAPO) keeps resume exact by taking its extra questions from the step's own data
batch: the data module hands each step `dynamic_sampling_max_rounds` x `prompts_per_step`
questions, the step samples the first `prompts_per_step` and only samples the next slice while
groups with varied rewards are still missing. The loader's position is per batch, so a resumed run
sees the same questions at the same step; the questions a step does not need are skipped, not kept.

Asynchronous rollouts (`async_rollouts`, `async_rollouts.py`) sample the next step's batch on a
background thread during this step's update; its dynamic-sampling rounds run there too, all with
the weights that sampled its first round. Under DDP each rank samples its own batch ahead. Only
this module knows of them: it owns the `RolloutsAhead`, and waits for it before anything else uses
the engine (`sync_engine`, `rollout`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from r1_lightning.functional import (
    RATIO_LOSSES,
    PolicyLossConfig,
    check_advantage_estimator,
    estimate_advantages,
    get_response_log_probs,
    grpo_microbatch_loss,
)
from r1_lightning.models import load_causal_lm
from r1_lightning.modules.async_rollouts import RolloutsAhead, SampledBatch, SettleRolloutsOnFailure
from r1_lightning.modules.grpo_batches import (
    MetricSums,
    Microbatch,
    dynamic_sampling_choice,
    join_groups,
    overlong_penalties,
    pack_microbatches,
    rollout_metrics,
    split_groups,
    token_mean_divisors,
    train_batch_token_counts,
)
from r1_lightning.modules.grpo_config import AsyncRolloutConfig, BatchConfig, DAPOConfig, as_config
from r1_lightning.modules.rollout import RolloutModule
from r1_lightning.rollout import Completion, SamplingConfig

# Seed offset between the rollout rounds of one dynamic-sampling step: beyond any step count (the
# step is added to the seed too), far below the rank stride, so no two (rank, step, round) collide.
ROUND_SEED_STRIDE = 1_000_003

# The default truncated-importance-sampling cap of asynchronous rollouts (`tis_cap`), the cap of the
# TIS paper (Yao et al., 2025) and verl.
ASYNC_TIS_CAP = 2.0


class GRPOModule(RolloutModule):
    """GRPO, Dr. GRPO, DAPO-style clip-higher / token-mean, GSPO, CISPO, SAPO, RLOO, REINFORCE++ and
    REINFORCE baselines.

    The options come in groups, each a frozen dataclass checked where it is declared, and a nested
    mapping in a config (`grpo_config.py`); the CS336 hyperparameters keep their names inside them.
    Sampling settings (`sampling_temperature`, `sampling_min_tokens`, `sampling_max_tokens`,
    `sampling_top_p`) are `RolloutModule`'s.

    Args (beyond `RolloutModule`'s):
        batching: `BatchConfig`: rollout_batch_size, group_size, epochs_per_rollout_batch,
            train_batch_size, gradient_accumulation_steps.
        loss: `PolicyLossConfig`: loss_type (no_baseline | reinforce_with_baseline | grpo_clip | cispo | sapo),
            loss_agg, cliprange, cliprange_high, importance_level, beta, tis_cap, tis_level,
            loss_normalize_constant (default `sampling_max_tokens`). The module's copy, with the
            defaults filled in, is `self.loss_config`; `beta` > 0 also loads a frozen copy of the
            initial policy as the KL reference.
        use_std_normalization, advantage_eps: the advantages' (CS336's names).
        advantage_estimator: "grpo" (reward - group mean, / group std when use_std_normalization),
            "rloo" (reward - the mean of the group's other rewards) or "reinforce_pp" (reward -
            group mean, whitened over the global batch: all ranks' samples together); see
            `functional/advantages.py`.
        engine_logprobs: ask the engine for log-probs of all sampled tokens (true) or none (false).
            None: all when TIS needs them; else, when the engine holds its own copy of the weights,
            those of the first `engine_logprob_check_prompts` prompts' samples, for the
            engine/trainer gap (`train/engine_logprob_gap`, the alarm for a broken weight sync).
        engine_logprob_check_prompts: prompts per step whose samples carry engine log-probs for that
            check (default 1: `group_size` samples). A sample, not all: vLLM turns every log-prob
            into Python objects, and for all samples that halved SmolLM2's rollout throughput.
        dapo: `DAPOConfig`: overlong_filter, overlong_penalty, overlong_buffer, dynamic_sampling,
            dynamic_sampling_max_rounds.
        async_rollouts: `AsyncRolloutConfig`: enabled, rollout_lag, warmup_steps.
    Each group may also be given as a mapping of its fields (as `hparams` holds it).
    The prompt template is the data module's (`data.init_args.template`: r1_zero | question_only).
    """

    def __init__(
        self,
        model_name_or_path: str,
        batching: BatchConfig = BatchConfig(),
        loss: PolicyLossConfig = PolicyLossConfig(),
        use_std_normalization: bool = True,
        advantage_eps: float = 1e-6,
        advantage_estimator: str = "grpo",
        engine_logprobs: bool | None = None,
        engine_logprob_check_prompts: int = 1,
        dapo: DAPOConfig = DAPOConfig(),
        async_rollouts: AsyncRolloutConfig = AsyncRolloutConfig(),
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        batching, loss, dapo, async_rollouts = (as_config(BatchConfig, batching), as_config(PolicyLossConfig, loss),
                                                as_config(DAPOConfig, dapo), as_config(AsyncRolloutConfig, async_rollouts))
        self.batching, self.dapo = batching, dapo
        self.set_group_size(batching.group_size)
        self.updates_per_rollout = batching.updates_per_rollout
        self.use_std_normalization = use_std_normalization
        self.advantage_eps = advantage_eps
        try:  # at construction, not at the first step
            check_advantage_estimator(advantage_estimator, batching.group_size)
        except ValueError as error:
            raise ValueError(f"GRPOModule: {error}") from None
        self.advantage_estimator = advantage_estimator
        if engine_logprob_check_prompts < 0:
            raise ValueError(f"GRPOModule: engine_logprob_check_prompts must be >= 0, got {engine_logprob_check_prompts}")
        self.engine_logprobs = engine_logprobs
        self.engine_logprob_check_prompts = engine_logprob_check_prompts
        if dapo.overlong_buffer is not None and dapo.overlong_buffer > self.sampling.max_tokens:
            raise ValueError(f"GRPOModule: dapo.overlong_buffer ({dapo.overlong_buffer}) must be <= "
                             f"sampling_max_tokens ({self.sampling.max_tokens})")
        self.loss_config = self._filled_loss_config(loss, async_rollouts.enabled)
        self.rollouts_ahead = self._rollouts_ahead(async_rollouts) if async_rollouts.enabled else None
        self._reference: list[torch.nn.Module] = []  # a list, so Lightning neither saves nor optimizes it
        self.last_rollout_records: list[dict] = []
        self.save_hyperparameters(ignore=["engine"])  # each group as a plain mapping (PolicyModule's)

    def _filled_loss_config(self, loss: PolicyLossConfig, asynchronous: bool) -> PolicyLossConfig:
        """`loss` with the module's defaults: the Dr. GRPO constant `sampling_max_tokens`, and with
        asynchronous rollouts the TIS cap `ASYNC_TIS_CAP` (unless the engine's log-probs are off)."""
        if loss.tis_cap is not None and self.engine_logprobs is False:
            raise ValueError("GRPOModule: loss.tis_cap needs the engine's log-probs; leave engine_logprobs unset "
                             "(or true)")
        tis_cap = loss.tis_cap
        if asynchronous and tis_cap is None and self.engine_logprobs is not False:
            tis_cap = ASYNC_TIS_CAP
        constant = loss.loss_normalize_constant or float(self.sampling.max_tokens)
        return dataclasses.replace(loss, loss_normalize_constant=constant, tis_cap=tis_cap)

    def _rollouts_ahead(self, config: AsyncRolloutConfig) -> RolloutsAhead:
        if self.engine.shares_policy_weights:
            raise ValueError("GRPOModule: async_rollouts samples while the policy trains, so the engine needs its "
                             "own copy of the weights: VLLMEngine, or HFEngine with own_weights: true")
        if getattr(self.engine, "process", None) == "in_process":
            rank_zero_warn("GRPOModule async_rollouts with VLLMEngine process 'in_process': vLLM then samples on "
                           "a thread of this process and its Python shares the interpreter with training, which "
                           "slows both; set --model.init_args.engine.init_args.process separate to overlap them")
        return RolloutsAhead(config, self.updates_per_rollout, self.sampler, self.sync_engine, self.data_batch_for_step)

    @property
    def prompts_per_step(self) -> int:
        return self.batching.prompts_per_step

    @property
    def questions_per_step(self) -> int:
        """The data batch size a step needs: `prompts_per_step`, times the rounds of dynamic sampling."""
        return self.prompts_per_step * self.dapo.rounds

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
        # one update per rollout batch. With one update, "old" is the current policy, detached
        # (the loss does that itself).
        return self.loss_config.loss_type in RATIO_LOSSES and self.updates_per_rollout > 1

    # ----------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Also gives the data module its batch size, the questions of one GRPO step, which a config
        leaves unset (one it sets must agree)."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage != "fit" or not hasattr(datamodule, "batch_size"):
            return
        if datamodule.batch_size is None:
            datamodule.batch_size = self.questions_per_step
        elif datamodule.batch_size != self.questions_per_step:
            rounds = " x dapo.dynamic_sampling_max_rounds" if self.dapo.dynamic_sampling else ""
            raise ValueError(
                f"data.init_args.batch_size ({datamodule.batch_size}) must equal model.init_args.batching."
                f"rollout_batch_size / group_size{rounds} = {self.questions_per_step} (questions per GRPO step); "
                f"leave it out and GRPOModule sets it"
            )

    def configure_model(self) -> None:
        super().configure_model()
        if self.loss_config.beta > 0 and not self._reference:
            reference = load_causal_lm(self.model_name_or_path, self.dtype_name, self.attn_implementation)
            self._reference.append(reference.eval().requires_grad_(False))

    def configure_callbacks(self) -> list[L.Callback]:
        settle = [SettleRolloutsOnFailure(self.rollouts_ahead)] if self.rollouts_ahead is not None else []
        return super().configure_callbacks() + settle

    def on_fit_start(self) -> None:
        for reference in self._reference:
            reference.to(self.device)

    # ----------------------------------------------------------------------------- the step
    def training_step(self, batch: dict, batch_idx: int) -> None:
        step_start = time.perf_counter()
        if self.rollouts_ahead is not None:
            sampled = self.rollouts_ahead.batch_for_step(batch, self.global_step)
            metrics = {**sampled.metrics, "train/policy_lag": float(self.policy_version - sampled.engine_version),
                       "perf/rollout_wait_seconds": self.rollouts_ahead.pop_waited_seconds()}
        else:
            sampled = self.sampler(batch, self.global_step)()
            metrics = dict(sampled.metrics)
        completions, records, raw_rewards = sampled.completions, sampled.records, sampled.rewards
        self.last_rollout_records = records
        verifier_rewards = torch.tensor([r["reward"] for r in records], dtype=torch.float32)
        if self.dapo.overlong_penalty is not None:
            metrics["train/overlong_penalty"] = float((raw_rewards - verifier_rewards).mean())
        advantages, group_std = estimate_advantages(
            raw_rewards, self.group_size, self.advantage_estimator, self.advantage_eps, self.use_std_normalization,
            all_reduce_sum=self.all_reduce_sum,
        )
        metrics.update(rollout_metrics(records, verifier_rewards, advantages, group_std))
        in_loss = torch.tensor([not (self.dapo.overlong_filter and c.finish_reason == "length") for c in completions])
        metrics["train/overlong_filtered"] = 1.0 - float(in_loss.float().mean())

        # All microbatches go to the GPU now, once: a copy from pageable memory waits for the GPU,
        # so copying inside the update loop would stall it at every microbatch.
        microbatches = [mb.to(self.device) for mb in self._pack_microbatches(completions, advantages, raw_rewards, in_loss)]
        with self.attention_kernels():
            start = time.perf_counter()
            if self.needs_old_log_probs or self.loss_config.beta > 0:
                microbatches = self._with_frozen_log_probs(microbatches)
            metrics["perf/old_logprob_seconds"] = time.perf_counter() - start

            start = time.perf_counter()
            train_metrics = self._train_on_rollouts(microbatches)
            metrics["perf/update_seconds"] = time.perf_counter() - start
        n_tokens = sum(int(mb.input_ids.numel()) for mb in microbatches) * self.batching.epochs_per_rollout_batch
        metrics["perf/train_tokens_per_s"] = n_tokens / max(metrics["perf/update_seconds"], 1e-9)
        metrics["perf/step_seconds"] = time.perf_counter() - step_start  # rollout to update (the sync is before)
        metrics["train/grpo_step"] = float(batch_idx)
        metrics.update(train_metrics)
        metrics.update(self.peak_memory_metrics())
        self.log_metrics(metrics, prog_bar=("train/reward_mean", "train/loss"))
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.step_ended()

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

    def _sample_groups(self, batch: dict, sampling: SamplingConfig) -> tuple[list, list[dict], torch.Tensor, dict]:
        """Roll out and grade `prompts_per_step` groups: those of the batch's first `prompts_per_step`
        questions, or, with dynamic sampling, the first groups with varied rewards over as many slices
        of that many questions as it takes (at most `dynamic_sampling_max_rounds`), then groups
        without variance for any still missing. Returns the chosen groups' completions, records and
        rewards (with any overlong penalty), in sampling order but varied groups first, and the
        step's rollout metrics. `sampling`: the step's (`step_sampling`)."""
        per_step, dapo = self.prompts_per_step, self.dapo
        groups, metrics = [], {}
        for round_ in range(dapo.rounds):
            questions = {key: values[round_ * per_step : (round_ + 1) * per_step] for key, values in batch.items()}
            round_sampling = dataclasses.replace(sampling, seed=sampling.seed + round_ * ROUND_SEED_STRIDE)
            completions, round_metrics = self.generate(questions["prompt"], round_sampling)
            records, grading_metrics = self.grade(questions, completions)
            for name, value in {**round_metrics, **grading_metrics}.items():  # seconds and counts add up
                metrics[name] = metrics.get(name, 0.0) + value
            rewards = torch.tensor([r["reward"] for r in records], dtype=torch.float32)
            rewards = rewards + overlong_penalties(completions, self.sampling.max_tokens, dapo.overlong_buffer,
                                                   dapo.overlong_penalty)
            groups += split_groups(completions, records, rewards, self.group_size)
            if not dapo.dynamic_sampling or sum(group.varied for group in groups) >= per_step:
                break
        metrics["perf/rollout_tokens_per_s"] = (
            sum(len(c.token_ids) for group in groups for c in group.completions)
            / max(metrics["perf/rollout_seconds"], 1e-9)
        )
        if dapo.dynamic_sampling:
            groups, choice_metrics = dynamic_sampling_choice(groups, per_step)
            metrics.update(choice_metrics)
        return (*join_groups(groups), metrics)

    # ----------------------------------------------------------------------------- the update
    def _pack_microbatches(self, completions, advantages, raw_rewards, in_loss=None) -> list[Microbatch]:
        """`pack_microbatches` with this module's batch sizes and, for `token_mean`, each train batch's
        `token_mean_divisors` over the trainer's ranks. `in_loss` (N,) bool: default all in. CPU
        tensors, in update order."""
        in_loss = torch.ones(len(completions), dtype=torch.bool) if in_loss is None else in_loss
        train_batch_size = self.batching.train_batch_size
        divisors = None
        if self.loss_config.loss_agg == "token_mean":
            counts = train_batch_token_counts(completions, in_loss, train_batch_size)
            divisors = token_mean_divisors(counts, self.trainer.world_size, self.all_reduce_sum)
        return pack_microbatches(
            completions, advantages, raw_rewards, in_loss, divisors, train_batch_size=train_batch_size,
            sequences_per_microbatch=self.batching.sequences_per_microbatch,
            microbatch_max_tokens=self.microbatch_max_tokens, pad_token_id=self.tokenizer.pad_token_id,
            tis_cap=self.loss_config.tis_cap,
        )

    @torch.no_grad()
    def _with_frozen_log_probs(self, microbatches: list[Microbatch]) -> list[Microbatch]:
        """The microbatches (on the device) with their log-probs under the policy before any update
        ("old") and under the reference model, computed once per rollout batch."""
        frozen = {"old_log_probs": self.policy if self.needs_old_log_probs else None,
                  "ref_log_probs": self._reference[0] if self.loss_config.beta > 0 else None}
        return [dataclasses.replace(mb, **{name: self._log_probs(model, mb) for name, model in frozen.items()
                                           if model is not None}) for mb in microbatches]

    def _log_probs(self, model: torch.nn.Module, microbatch: Microbatch) -> torch.Tensor:
        out = get_response_log_probs(model, microbatch.input_ids, microbatch.labels,
                                     chunk_size=self.logprob_chunk_size, compile_backend=self.compile_backend)
        return out["log_probs"].float()

    def _train_on_rollouts(self, microbatches: list[Microbatch]) -> dict[str, float]:
        sums = MetricSums()  # on the GPU until the end: no read-back per microbatch
        update_metrics: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.device)
        update_loss = torch.zeros((), device=self.device)  # this update's share of loss_sum
        before_updates = True  # the weights that sampled (async: a step older) against the trainer's
        for _ in range(self.batching.epochs_per_rollout_batch):
            for mb in microbatches:
                out = get_response_log_probs(self.policy, mb.input_ids, mb.labels, return_token_entropy=True,
                                             chunk_size=self.logprob_chunk_size, compile_backend=self.compile_backend)
                log_probs = out["log_probs"]
                loss, meta = grpo_microbatch_loss(
                    log_probs, mb.response_mask, mb.loss_divisor, self.loss_config, raw_rewards=mb.raw_rewards,
                    advantages=mb.advantages, old_log_probs=mb.old_log_probs, ref_log_probs=mb.ref_log_probs,
                    rollout_log_probs=mb.rollout_log_probs,
                )
                self.backward_microbatch(loss, mb.ends_update)
                update_loss += loss.detach()  # microbatch losses sum to the update's objective
                sums.add_token_mean("train/entropy", out["token_entropy"].detach(), mb.response_mask)
                for name, value in meta.items():
                    if isinstance(value, torch.Tensor) and value.numel() == 1:
                        sums.add(f"train/{name}", value.detach().float())
                if before_updates and mb.rollout_log_probs is not None:
                    # the engine/trainer log-prob gap: the weight-sync alarm (plus the lag, when async)
                    gap = (log_probs.detach().float() - mb.rollout_log_probs).abs()
                    sums.add_token_mean("train/engine_logprob_gap", gap, mb.response_mask * mb.has_rollout_log_probs)
                if mb.ends_update:
                    update_metrics = self.optimizer_update(update_loss)
                    loss_sum, update_loss = loss_sum + update_loss, torch.zeros_like(update_loss)
                    before_updates = False
        # Sums and counts over all ranks (one all-reduce), so token means are over the global batch.
        # The loss sums the ranks' losses, which DDP averages: its count is updates x world size.
        sums.add("train/loss", loss_sum, float(self.updates_per_rollout))
        metrics = sums.means(self.all_reduce_sum, self.device)
        metrics.update(update_metrics)
        return metrics

    # ----------------------------------------------------------------------------- asynchronous rollouts
    def data_batch_for_step(self, global_step: int) -> dict | None:
        """The data batch the loop hands the step at `global_step` next (what `RolloutsAhead`
        samples ahead), or None when no step will train on it."""
        max_steps = self.trainer.max_steps
        if max_steps is not None and 0 <= max_steps <= global_step:
            return None
        loader = self.trainer.train_dataloader
        peek = getattr(loader, "peek", None)
        if peek is None:
            raise TypeError(f"GRPOModule async_rollouts: the train loader ({type(loader).__name__}) cannot show its "
                            "next batch: it needs `peek()`, as ResumableDataLoader (PromptDataModule's) has")
        return peek()

    def sync_engine(self) -> float | None:
        """`RolloutModule.sync_engine`, after the generation in flight (if any) has finished with
        the weights it started with."""
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.wait()
        return super().sync_engine()

    def rollout(self, prompts: Sequence[str], sampling: SamplingConfig) -> tuple[list[Completion], dict[str, float]]:
        """`RolloutModule.rollout` (evaluation), one generation at a time: after any in flight."""
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.wait()
        return super().rollout(prompts, sampling)

    def on_train_end(self) -> None:
        if self.rollouts_ahead is not None:
            self.rollouts_ahead.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.rollouts_ahead is not None:  # every rank's batch (a collective: every rank saves)
            state = self.rollouts_ahead.state_for(checkpoint["global_step"])
            checkpoint["r1_lightning"]["rollouts_ahead"] = self.pool_across_ranks([state])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("r1_lightning", {}).get("rollouts_ahead")
        if self.rollouts_ahead is not None and saved is not None:
            if len(saved) == self.trainer.world_size:
                self.rollouts_ahead.load(saved[self.global_rank])
            else:
                rank_zero_warn(f"the checkpoint holds the batches sampled ahead of {len(saved)} ranks, not "
                               f"{self.trainer.world_size}: the first step samples its batch again")
