"""The modules and callbacks in isolation: microbatching invariances, when old log-probs are
computed, weight sync, crash checkpoints, evaluation summaries, LR schedule."""

from __future__ import annotations

import json
import math
import random

import lightning as L
import pytest
import torch
from ablation_helpers import record_update_gradients
from grpo_options import grpo_options

from r1_lightning.callbacks import HFExportCheckpoint, MathEvalCallback
from r1_lightning.data import PromptDataModule
from r1_lightning.evaluation import summarize
from r1_lightning.functional import scatter_response_values
from r1_lightning.modules import GRPOModule
from r1_lightning.modules.base import lr_multiplier
from r1_lightning.rollout import Completion


class FixedEngine:
    """Returns the same made-up completions for given prompts: response lengths 1..7, digits or
    letters, so the dense toy reward varies within each group. Records weight loads."""

    def __init__(self, shares_policy_weights: bool = True):
        self._shares = shares_policy_weights
        self.loads: list[dict[str, torch.Tensor]] = []

    @property
    def shares_policy_weights(self) -> bool:
        return self._shares

    def attach(self, policy, tokenizer, ranks=None):
        self.tokenizer = tokenizer

    def generate(self, prompts, sampling):
        out = []
        for i, prompt in enumerate(prompts):
            rng = random.Random(prompt)
            for _ in range(sampling.n):
                text = "".join(rng.choice("0123456789abc ") for _ in range(rng.randint(1, 7)))
                out.append(Completion(i, self.tokenizer(prompt, add_special_tokens=False)["input_ids"],
                                      self.tokenizer(text, add_special_tokens=False)["input_ids"], text, "length"))
        return out

    def load_weights(self, named_tensors):
        self.loads.append({name: t.detach().clone() for name, t in named_tensors})

    def sleep(self):
        pass

    def wake_up(self):
        pass


def tiny_trainer(tmp_path, steps=1, callbacks=(), **trainer_kwargs) -> L.Trainer:
    """Lightning's own validation loop is off unless asked for (`limit_val_batches`)."""
    trainer_kwargs = {"limit_val_batches": 0, **trainer_kwargs}
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=bool(callbacks),
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     default_root_dir=tmp_path, **trainer_kwargs)


def fit_grpo(model_dir, task_dir, tmp_path, steps=1, callbacks=(), engine=None, ckpt_path=None, **module_kwargs):
    kwargs = {"rollout_batch_size": 8, "group_size": 4, "train_batch_size": 8, "gradient_accumulation_steps": 1,
              "reward_fn": "toy_rewards.digit_fraction_reward", "learning_rate": 1e-2, "seed": 0}
    kwargs.update(module_kwargs)
    module = GRPOModule(model_dir, **grpo_options(engine=engine or FixedEngine(), **kwargs))
    # no batch_size: GRPOModule sets it to its questions per step
    data = PromptDataModule(str(task_dir / "train.jsonl"), val_path=str(task_dir / "val.jsonl"), max_val_examples=4)
    tiny_trainer(tmp_path, steps, callbacks).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def test_the_data_batch_size_is_the_modules_questions_per_step(tiny_model_dir, toy_task_dir, tmp_path):
    """8 rollouts in groups of 4 are 2 questions a step (x 3 rounds of dynamic sampling: 6): the data
    module left without a batch size gets it from the module; one set to another value is refused."""
    module = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path)
    assert module.trainer.datamodule.batch_size == 2
    module = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, dynamic_sampling=True)
    assert module.trainer.datamodule.batch_size == 6
    module = GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), rollout_batch_size=8, group_size=4,
                                                       train_batch_size=8, gradient_accumulation_steps=1))
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), batch_size=3)
    message = r"data.init_args.batch_size \(3\) must equal model.init_args.batching.rollout_batch_size / group_size = 2"
    with pytest.raises(ValueError, match=message):
        tiny_trainer(tmp_path).fit(module, datamodule=data)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.named_parameters()}


def test_tokenizer_from_its_own_folder(tiny_model_dir, tmp_path):
    import shutil

    from r1_lightning.models import load_tokenizer

    model_only = tmp_path / "model"
    model_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_model_dir}/{name}", model_only / name)
    module = GRPOModule(str(model_only), tokenizer_name_or_path=tiny_model_dir, engine=FixedEngine())
    assert module.tokenizer.name_or_path == tiny_model_dir  # what a vLLM engine is given too
    assert module.tokenizer.get_vocab() == load_tokenizer(tiny_model_dir).get_vocab()
    assert module.hparams["tokenizer_name_or_path"] == tiny_model_dir


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_gradient_accumulation_does_not_change_the_gradient(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch, loss_agg):
    """The accumulated gradient of one update over 8 rollouts is the same in 1 microbatch as in 4
    microbatches of 2 (sorted and padded differently): the loss aggregation is exact across
    microbatches. (Gradients, not parameters: Adam's first step is nearly sign(g), blind to scale.)"""
    grads = record_update_gradients(monkeypatch)
    sizes, row_lengths = [], []
    original_pack = GRPOModule._pack_microbatches

    def recording_pack(self, *args):
        microbatches = original_pack(self, *args)
        sizes.append([len(mb.input_ids) for mb in microbatches])
        # a row ends with its response: its packed length is one past the last response position
        row_lengths.append(sorted(int(row.nonzero().max()) + 1 for mb in microbatches for row in mb.response_mask))
        return microbatches

    monkeypatch.setattr(GRPOModule, "_pack_microbatches", recording_pack)
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, loss_agg=loss_agg, gradient_accumulation_steps=1)
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, loss_agg=loss_agg, gradient_accumulation_steps=4)
    # token-budget microbatches: the 3 shortest rows fit the budget, then pairs (or fewer) of longer ones
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, loss_agg=loss_agg, gradient_accumulation_steps=4,
             microbatch_max_tokens=3 * row_lengths[0][2])
    one, four, budget = grads
    assert sizes[:2] == [[8], [2, 2, 2, 2]] and sizes[2][0] == 3 and sum(sizes[2]) == 8, sizes
    assert any(g.abs().max() > 0 for g in one.values())
    for name in one:
        torch.testing.assert_close(one[name], four[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(one[name], budget[name], rtol=1e-4, atol=1e-7)


def test_sft_token_budget_microbatches_give_the_same_gradient(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """One SFT update over 8 examples: 1 microbatch, 4 equal ones, and length-sorted token-budget
    microbatches of uneven sizes accumulate the same gradient."""
    from r1_lightning.data import SFTDataModule
    from r1_lightning.modules import SFTModule
    from r1_lightning.modules.base import PolicyModule
    from r1_lightning.modules.sft import sft_microbatches

    grads, groups = [], []
    original_update, original_split = PolicyModule.optimizer_update, sft_microbatches

    def recording_update(self, *args):
        grads.append({k: p.grad.detach().clone() for k, p in self.policy.named_parameters()})
        return original_update(self, *args)

    def recording_split(*args):
        groups.append(original_split(*args))
        return groups[-1]

    monkeypatch.setattr(PolicyModule, "optimizer_update", recording_update)
    monkeypatch.setattr("r1_lightning.modules.sft.sft_microbatches", recording_split)

    def fit_sft(**kwargs):
        module = SFTModule(tiny_model_dir, learning_rate=1e-2, **kwargs)
        data = SFTDataModule(str(toy_task_dir / "sft.jsonl"), batch_size=8, shuffle=False)
        L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path).fit(module, datamodule=data)

    fit_sft(gradient_accumulation_steps=1)
    fit_sft(gradient_accumulation_steps=4)
    tokenizer = SFTModule(tiny_model_dir).tokenizer
    rows = [json.loads(line) for line in (toy_task_dir / "sft.jsonl").read_text().splitlines()[:8]]
    lengths = sorted(len(tokenizer(r["prompt"] + r["response"], add_special_tokens=False)["input_ids"]) - 1 for r in rows)
    fit_sft(gradient_accumulation_steps=4, microbatch_max_tokens=3 * lengths[2])
    sizes = [[len(g) for g in gs] for gs in groups]
    assert sizes[:2] == [[8], [2, 2, 2, 2]] and sizes[2][0] == 3 and sum(sizes[2]) == 8, sizes
    one, four, budget = grads
    assert any(g.abs().max() > 0 for g in one.values())
    for name in one:
        torch.testing.assert_close(one[name], four[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(one[name], budget[name], rtol=1e-4, atol=1e-7)


def test_sft_update_runs_under_sdpa_backends(tiny_model_dir, toy_task_dir, tmp_path):
    """SFT and expert iteration share `sft_update`: its passes obey `sdpa_backends` too (the CPU has
    no cuDNN attention, so asking for it alone must fail inside the update)."""
    from r1_lightning.data import SFTDataModule
    from r1_lightning.modules import SFTModule

    module = SFTModule(tiny_model_dir, learning_rate=1e-2, gradient_accumulation_steps=2, sdpa_backends=["cudnn"])
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="No viable backend"):
        trainer.fit(module, datamodule=SFTDataModule(str(toy_task_dir / "sft.jsonl"), batch_size=8, shuffle=False))


def test_compiled_decoder_layers_give_the_same_gradient(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """`compile=...` compiles each decoder layer in place (names unchanged) and the chunked LM head's
    work, and computes the same update. The aot_eager backend traces forward and backward like
    inductor, without a C compiler."""
    from r1_lightning.functional import logprobs

    grads = record_update_gradients(monkeypatch)
    head_backends = []  # the backend of every chunked-head forward chunk and backward slice
    maybe_compiled = logprobs._maybe_compiled
    monkeypatch.setattr(logprobs, "_maybe_compiled", lambda fn, backend: head_backends.append(backend) or
                        maybe_compiled(fn, backend))
    common = {"gradient_accumulation_steps": 2, "gradient_checkpointing": True, "logprob_chunk_size": 8}
    plain = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, **common)
    assert head_backends and set(head_backends) == {None}
    head_backends.clear()
    compiled = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, compile="aot_eager", **common)
    assert head_backends and set(head_backends) == {"aot_eager"}
    layers = compiled.policy.model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert not any(layer._compiled_call_impl is not None for layer in plain.policy.model.layers)
    assert list(compiled.policy.state_dict()) == list(plain.policy.state_dict())  # checkpoints unchanged
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_sdpa_backends_hold_in_forward_and_in_the_checkpoint_recomputes(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    """`sdpa_backends` limits PyTorch's attention kernels for every training pass, the gradient
    checkpointing recomputes inside backward included, and changes no gradient."""
    import torch.nn.functional as F

    from r1_lightning.modules.base import PolicyModule

    grads, flash_allowed = [], []
    original_update, original_sdpa = PolicyModule.optimizer_update, F.scaled_dot_product_attention

    def recording_update(self, *args):
        grads.append({k: p.grad.detach().clone() for k, p in self.policy.named_parameters()})
        return original_update(self, *args)

    def recording_sdpa(*args, **kwargs):
        flash_allowed.append(torch.backends.cuda.flash_sdp_enabled())
        return original_sdpa(*args, **kwargs)

    monkeypatch.setattr(PolicyModule, "optimizer_update", recording_update)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    common = {"gradient_accumulation_steps": 2, "gradient_checkpointing": True}
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, **common)
    n_default = len(flash_allowed)
    assert n_default > 0 and all(flash_allowed)  # rollouts come from FixedEngine: these are training passes
    math_only = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, sdpa_backends=["math"], **common)
    layers = len(math_only.policy.model.layers)
    assert len(flash_allowed) - n_default == 2 * 2 * layers  # 2 microbatches x (forward + recompute) x layers
    assert not any(flash_allowed[n_default:])
    assert torch.backends.cuda.flash_sdp_enabled()  # given back after the update
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="No viable backend"):  # the CPU has no cuDNN attention
        fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, sdpa_backends=["cudnn"], **common)
    with pytest.raises(ValueError, match="sdpa_backends"):
        fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, sdpa_backends=["flashy"], **common)


def test_old_log_probs_only_when_the_policy_moves_between_updates(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    calls = []
    original = GRPOModule._with_frozen_log_probs
    monkeypatch.setattr(GRPOModule, "_with_frozen_log_probs", lambda self, mbs: (calls.append(len(mbs)), original(self, mbs))[1])
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, loss_type="grpo_clip")  # 1 update per rollout batch
    assert calls == []
    module = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, loss_type="grpo_clip", epochs_per_rollout_batch=2, steps=2)
    assert calls == [1] and module.global_step == 2  # one rollout batch, two optimizer updates


def test_lr_schedule_warmup_cosine_and_constant():
    assert lr_multiplier(0, 4, 100, "cosine", 0.0) == pytest.approx(0.25)
    assert lr_multiplier(3, 4, 100, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_multiplier(52, 4, 100, "cosine", 0.0) == pytest.approx(0.5)  # halfway through the decay
    assert lr_multiplier(100, 4, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(52, 4, 100, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(77, 0, 100, "constant", 0.0) == 1.0
    assert lr_multiplier(28, 4, 100, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_scatter_response_values_lands_on_label_positions():
    # prompt of 3 tokens: response token j is predicted at label column 2 + j
    out = scatter_response_values([[-1.0, -2.0], [], [-3.0]], [3, 2, 1], (3, 5))
    assert out.tolist() == [[0, 0, -1, -2, 0], [0, 0, 0, 0, 0], [-3, 0, 0, 0, 0]]


class PolicyLogprobEngine(FixedEngine):
    """A FixedEngine with its own weights that returns, where the sampling asks for them, the
    policy's exact log-probs of its samples: a perfect sync, so the engine/trainer gap must be 0."""

    def __init__(self):
        super().__init__(shares_policy_weights=False)
        self.requests: list[tuple[bool, int | None]] = []

    def attach(self, policy, tokenizer, ranks=None):
        super().attach(policy, tokenizer, ranks)
        self.policy = policy

    def generate(self, prompts, sampling):
        from r1_lightning.functional import get_response_log_probs, pack_prompt_and_output_ids

        self.requests.append((sampling.logprobs, sampling.logprobs_prompts))
        completions = super().generate(prompts, sampling)
        for c in completions:
            if sampling.returns_logprobs(c.prompt_index):
                batch = pack_prompt_and_output_ids([c.prompt_token_ids], [c.token_ids], 0)
                with torch.no_grad():
                    lp = get_response_log_probs(self.policy, batch["input_ids"], batch["labels"])["log_probs"][0]
                c.logprobs = lp[batch["response_mask"][0].bool()].tolist()
        return completions


@pytest.mark.parametrize("module_kwargs, request_", [
    ({}, (True, 1)),  # the default: a sample (the first prompt's group) for the sync check
    ({"engine_logprob_check_prompts": 2}, (True, 2)),
    ({"engine_logprobs": True}, (True, None)),
    ({"tis_cap": 2.0}, (True, None)),  # TIS weighs every sample by it
])
def test_engine_logprobs_for_a_sample_and_the_gap_counts_only_those(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch,
                                                                    module_kwargs, request_):
    logged = {}
    monkeypatch.setattr(GRPOModule, "log", lambda self, name, value, **kw: logged.__setitem__(name, value))
    engine = PolicyLogprobEngine()
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, engine=engine, **module_kwargs)
    assert engine.requests == [request_]
    # rows without engine log-probs hold zeros: counted, they would make the gap large
    assert logged["train/engine_logprob_gap"] == pytest.approx(0.0, abs=1e-5)


def test_grpo_and_expert_iteration_share_the_sampling_settings(tiny_model_dir):
    """`sampling_*` mean the same for GRPO and EI (training rollouts), `eval_*` for evaluation."""
    from r1_lightning.modules import ExpertIterationModule

    settings = {"sampling_temperature": 0.7, "sampling_top_p": 0.9, "sampling_min_tokens": 2, "sampling_max_tokens": 30,
                "eval_temperature": 0.5, "eval_max_tokens": 20, "stop": ["</a>"], "seed": 5}
    for module in (GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), group_size=4, **settings)),
                   ExpertIterationModule(tiny_model_dir, engine=FixedEngine(), group_size=4, **settings)):
        step = module.step_sampling()
        assert (step.n, step.temperature, step.top_p, step.min_tokens, step.max_tokens, step.stop, step.seed) == (
            4, 0.7, 0.9, 2, 30, ["</a>"], 5)
        evaluation = module.eval_sampling
        assert (evaluation.n, evaluation.temperature, evaluation.max_tokens, evaluation.stop) == (1, 0.5, 20, ["</a>"])
    with pytest.raises(ValueError, match="ExpertIterationModule sampling_"):
        ExpertIterationModule(tiny_model_dir, engine=FixedEngine(), sampling_min_tokens=40, sampling_max_tokens=30)


def test_engine_logprob_options_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="tis_cap needs the engine's log-probs"):
        GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), tis_cap=2.0, engine_logprobs=False))
    with pytest.raises(ValueError, match="engine_logprob_check_prompts"):
        GRPOModule(tiny_model_dir, engine=FixedEngine(), engine_logprob_check_prompts=-1)
    shared = GRPOModule(tiny_model_dir, engine=FixedEngine(shares_policy_weights=True))
    assert shared.engine_logprob_request == {"logprobs": False, "logprobs_prompts": None}
    unchecked = GRPOModule(tiny_model_dir, engine=FixedEngine(shares_policy_weights=False), engine_logprob_check_prompts=0)
    assert unchecked.engine_logprob_request == {"logprobs": False, "logprobs_prompts": None}


class SyncCheckingEngine(FixedEngine):
    """An engine with its own copy of the weights that records, at every rollout, whether the copy it
    last received is the policy's current weights."""

    def __init__(self):
        super().__init__(shares_policy_weights=False)
        self.current_at_each_rollout: list[bool] = []

    def attach(self, policy, tokenizer, ranks=None):
        super().attach(policy, tokenizer, ranks)
        self.policy = policy

    def generate(self, prompts, sampling):
        held = self.loads[-1] if self.loads else {}
        current = {k: v.detach() for k, v in self.policy.named_parameters()}
        self.current_at_each_rollout.append(bool(held) and all(torch.equal(held[k], v) for k, v in current.items()))
        return super().generate(prompts, sampling)


def test_weight_sync_without_a_listed_callback_before_rollouts_evaluations_and_after_restores(
    tiny_model_dir, toy_task_dir, tmp_path
):
    """No config lists RolloutWeightSync: the module brings it. The engine holds the policy's current
    weights at every training rollout and every evaluation (MathEvalCallback, then `validate` of a
    restored checkpoint), gets them only when they changed, and again after a resume."""
    engine = SyncCheckingEngine()
    checkpoint = HFExportCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, export_hf=False)
    module = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, steps=3, engine=engine,
                      callbacks=[MathEvalCallback(every_n_steps=1, max_batches=1), checkpoint])
    # 3 training rollouts and 4 evaluations (before step 1 and after each update)
    assert engine.current_at_each_rollout == [True] * 7
    assert len(engine.loads) == 4  # the initial weights, then after each of the 3 updates: never twice
    final_of_first_run = params(module)

    resumed_engine = SyncCheckingEngine()
    resumed = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, steps=4, engine=resumed_engine,
                       callbacks=[HFExportCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, export_hf=False)],
                       ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # the first push after resuming carries the restored (step-3) weights, not the initial ones
    for name, tensor in resumed_engine.loads[0].items():
        torch.testing.assert_close(tensor, final_of_first_run[name], rtol=0, atol=0)
    assert resumed_engine.current_at_each_rollout == [True] and resumed.global_step == 4

    # zero-shot evaluation of a checkpoint: `r1-lightning validate` with a RolloutModule
    from r1_lightning.modules import RolloutModule

    eval_engine = SyncCheckingEngine()
    evaluator = RolloutModule(tiny_model_dir, engine=eval_engine, reward_fn="toy_rewards.digit_fraction_reward",
                              eval_output_dir=str(tmp_path / "eval"))
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), val_path=str(toy_task_dir / "val.jsonl"),
                            max_val_examples=4)
    (step_3,) = (tmp_path / "ckpt").glob("*step=3.ckpt")  # the first run's final weights
    tiny_trainer(tmp_path, limit_val_batches=None).validate(evaluator, datamodule=data, ckpt_path=str(step_3))
    assert eval_engine.current_at_each_rollout == [True]
    for name, tensor in eval_engine.loads[0].items():
        torch.testing.assert_close(tensor, final_of_first_run[name], rtol=0, atol=0)


def test_expert_iteration_syncs_before_each_rollout_without_a_listed_callback(tiny_model_dir, toy_task_dir, tmp_path):
    from r1_lightning.modules import ExpertIterationModule

    engine = SyncCheckingEngine()
    module = ExpertIterationModule(tiny_model_dir, engine=engine, group_size=2, sft_batch_size=4,
                                   gradient_accumulation_steps=1, learning_rate=1e-2)
    module.reward_fn = lambda response, truth: {"reward": 1.0, "format_reward": 1.0, "answer_reward": 1.0}
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), batch_size=2)
    tiny_trainer(tmp_path, steps=-1, max_epochs=1, limit_train_batches=2).fit(module, datamodule=data)
    assert module.global_step == 2  # one update per step: the second rollout follows a change
    assert engine.current_at_each_rollout == [True, True] and len(engine.loads) == 2


class CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_a_crash_saves_last_checkpoint_and_resume_continues(tiny_model_dir, toy_task_dir, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, steps=5,
                 callbacks=[HFExportCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=100, export_hf=False),
                            CrashAt(2)])
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    assert not list(ckpt_dir.glob("*.partial"))
    resumed = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, steps=4,
                       callbacks=[HFExportCheckpoint(dirpath=ckpt_dir, save_last=True, export_hf=False)],
                       ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert resumed.global_step == 4


def test_summarize_counts_accuracy_by_level_and_subject():
    records = [
        {"answer_reward": 1.0, "format_reward": 1.0, "reward": 1.0, "response_tokens": 10, "finish_reason": "stop", "level": 1, "subject": "Algebra"},
        {"answer_reward": 0.0, "format_reward": 1.0, "reward": 0.0, "response_tokens": 20, "finish_reason": "stop", "level": 1, "subject": "Geometry"},
        {"answer_reward": 0.0, "format_reward": 0.0, "reward": 0.0, "response_tokens": 30, "finish_reason": "length", "level": 2, "subject": "Algebra"},
    ]
    summary = summarize(records)
    assert summary["answer_accuracy"] == pytest.approx(1 / 3)
    assert summary["format_rate"] == pytest.approx(2 / 3)
    assert summary["response_tokens_mean"] == pytest.approx(20.0)
    assert summary["truncated_rate"] == pytest.approx(1 / 3)
    assert summary["accuracy_by_level"] == {"1": 0.5, "2": 0.0}
    assert summary["accuracy_by_subject"] == {"Algebra": 0.5, "Geometry": 0.0}


def test_each_step_logs_its_grader_timeouts_and_setup_starts_the_grader(tiny_model_dir, toy_task_dir, tmp_path,
                                                                        monkeypatch):
    """`train/grader_timeouts` counts the answers the grader ran out of time on in that step (not
    the run's total), and the grader's workers start when the module is set up, before any step."""
    from r1_lightning import rewards

    counts = {"timeouts": 0, "starts": 0, "starts_before_first_grade": None}
    monkeypatch.setattr(rewards, "grader_timeouts", lambda: counts["timeouts"])
    monkeypatch.setattr(rewards, "start_grader", lambda: counts.update(starts=counts["starts"] + 1))

    def timing_out_reward(response: str, ground_truth: str) -> dict[str, float]:
        if counts["starts_before_first_grade"] is None:
            counts["starts_before_first_grade"] = counts["starts"]
        counts["timeouts"] += 1  # as if the grader ran out of time on every answer
        return {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}

    logged = []

    class RecordTimeouts(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            logged.append(float(trainer.callback_metrics["train/grader_timeouts"]))

    module = GRPOModule(tiny_model_dir, **grpo_options(engine=FixedEngine(), rollout_batch_size=8, group_size=4, train_batch_size=8,
                        gradient_accumulation_steps=1, reward_fn="toy_rewards.digit_fraction_reward"))
    module.reward_fn = timing_out_reward
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), batch_size=2)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[RecordTimeouts()], default_root_dir=tmp_path).fit(module, data)
    assert logged == [8.0, 8.0]  # 2 prompts x 4 samples a step
    assert counts["starts_before_first_grade"] == 1


def test_bf16_mixed_with_the_fused_adamw_clips_gradients_to_max_grad_norm(tiny_model_dir, toy_task_dir, tmp_path):
    """float32 weights under bf16 autocast (the SmolLM2 configs) with the fused AdamW the GPU uses:
    Lightning's `clip_gradients` refuses that pair, so the update clips by itself; the gradients the
    optimizer steps with have the global norm `max_grad_norm` (they were larger) and the direction of
    the unclipped ones."""
    from r1_lightning.data import SFTDataModule
    from r1_lightning.modules import SFTModule

    seen = []

    class FusedSFT(SFTModule):  # the CPU has a fused AdamW too: the same optimizer the GPU configs get
        def configure_optimizers(self):
            config = super().configure_optimizers()
            optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=1e-3, fused=True)
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
                [p.grad.detach().clone() for group in opt.param_groups for p in group["params"] if p.grad is not None]))
            config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            return {"optimizer": optimizer, "lr_scheduler": config["lr_scheduler"]}

    def fit(max_grad_norm):
        module = FusedSFT(tiny_model_dir, max_grad_norm=max_grad_norm, dtype="float32")
        data = SFTDataModule(str(toy_task_dir / "sft.jsonl"), batch_size=8, shuffle=False)
        L.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(module, datamodule=data)
        assert all(p.dtype == torch.float32 for p in module.policy.parameters())  # master weights stay float32
        return seen.pop()

    unclipped = fit(None)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in unclipped]))
    max_norm = float(norm) / 4
    clipped = fit(max_norm)
    clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in clipped]))
    assert float(clipped_norm) == pytest.approx(max_norm, rel=1e-4)
    for before, after in zip(unclipped, clipped):
        torch.testing.assert_close(after, before * (max_norm / float(norm)), rtol=1e-4, atol=1e-8)
