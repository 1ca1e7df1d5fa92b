"""One-step-off asynchronous rollouts (`GRPOModule(async_rollouts=AsyncRolloutConfig(enabled=True))`) with the HF engine on a
background thread: with no lag they are the synchronous run exactly; with lag 1 each batch comes
from the weights one update old, in the synchronous data order; Ctrl-C or a periodic checkpoint
then resume equals the uninterrupted asynchronous run bit for bit."""

from __future__ import annotations

import shutil
import threading
import warnings

import lightning as L
import pytest
import torch
from grpo_options import grpo_options
from safetensors.torch import load_file
from test_checkpointing import InterruptAt, assert_same_tensors, metric_rows, sigint_restored  # noqa: F401
from test_cli import run_cli, tiny_grpo_args

from r1_lightning.data import PromptDataModule, ResumableDataLoader
from r1_lightning.modules import GRPOModule
from r1_lightning.modules.async_rollouts import RolloutsAhead, SampledBatch
from r1_lightning.modules.grpo_config import AsyncRolloutConfig
from r1_lightning.rollout import HFEngine, VLLMEngine


class RecordingEngine(HFEngine):
    """HFEngine with its own weights that records, per generation, the step its seed is for, the
    thread it ran on, its prompts and a copy of the weights it sampled from."""

    def __init__(self):
        super().__init__(own_weights=True)
        self.generations: dict[int, dict] = {}

    def generate(self, prompts, sampling):
        self.generations[sampling.seed] = {  # seed = 0 + global step: one generation per step
            "main_thread": threading.current_thread() is threading.main_thread(), "prompts": list(prompts),
            "weights": {k: v.detach().clone() for k, v in self.policy.named_parameters()},
        }
        return super().generate(prompts, sampling)


class RecordSteps(L.Callback):
    """The policy's weights and the batch's prompts at the start of each step (after the weight sync)."""

    def __init__(self):
        self.weights, self.prompts = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.policy.named_parameters()})
        self.prompts.append(list(batch["prompt"]))


def fit(model_dir, task_dir, tmp_path, monkeypatch, steps=3, callbacks=(), **module_kwargs):
    """A GRPO run of `steps` steps on the toy task; returns the module and {(step, metric): value},
    the step counted from 1 (the global step after its update, when the step logs)."""
    logged: dict[tuple[int, str], float] = {}

    def log(self, name, value, **kwargs):
        assert (self.global_step, name) not in logged
        logged[(self.global_step, name)] = value

    monkeypatch.setattr(GRPOModule, "log", log)
    kwargs = {"engine": RecordingEngine(), "rollout_batch_size": 8, "group_size": 4, "train_batch_size": 8,
              "gradient_accumulation_steps": 2, "sampling_max_tokens": 12, "learning_rate": 1e-2, "seed": 0,
              "reward_fn": "toy_rewards.digit_fraction_reward", **module_kwargs}
    module = GRPOModule(model_dir, **grpo_options(**kwargs))
    data = PromptDataModule(str(task_dir / "train.jsonl"), batch_size=2)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=list(callbacks), default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    return module, logged


def without(logged: dict, *prefixes: str) -> dict:
    return {key: value for key, value in logged.items() if not key[1].startswith(prefixes)}


def test_async_without_lag_is_the_synchronous_run(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """rollout_lag=0 samples each next batch on the background thread after the update: every
    logged value and the final weights equal the synchronous run's (with the same TIS cap, which
    async mode turns on by default)."""
    sync, sync_logged = fit(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, tis_cap=2.0)
    lag0, lag0_logged = fit(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, async_rollouts=True, rollout_lag=0)
    assert lag0.loss_config.tis_cap == 2.0
    assert {step for step, name in sync_logged if name == "train/loss"} == {1, 2, 3}
    assert "train/tis_weight_mean" in {name for _, name in sync_logged}
    assert without(lag0_logged, "perf/", "train/policy_lag") == without(sync_logged, "perf/")
    assert [lag0_logged[(step, "train/policy_lag")] for step in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert_same_tensors(dict(lag0.policy.named_parameters()), dict(sync.policy.named_parameters()))
    # the batches of steps 1 and 2 were sampled on the background thread, the first one in the step
    assert [lag0.engine.generations[step]["main_thread"] for step in range(3)] == [True, False, False]


def test_lag_one_samples_each_batch_with_the_weights_one_update_old(tiny_model_dir, toy_task_dir, tmp_path,
                                                                    monkeypatch):
    """Step g trains from the weights W_g (after g updates) on a batch the engine sampled, on the
    background thread, from W_(g-1) (W_0 for the first), with step g's seed and the batch the loop
    hands step g."""
    steps = RecordSteps()
    module, logged = fit(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, steps=4, callbacks=[steps],
                         async_rollouts=True)
    generations = module.engine.generations
    assert sorted(generations) == [0, 1, 2, 3]  # none sampled for a step past max_steps
    for step in range(4):
        sampled_from = steps.weights[max(step - 1, 0)]
        assert_same_tensors(generations[step]["weights"], sampled_from)
        assert generations[step]["prompts"] == steps.prompts[step]
        assert generations[step]["main_thread"] == (step == 0)
    for step in range(1, 4):  # the weights did move, so W_(g-1) is not W_g
        assert not torch.equal(steps.weights[step]["model.norm.weight"], steps.weights[step - 1]["model.norm.weight"])
    assert [logged[(step, "train/policy_lag")] for step in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    # TIS is on by default in async mode, against the engine's log-probs of every sample
    assert module.loss_config.tis_cap == 2.0 and (4, "train/tis_weight_mean") in logged


def test_warmup_steps_sample_synchronously_then_one_step_off(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """async_warmup_steps=2: the batches of steps 0 and 1 are sampled from the weights that train on
    them (W_0, W_1), then one step off: step 2 from W_1, step 3 from W_2."""
    steps = RecordSteps()
    module, logged = fit(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, steps=4, callbacks=[steps],
                         async_rollouts=True, async_warmup_steps=2)
    generations = module.engine.generations
    for step, sampled_from in zip(range(4), (0, 1, 1, 2)):
        assert_same_tensors(generations[step]["weights"], steps.weights[sampled_from])
        assert generations[step]["prompts"] == steps.prompts[step]
    assert [logged[(step, "train/policy_lag")] for step in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    # the warm-up steps are the synchronous run's: the same losses as a run without async
    _, sync_logged = fit(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, steps=2, tis_cap=2.0)
    assert [logged[(step, "train/loss")] for step in (1, 2)] == [sync_logged[(step, "train/loss")] for step in (1, 2)]


@pytest.mark.parametrize("warmup_steps, lags", [(0, [0.0, 1.0, 1.0, 1.0]), (2, [0.0, 0.0, 1.0, 1.0])])
def test_ctrl_c_or_a_periodic_checkpoint_then_resume_equals_the_uninterrupted_async_run(
    tiny_model_dir, toy_task_dir, tmp_path, sigint_restored, warmup_steps, lags  # noqa: F811
):
    """Ctrl-C inside step 3 saves the state before it with the step's own batch (sampled during
    step 2); the periodic checkpoint after step 1 holds the batch then in flight (for step 2). Both
    resume into the uninterrupted run: same logged values at the same steps, same final weights.
    With 2 warm-up steps, step 2's batch is the first one sampled one step off."""
    async_args = ["--model.init_args.engine.init_args.own_weights", "true", "--model.init_args.async_rollouts.enabled", "true",
                  "--model.init_args.async_rollouts.warmup_steps", warmup_steps]

    def args(out_dir, *extra):  # a checkpoint every 2 steps (and last.ckpt then, at the end and on failure)
        return tiny_grpo_args(tiny_model_dir, toy_task_dir, out_dir, max_steps=4,
                              extra=[*async_args, "--trainer.callbacks.every_n_train_steps", 2, *extra])

    straight, stopped, from_periodic = tmp_path / "straight", tmp_path / "stopped", tmp_path / "from_periodic"
    run_cli(args(straight))
    interrupt = ["--trainer.callbacks+=test_checkpointing.InterruptAt", "--trainer.callbacks.step", 3]
    with pytest.warns(UserWarning, match=r"KeyboardInterrupt at step 3: saved .*last.ckpt"), pytest.raises(SystemExit):
        run_cli(args(stopped, *interrupt))
    (from_periodic / "ckpt").mkdir(parents=True)
    shutil.copy(stopped / "ckpt" / "step=2.ckpt", from_periodic / "ckpt" / "step=2.ckpt")

    run_cli(args(stopped, "--ckpt_path", "last"))
    run_cli(args(from_periodic, "--ckpt_path", from_periodic / "ckpt" / "step=2.ckpt"))
    final = load_file(straight / "ckpt" / "last_hf" / "model.safetensors")
    expected = metric_rows(straight)
    assert {step for step, name in expected if name == "train/loss"} == {0, 1, 2, 3}
    assert [expected[(step, "train/policy_lag")] for step in range(4)] == lags
    assert metric_rows(stopped) == expected
    assert metric_rows(from_periodic) == {key: value for key, value in expected.items() if key[0] >= 2}
    for run in (stopped, from_periodic):
        assert_same_tensors(load_file(run / "ckpt" / "last_hf" / "model.safetensors"), final)


def test_async_options_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="async_rollouts .* needs its own copy of the weights"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(), async_rollouts=True))
    with pytest.raises(ValueError, match="rollout_lag must be 0 or 1, got 2"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True, rollout_lag=2))
    # TIS stays off when asked for no engine log-probs, and an explicit cap wins
    assert GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True,
                      engine_logprobs=False)).loss_config.tis_cap is None
    assert GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True,
                      tis_cap=5.0)).loss_config.tis_cap == 5.0
    with pytest.raises(ValueError, match=r"async_rollouts: warmup_steps \(3\) must be >= 0, and needs enabled true"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_warmup_steps=3))
    with pytest.raises(ValueError, match=r"warmup_steps \(-1\)"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True, async_warmup_steps=-1))
    sequence = GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True, tis_level="sequence"))
    assert (sequence.loss_config.tis_cap, sequence.loss_config.tis_level) == (2.0, "sequence")
    with pytest.raises(ValueError, match="unknown tis_level 'tokens'"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True, tis_level="tokens"))


def test_async_with_an_in_process_vllm_engine_warns_to_run_it_in_its_own_process(tiny_model_dir):
    with pytest.warns(UserWarning, match="process separate"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=VLLMEngine(process="in_process"), async_rollouts=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GRPOModule(tiny_model_dir, **grpo_options(engine=VLLMEngine(process="separate"), async_rollouts=True))
        GRPOModule(tiny_model_dir, engine=VLLMEngine(process="in_process"))


def test_the_loader_peeks_at_the_batch_it_hands_out_next():
    loader = ResumableDataLoader(list(range(10)), batch_size=4, seed=3)  # batches of 4, 4, 2
    handed, peeked = [], [loader.peek()]
    for _ in range(2):  # two epochs: the peek at an epoch's end is the next epoch's first batch
        for batch in loader:
            handed.append(batch)
            peeked.append(loader.peek())
    assert peeked[:-1] == handed and handed[0] != handed[3]
    resumed = ResumableDataLoader(list(range(10)), batch_size=4, seed=3)
    resumed.load_state_dict({"epoch": 0, "batches_yielded": 3})  # a finished epoch resumes at the next
    assert resumed.peek() == next(iter(resumed)) == handed[3]


def test_a_loader_that_cannot_peek_is_refused_not_run_synchronously(tiny_model_dir, tmp_path):
    module = GRPOModule(tiny_model_dir, **grpo_options(engine=HFEngine(own_weights=True), async_rollouts=True, rollout_batch_size=4,
                        group_size=2, train_batch_size=4, gradient_accumulation_steps=1, sampling_max_tokens=4,
                        reward_fn="toy_rewards.digit_fraction_reward"))
    batches = [{"prompt": ["What is 1 + 1?", "What is 2 + 2?"], "ground_truth": ["2", "4"]}] * 2
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(TypeError, match=r"train loader \(DataLoader\) cannot show its next batch: it needs `peek\(\)`"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))


def test_with_several_updates_per_step_the_batch_sampled_ahead_is_the_next_grpo_steps():
    """Two updates per GRPO step: the step at global step 0 samples ahead the batch of the step at
    global step 2 (with that step's seed), not of update 1, and that step then trains on it. The
    component sees the module only through the sampler, weight-sync and next-batch functions."""
    sampled, peeked = [], []

    def sampler(batch, global_step):
        sampled.append((batch["id"], global_step))
        return lambda: SampledBatch(batch, global_step, 0, [], [], torch.zeros(0), {})

    def next_batch(global_step):
        peeked.append(global_step)
        return {"id": global_step // 2}  # GRPO step k's batch

    ahead = RolloutsAhead(AsyncRolloutConfig(enabled=True), updates_per_rollout=2, sampler=sampler,
                          sync_weights=lambda: None, next_batch=next_batch)
    first = ahead.batch_for_step({"id": 0}, global_step=0)
    ahead.wait()
    assert first.global_step == 0 and peeked == [2] and sampled == [(0, 0), (1, 2)]
    second = ahead.batch_for_step({"id": 1}, global_step=2)  # the one sampled ahead, not sampled again
    assert (second.batch, second.global_step) == ({"id": 1}, 2) and sampled[:3] == [(0, 0), (1, 2), (2, 4)]
    ahead.clear()
