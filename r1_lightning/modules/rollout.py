"""`RolloutModule`: a policy module that samples with a rollout engine and grades with a reward
function — the base of GRPO and expert iteration, and on its own the module of zero-shot evaluation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import lightning as L

from r1_lightning.callbacks.weight_sync import RolloutWeightSync
from r1_lightning.evaluation import grade_completions, summarize, val_metrics, write_eval_outputs
from r1_lightning.modules.base import PolicyModule
from r1_lightning.rollout import Completion, HFEngine, RolloutEngine, SamplingConfig, WeightSyncError
from r1_lightning.rollout.base import TrainerRanks
from r1_lightning.stopping import allow_mid_step_stops

RANK_SEED_STRIDE = 1_000_000_007  # far beyond any step count, so no two (rank, step) share a seed


class RolloutModule(PolicyModule):
    """A policy module that samples with a rollout engine and grades with a reward function.

    The engine holds the policy's current weights before every rollout and every evaluation, and
    after a checkpoint restore: the module brings its own `RolloutWeightSync` (`configure_callbacks`,
    so no config can leave it out, and one a config lists is replaced by it), `MathEvalCallback`
    syncs before it evaluates, and `rollout` refuses to sample from weights the engine does not hold.

    Sampling settings are named `<use>_<SamplingConfig field>` and built once into a
    `SamplingConfig` per use: `sampling_*` (the CS336 names) into `self.sampling`, for the training
    rollouts of GRPO and expert iteration (`n` = their `group_size`, seeded per step by
    `step_sampling`); `eval_*` into `self.eval_sampling`, for evaluation (one greedy answer by default).

    Args (beyond `PolicyModule`'s):
        engine: the `RolloutEngine` (default `HFEngine()`: generation on the policy itself).
        reward_fn: a registered reward function ("r1_zero", "question_only", "gsm8k"), an import
            path `package.module.fn`, or a weighted combination {name: weight}.
        stop: stop strings, kept in the text (both uses).
        sampling_temperature, sampling_top_p, sampling_min_tokens, sampling_max_tokens: training rollouts.
        eval_temperature, eval_max_tokens: evaluation.
        eval_samples: answers sampled per evaluation problem (1: one, greedy by default); more (with
            eval_temperature > 0) adds pass@k, maj@k and mean@k to the summary (`sample_metrics`).
        eval_output_dir: where `validate` writes its jsonl and summary (default: the log folder).
    """

    def __init__(
        self,
        model_name_or_path: str,
        engine: RolloutEngine | None = None,
        reward_fn: str | dict[str, float] = "r1_zero",
        stop: list[str] | None = None,
        sampling_temperature: float = 1.0,
        sampling_top_p: float = 1.0,
        sampling_min_tokens: int = 4,
        sampling_max_tokens: int = 1024,
        eval_temperature: float = 0.0,
        eval_max_tokens: int = 1024,
        eval_samples: int = 1,
        eval_output_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        from r1_lightning.rewards import resolve_reward_fn

        self.reward_fn = resolve_reward_fn(reward_fn)
        self.engine = engine if engine is not None else HFEngine()
        self.stop = list(stop) if stop is not None else ["</answer>"]
        try:
            self.sampling = SamplingConfig(
                temperature=sampling_temperature, top_p=sampling_top_p, min_tokens=sampling_min_tokens,
                max_tokens=sampling_max_tokens, stop=self.stop,
            )
            self.eval_sampling = SamplingConfig(
                n=eval_samples, temperature=eval_temperature, max_tokens=eval_max_tokens, min_tokens=0,
                stop=self.stop, seed=seed_for_eval(self.seed),
            )
        except ValueError as error:  # name the module's options, not the dataclass's fields
            raise ValueError(f"{type(self).__name__} sampling_* / eval_* options: {error}") from None
        if eval_samples > 1 and eval_temperature == 0:
            raise ValueError(f"{type(self).__name__}: eval_samples {eval_samples} needs eval_temperature > 0 "
                             f"(greedy decoding gives every sample the same answer)")
        self.eval_output_dir = eval_output_dir
        self._eval_records: list[dict] = []
        # The `policy_version` whose weights the engine holds; None: not known to be any (a fresh
        # engine, or a run that may have restored a checkpoint into the policy).
        self.engine_version: int | None = None

    def configure_model(self) -> None:
        already = self.policy is not None
        super().configure_model()
        if not already:
            self.engine.attach(self.policy, self.tokenizer, self.trainer_ranks())

    def trainer_ranks(self) -> TrainerRanks:
        """This process's place among the trainer's data-parallel ranks (one process without a Trainer)."""
        trainer = self._trainer
        if trainer is None:
            return TrainerRanks()
        return TrainerRanks(rank=trainer.global_rank, local_rank=trainer.local_rank, world_size=trainer.world_size,
                            ranks_per_node=trainer.num_devices)

    def configure_callbacks(self) -> list[L.Callback]:
        return [RolloutWeightSync()]

    def setup(self, stage: str) -> None:
        # The grader's worker processes take seconds to start: start them now, not in the first step.
        from r1_lightning.rewards import start_grader

        start_grader()
        allow_mid_step_stops(self.trainer_ranks().world_size == 1)  # several ranks stop together, between steps

    def grade(self, batch: dict, completions: list[Completion]) -> tuple[list[dict], dict[str, float]]:
        """Grade each completion against its prompt's ground truth (one record per completion) and
        return the grading metrics: its seconds, and how many answers the grader scored 0 because
        they ran out of time (`train/grader_timeouts`: never silent, a rise means a policy found
        expressions that are slow to grade)."""
        from r1_lightning.rewards import grader_timeouts

        start, timeouts_before = time.perf_counter(), grader_timeouts()
        records = grade_completions(batch, completions, self.reward_fn)
        return records, {
            "perf/reward_seconds": time.perf_counter() - start,
            "train/grader_timeouts": float(grader_timeouts() - timeouts_before),
        }

    def sync_engine(self) -> float | None:
        """Push the policy's weights into the engine (in place, no disk round trip) unless it holds
        them already or generates with the policy itself. Returns the seconds it took, or None.
        A failed or hung sync raises `WeightSyncError` (the engine then refuses to sample).
        Under FSDP2 every rank gathers the full weights before any loads them (`full_state_dict`)."""
        if self.engine.shares_policy_weights or self.engine_version == self.policy_version:
            return None
        start = time.perf_counter()
        try:
            self.engine.load_weights(self.model_weights().items())
        except WeightSyncError as error:  # name the step too; the engine now refuses to generate
            raise WeightSyncError(f"at global step {self.global_step}, syncing policy version {self.policy_version}: "
                                  f"{error}") from error
        self.engine_version = self.policy_version
        return time.perf_counter() - start

    def set_group_size(self, group_size: int) -> None:
        """Training rollouts sample `group_size` answers per prompt (GRPO's group, EI's candidates)."""
        self.group_size = group_size
        self.sampling = dataclasses.replace(self.sampling, n=group_size)

    def step_sampling(self, global_step: int | None = None, **overrides) -> SamplingConfig:
        """`self.sampling` seeded by the global step (default: the current one) and the rank (`step_seed`)."""
        return dataclasses.replace(self.sampling, seed=self.step_seed(global_step), **overrides)

    def step_seed(self, global_step: int | None = None) -> int:
        """The seed of the rollouts of the step at `global_step` (default: this step): seed + global
        step (a resumed run samples what the straight run did), plus a large stride per data-parallel rank. The ranks sample different
        prompts, but with one seed they would draw the same random numbers for them, so the answers
        of prompt i on every rank would be correlated (same uniforms through similar distributions);
        the stride makes the ranks' streams independent and is the same on resume at the same world
        size. Rank 0 keeps seed + step, so one process samples as before."""
        step = self.global_step if global_step is None else global_step
        return self.seed + step + RANK_SEED_STRIDE * self.global_rank

    def require_current_engine(self) -> None:
        """Refuse to sample from weights the engine does not hold."""
        if not self.engine.shares_policy_weights and self.engine_version != self.policy_version:
            raise RuntimeError(
                f"the rollout engine holds policy version {self.engine_version}, the policy is at version "
                f"{self.policy_version}: call sync_engine() before sampling (RolloutWeightSync does in a Trainer)"
            )

    def rollout(self, prompts: Sequence[str], sampling: SamplingConfig) -> tuple[list[Completion], dict[str, float]]:
        """Sample with the engine, which must hold the policy's weights; return completions and
        throughput metrics."""
        self.require_current_engine()
        return self.generate(prompts, sampling)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> tuple[list[Completion], dict[str, float]]:
        """`rollout` without its checks: the engine's completions and throughput metrics, from
        whatever weights it holds."""
        start = time.perf_counter()
        completions = self.engine.generate(list(prompts), sampling)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(c.token_ids) for c in completions)
        return completions, {"perf/rollout_seconds": seconds, "perf/rollout_tokens_per_s": n_tokens / max(seconds, 1e-9)}

    # ----------------------------------------------------------------------------- evaluation
    def evaluate_examples(self, batch: dict) -> list[dict]:
        """Generate `eval_samples` answers (greedy by default) for a batch of prompts and grade each: one
        record per answer."""
        completions, _ = self.rollout(batch["prompt"], self.eval_sampling)
        return grade_completions(batch, completions, self.reward_fn)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_records.extend(self.evaluate_examples(batch))

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:
        # On several ranks each graded its shard (Lightning's distributed sampler): pool them, and
        # write once. The sampler repeats a few examples to even the shards out when the set does
        # not divide by the world size; they are graded and counted twice.
        records = self.pool_across_ranks(self._eval_records)
        log_dir = self.trainer.log_dir  # on every rank: a collective (a broadcast)
        folder = self.eval_output_dir or (log_dir or ".")
        tag = f"step_{self.global_step}"
        summary = write_eval_outputs(records, folder, tag) if self.trainer.is_global_zero else summarize(records)
        # the same pooled values on every rank: the sync averages equal numbers (and silences
        # Lightning's warning about unsynced epoch-level metrics)
        self.log_dict(val_metrics(summary), sync_dist=self.trainer.world_size > 1)


def seed_for_eval(seed: int) -> int:
    # Evaluation is greedy by default; a fixed seed keeps sampled evaluation reproducible too.
    return seed + 1_000_003
