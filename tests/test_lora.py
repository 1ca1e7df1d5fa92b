"""LoRA RL: only adapters train, the engine and the export get the merged model, resume is exact."""

from __future__ import annotations

import pytest
import torch
from test_modules import FixedEngine, fit_grpo, params, tiny_trainer
from transformers import AutoModelForCausalLM

from r1_lightning.callbacks import HFExportCheckpoint
from r1_lightning.data import SFTDataModule
from r1_lightning.lora import LoRAConfig, add_lora, merged_state_dict
from r1_lightning.modules import SFTModule

LORA = LoRAConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _train_adapters_nonzero(model):  # fresh adapters have B = 0; give them a value to merge
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=0.05)


def test_merged_weights_match_peft_merge_and_keep_the_original_names(tiny_model_dir):
    from peft import get_peft_model

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original_names = set(plain.state_dict())
    ours = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LORA)
    _train_adapters_nonzero(ours)
    reference = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LORA.to_peft())
    reference.load_state_dict({f"base_model.model.{k}": v for k, v in ours.state_dict().items()}, strict=False)
    reference_merged = reference.merge_and_unload().state_dict()

    merged = merged_state_dict(ours, ours.state_dict())
    assert set(merged) == original_names
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference_merged[name], rtol=0, atol=1e-6)
    changed = {n for n in merged if not torch.equal(merged[n], plain.state_dict()[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for n in changed)


def test_only_adapters_get_gradients_and_optimizer_state(tiny_model_dir, toy_task_dir, tmp_path):
    module = SFTModule(tiny_model_dir, learning_rate=1e-2, gradient_accumulation_steps=1, lora=LORA)
    data = SFTDataModule(str(toy_task_dir / "sft.jsonl"), batch_size=4)
    module.configure_model()
    before = params(module)
    tiny_trainer(tmp_path, steps=2).fit(module, datamodule=data)
    after = params(module)
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    optimizer = module.optimizers().optimizer
    with_state = {id(p) for p in optimizer.state}
    assert with_state == {id(p) for n, p in module.policy.named_parameters() if n in trainable}
    for name in before:
        assert torch.equal(before[name], after[name]) == (name not in trainable), name


def test_grpo_with_lora_sends_the_engine_merged_weights_and_exports_both(tiny_model_dir, toy_task_dir, tmp_path):
    from peft import PeftModel

    engine = FixedEngine(shares_policy_weights=False)  # its own weights: the trainer must send them
    checkpoint = HFExportCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    module = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path, steps=2, engine=engine, callbacks=[checkpoint],
                      lora=LORA)
    assert len(engine.loads) == 2  # before each rollout: the initial weights, then after update 1
    module.sync_engine()  # and the final ones, as before the next rollout
    sent = engine.loads[-1]
    assert not any("lora_" in name or "base_layer" in name for name in sent)
    expected = merged_state_dict(module.policy, module.policy.state_dict())
    for name, tensor in sent.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)

    export = tmp_path / "ckpt" / "last_hf"
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    module.policy.eval()
    with torch.no_grad():
        trained = module.policy(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(export)(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                            export / "adapter")(ids).logits
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapted, trained, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained, AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits)


def test_lora_resume_is_exact(tiny_model_dir, toy_task_dir, tmp_path):
    straight = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path / "straight", steps=3, lora=LORA)
    ckpt = tmp_path / "ckpt"
    fit_grpo(tiny_model_dir, toy_task_dir, tmp_path / "first", steps=2, lora=LORA,
             callbacks=[HFExportCheckpoint(dirpath=ckpt, save_last=True, every_n_train_steps=1, export_hf=False)])
    resumed = fit_grpo(tiny_model_dir, toy_task_dir, tmp_path / "resumed", steps=3, lora=LORA,
                       callbacks=[HFExportCheckpoint(dirpath=ckpt, save_last=True, export_hf=False)],
                       ckpt_path=str(ckpt / "last.ckpt"))
    for name, tensor in params(straight).items():
        torch.testing.assert_close(params(resumed)[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"rank": 0}, "lora.rank must be >= 1"),
    ({"alpha": 0}, "lora.alpha must be > 0"),
    ({"dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
    ({"target_modules": []}, "lora.target_modules must name"),
])
def test_bad_lora_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**options)


def test_a_target_module_the_model_lacks_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="model.init_args.lora.target_modules"):
        add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoRAConfig(target_modules=["no_such_proj"]))
