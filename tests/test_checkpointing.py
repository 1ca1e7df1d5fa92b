"""A run never loses a checkpoint, never checkpoints garbage, and resumes exactly: failures before
training leave `last.ckpt` alone, non-finite updates are skipped and counted, non-finite weights
are never written, and Ctrl-C then `--ckpt_path last` equals the uninterrupted run bit for bit."""

from __future__ import annotations

import csv
import signal
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_cli import run_cli, tiny_grpo_args

from r1_lightning.data import ResumableDataLoader
from r1_lightning.modules import PolicyModule


@pytest.fixture
def sigint_restored():
    """Lightning ignores SIGINT after handling a KeyboardInterrupt; give pytest its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def metric_rows(run_dir: Path) -> dict[tuple[int, str], float]:
    """{(step, metric): value} over every CSV log version of a run (a resumed run adds one),
    without the timings."""
    rows = {}
    for metrics_csv in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(metrics_csv) as f:
            for row in csv.DictReader(f):
                for name, value in row.items():
                    if value and name != "step" and not name.startswith("perf/"):
                        key = (int(row["step"]), name)
                        assert key not in rows, f"{key} logged twice"
                        rows[key] = float(value)
    return rows


def policy_of_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("policy."): v for k, v in state.items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- Ctrl-C, resume
class InterruptAt(L.Callback):
    """Ctrl-C in the middle of the training step that starts at global step `step`: after the
    rollout and the first microbatch's backward, before the optimizer update."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_then_resume_equals_the_uninterrupted_run(tiny_model_dir, toy_task_dir, tmp_path, sigint_restored):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    no_periodic = ["--trainer.callbacks.every_n_train_steps", 100]  # last.ckpt only at the end or on failure
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, straight, max_steps=4, extra=no_periodic))

    interrupt = [*no_periodic, "--trainer.callbacks+=test_checkpointing.InterruptAt", "--trainer.callbacks.step", 2]
    saved = r"KeyboardInterrupt at step 2: saved .*last.ckpt and last_hf/ \(step 2\); resume with --ckpt_path last"
    with pytest.warns(UserWarning, match=saved), pytest.raises(SystemExit):  # how Lightning ends after Ctrl-C
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, stopped, max_steps=4, extra=interrupt))
    last = stopped / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    # the HF export beside last.ckpt is the same step (it leaves out the tied lm_head)
    exported, saved = load_file(stopped / "ckpt" / "last_hf" / "model.safetensors"), policy_of_checkpoint(last)
    assert_same_tensors(exported, {name: saved[name] for name in exported})

    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, stopped, max_steps=4, extra=[*no_periodic, "--ckpt_path", "last"]))
    assert_same_tensors(load_file(straight / "ckpt" / "last_hf" / "model.safetensors"),
                        load_file(stopped / "ckpt" / "last_hf" / "model.safetensors"))
    expected, got = metric_rows(straight), metric_rows(stopped)
    assert {step for step, name in expected if name == "train/loss"} == {0, 1, 2, 3}
    assert got == expected  # every step logged once, at the same step number, with the same values


# ----------------------------------------------------------------------------- failures before training
def test_a_failure_before_training_never_touches_last_ckpt(tiny_model_dir, toy_task_dir, tmp_path, capsys):
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=1))
    last = tmp_path / "ckpt" / "last.ckpt"
    good = last.read_bytes()

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": \n')
    with pytest.raises(SystemExit):  # the data is read in setup, before training
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=2,
                               extra=["--data.init_args.train_path", broken]))
    assert f"{broken}:2: invalid JSON" in capsys.readouterr().err  # main() reports it in one line
    assert last.read_bytes() == good

    missing = tmp_path / "no_such.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=2, extra=["--ckpt_path", missing]))
    assert exit_info.value.code == 2
    assert f"--ckpt_path {missing}: no such checkpoint file" in capsys.readouterr().err
    assert last.read_bytes() == good


def test_a_failure_never_replaces_a_newer_last_ckpt(tiny_model_dir, toy_task_dir, tmp_path, sigint_restored):
    """A run resumed from an older numbered checkpoint and interrupted before it passes the step of
    the last.ckpt on disk leaves that file as it is."""
    run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=3))
    last = tmp_path / "ckpt" / "last.ckpt"
    newest = last.read_bytes()
    # (periodic saves would rightly overwrite last.ckpt with this run's own latest state)
    interrupt = ["--trainer.callbacks.every_n_train_steps", 100, "--ckpt_path", tmp_path / "ckpt" / "step=1.ckpt",
                 "--trainer.callbacks+=test_checkpointing.InterruptAt", "--trainer.callbacks.step", 2]
    kept = r"last.ckpt \(step 3\) is already as new; not written"
    with pytest.warns(UserWarning, match=kept), pytest.raises(SystemExit):
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=3, extra=interrupt))
    assert last.read_bytes() == newest


def test_a_failure_after_an_update_inside_a_step_writes_nothing(tiny_model_dir, toy_task_dir, tmp_path,
                                                                 sigint_restored):
    """Two updates per step: Ctrl-C after the first update of the second step has no complete
    state to save (the weights are neither step 2's nor step 3's)."""
    extra = ["--model.init_args.batching.train_batch_size", 4, "--trainer.callbacks.every_n_train_steps", 100,
             "--trainer.callbacks+=test_checkpointing.InterruptAt", "--trainer.callbacks.step", 3]
    with pytest.warns(UserWarning, match="not written: it stopped in the middle of a step"), pytest.raises(SystemExit):
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=6, extra=extra))
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))


# ----------------------------------------------------------------------------- non-finite updates
class ScriptedUpdates(PolicyModule):
    """One optimizer update per batch on a fixed finite loss; the gradients (`nan_grad_at`) or the
    reported loss (`nan_loss_at`) of chosen global steps are made NaN. Records what each step saw."""

    def __init__(self, model_name_or_path: str, nan_grad_at=(), nan_loss_at=(), **kwargs):
        super().__init__(model_name_or_path, **kwargs)
        self.nan_grad_at, self.nan_loss_at = set(nan_grad_at), set(nan_loss_at)
        self.steps: list[dict] = []

    def training_step(self, batch, batch_idx):
        step = self.global_step
        loss = self.policy(torch.tensor([[1, 2, 3, 4, 5]])).logits.float().square().mean()
        self.manual_backward(loss)
        if step in self.nan_grad_at:
            next(p for p in self.policy.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
        reported = torch.tensor(float("nan")) if step in self.nan_loss_at else loss.detach()
        metrics = self.optimizer_update(reported)
        first = next(iter(self.optimizers().optimizer.state.values()))
        self.steps.append({**metrics, "policy_version": self.policy_version, "exp_avg": first["exp_avg"].clone(),
                           "weights": {k: v.detach().clone() for k, v in self.policy.named_parameters()}})


def fit_scripted(model_dir: str, max_steps: int, **kwargs) -> ScriptedUpdates:
    module = ScriptedUpdates(model_dir, learning_rate=1e-2, lr_schedule="linear", **kwargs)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=ResumableDataLoader(list(range(16)), batch_size=1))
    return module


def test_a_non_finite_update_is_skipped_counted_and_keeps_the_schedule(tiny_model_dir):
    module = fit_scripted(tiny_model_dir, max_steps=5, nan_grad_at={1}, nan_loss_at={2})
    steps = module.steps
    assert [s["train/skipped_updates"] for s in steps] == [0, 1, 2, 2, 2]
    assert_same_tensors(steps[1]["weights"], steps[0]["weights"])  # skipped: weights untouched,
    assert_same_tensors(steps[2]["weights"], steps[0]["weights"])
    assert torch.equal(steps[2]["exp_avg"], steps[0]["exp_avg"])  # ... and AdamW's moments too
    assert not torch.equal(steps[3]["weights"]["model.norm.weight"], steps[0]["weights"]["model.norm.weight"])
    assert [s["policy_version"] for s in steps] == [1, 1, 1, 2, 3]  # bumped only when weights change
    # the linear schedule over max_steps=5 still gives step s the factor 1 - s/5: skips count as steps
    assert [s["train/lr"] for s in steps] == pytest.approx([1e-2 * (1 - s / 5) for s in range(5)])
    assert module.trainer.global_step == 5
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["r1_lightning"]["skipped_updates"] == 2


def test_too_many_non_finite_updates_in_a_row_stop_the_run(tiny_model_dir):
    with pytest.raises(RuntimeError, match="max_consecutive_skipped_updates: 3 optimizer updates in a row"):
        fit_scripted(tiny_model_dir, max_steps=8, nan_grad_at={1, 2, 3, 4}, max_consecutive_skipped_updates=3)
    with pytest.raises(ValueError, match="max_consecutive_skipped_updates must be >= 1"):
        ScriptedUpdates(tiny_model_dir, max_consecutive_skipped_updates=0)


def test_a_finite_update_resets_the_count_of_skipped_updates_in_a_row(tiny_model_dir):
    """Skips at steps 1, 2, 4 and 5 are two runs of two, split by the finite update at step 3: a
    limit of 3 in a row never trips, though 4 updates were skipped."""
    module = fit_scripted(tiny_model_dir, max_steps=7, nan_grad_at={1, 2, 4, 5}, max_consecutive_skipped_updates=3)
    assert [s["train/skipped_updates"] for s in module.steps] == [0, 1, 2, 2, 3, 4, 4]
    assert module.consecutive_skipped_updates == 0  # step 6 was finite


def test_learning_rate_1e6_stops_clearly_and_checkpoints_only_finite_weights(tiny_model_dir, toy_task_dir, tmp_path):
    """The first update blows the weights up; the next ones have NaN gradients and are skipped,
    then the run stops saying why, and nothing non-finite was written."""
    extra = ["--model.init_args.learning_rate", 1e6, "--model.init_args.max_consecutive_skipped_updates", 2]
    with pytest.raises(RuntimeError, match="max_consecutive_skipped_updates: 2 optimizer updates in a row"):
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=6, extra=extra))
    ckpt = tmp_path / "ckpt"
    assert {p.name for p in ckpt.glob("*.ckpt")} == {"step=1.ckpt", "step=2.ckpt", "last.ckpt"}
    for path in ckpt.glob("*.ckpt"):
        assert all_finite(policy_of_checkpoint(path)), path.name
        assert all_finite(load_file(ckpt / f"{path.stem}_hf" / "model.safetensors")), path.name
    # step 2 was skipped: its weights are step 1's
    assert_same_tensors(policy_of_checkpoint(ckpt / "step=1.ckpt"), policy_of_checkpoint(ckpt / "step=2.ckpt"))


class PoisonAt(L.Callback):
    """Put a NaN into the policy at the end of the step that reaches global step `step` (before
    the checkpoint callback, which Lightning runs last)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.policy.parameters()).view(-1)[0] = float("nan")


def test_non_finite_weights_are_never_written(tiny_model_dir, toy_task_dir, tmp_path):
    extra = ["--trainer.callbacks+=test_checkpointing.PoisonAt", "--trainer.callbacks.step", 2]
    refused = "refusing to write .*{}: the policy has non-finite weights"
    with pytest.warns(UserWarning, match=refused.format("last.ckpt")), \
            pytest.raises(RuntimeError, match=refused.format("step=2.ckpt")):
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, max_steps=4, extra=extra))
    ckpt = tmp_path / "ckpt"
    assert {p.name for p in ckpt.iterdir()} == {"step=1.ckpt", "step=1_hf", "last.ckpt", "last_hf"}
    assert torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1
    for name in ("step=1", "last"):
        assert all_finite(policy_of_checkpoint(ckpt / f"{name}.ckpt"))
        assert all_finite(load_file(ckpt / f"{name}_hf" / "model.safetensors"))


def test_periodic_checkpoints_under_manual_optimization_warn_nothing(tiny_model_dir, toy_task_dir, tmp_path):
    """Lightning warns that a batch-end checkpoint under manual optimization holds the weights after
    the update; ours are meant to (they match the loop counters saved with them), so no run prints it."""
    with warnings.catch_warnings(record=True) as caught:  # tiny_grpo_args checkpoints every step
        warnings.simplefilter("always")
        run_cli(tiny_grpo_args(tiny_model_dir, toy_task_dir, tmp_path, 1))
    assert (tmp_path / "ckpt" / "step=1.ckpt").is_file()
    assert not [w for w in caught if "manual optimization" in str(w.message)]
