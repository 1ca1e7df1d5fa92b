"""CISPO and SAPO, against values worked out from the papers' formulas on small tensors."""

import math

import pytest
import torch

from r1_lightning.functional import (
    PolicyLossConfig,
    cispo_loss,
    compute_grpo_clip_loss,
    grpo_microbatch_loss,
    policy_gradient_loss,
    sapo_loss,
)

LOG = math.log


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _cispo_case():
    # Ratios r = π/π_old: row 0 [1.5, 0.5] with A = +2, row 1 [0.5, 1.0] with A = -1.
    policy = torch.tensor([[LOG(0.6), LOG(0.3)], [LOG(0.2), LOG(0.5)]], dtype=torch.float64)
    old = torch.tensor([[LOG(0.4), LOG(0.6)], [LOG(0.4), LOG(0.5)]], dtype=torch.float64)
    advantages = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    return policy, old, advantages


def test_cispo_loss_is_the_clipped_detached_weight_times_reinforce():
    policy, old, advantages = _cispo_case()
    config = PolicyLossConfig("cispo", cliprange=0.2, cliprange_high=0.28)
    loss, meta = cispo_loss(advantages, policy, old, config)
    # weights clip(r, 0.8, 1.28): [[1.28, 0.8], [0.8, 1.0]]; loss = -w · A · log π
    expected = [[-1.28 * 2 * LOG(0.6), -0.8 * 2 * LOG(0.3)], [0.8 * LOG(0.2), 1.0 * LOG(0.5)]]
    assert torch.allclose(loss, torch.tensor(expected, dtype=torch.float64))
    assert meta["clipped"].tolist() == [[True, True], [True, False]]
    assert torch.allclose(meta["ratio"], torch.tensor([[1.5, 0.5], [0.5, 1.0]], dtype=torch.float64))


def test_cispo_gradient_is_minus_weight_times_advantage_on_every_token():
    policy, old, advantages = _cispo_case()
    policy.requires_grad_(True)
    config = PolicyLossConfig("cispo", cliprange=0.2, cliprange_high=0.28)
    loss, _ = cispo_loss(advantages, policy, old, config)
    loss.sum().backward()
    assert torch.allclose(policy.grad, torch.tensor([[-2.56, -1.6], [0.8, 1.0]], dtype=torch.float64))

    # Finite differences of the objective with the weight held fixed (moving π and π_old together
    # keeps every ratio): the surrogate's gradient is the derivative of -w·A·log π in log π.
    delta = 1e-6
    for row in range(2):
        for col in range(2):
            shift = torch.zeros_like(old)
            shift[row, col] = delta
            up, _ = cispo_loss(advantages, policy.detach() + shift, old + shift, config)
            down, _ = cispo_loss(advantages, policy.detach() - shift, old - shift, config)
            numeric = (up.sum() - down.sum()) / (2 * delta)
            assert numeric.item() == pytest.approx(policy.grad[row, col].item(), rel=1e-6)


def test_cispo_keeps_gradients_on_tokens_grpo_clip_zeroes():
    policy, old, advantages = _cispo_case()
    grads = {}
    for name in ("grpo_clip", "cispo"):
        leaf = policy.clone().requires_grad_(True)
        if name == "grpo_clip":
            loss, _ = compute_grpo_clip_loss(advantages, leaf, old, cliprange=0.2)
        else:
            loss, _ = cispo_loss(advantages, leaf, old, PolicyLossConfig("cispo", cliprange=0.2))
        loss.sum().backward()
        grads[name] = leaf.grad
    zeroed = grads["grpo_clip"] == 0
    # A > 0 with r = 1.5 > 1.2 and A < 0 with r = 0.5 < 0.8: the clipped surrogate has no gradient there
    assert zeroed.tolist() == [[True, False], [True, False]]
    assert torch.allclose(grads["cispo"][zeroed], torch.tensor([-2 * 1.2, 0.8], dtype=torch.float64))


def test_cispo_without_a_lower_bound_clips_only_from_above():
    policy, old, advantages = _cispo_case()
    loss, meta = cispo_loss(advantages, policy, old, PolicyLossConfig("cispo", cliprange=None, cliprange_high=0.28))
    assert meta["clipped"].tolist() == [[True, False], [False, False]]
    assert loss[0, 1].item() == pytest.approx(-0.5 * 2 * LOG(0.3))


def _sapo_case():
    # Ratios: row 0 [1.0, 1.5] with A = +1 (τ_pos), row 1 [1.0, 0.5] with A = -2 (τ_neg).
    policy = torch.tensor([[LOG(0.5), LOG(0.6)], [LOG(0.3), LOG(0.2)]], dtype=torch.float64)
    old = torch.tensor([[LOG(0.5), LOG(0.4)], [LOG(0.3), LOG(0.4)]], dtype=torch.float64)
    advantages = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    return policy, old, advantages


def test_sapo_loss_is_the_soft_gate_times_the_advantage():
    policy, old, advantages = _sapo_case()
    loss, meta = sapo_loss(advantages, policy, old, PolicyLossConfig("sapo"))

    def gate(r: float, tau: float) -> float:  # f(r) = σ(τ(r - 1)) · 4 / τ
        return _sigmoid(tau * (r - 1.0)) * 4.0 / tau

    expected = [[-gate(1.0, 1.0), -gate(1.5, 1.0)], [2 * gate(1.0, 1.05), 2 * gate(0.5, 1.05)]]
    assert torch.allclose(loss, torch.tensor(expected, dtype=torch.float64))
    assert expected[0][0] == pytest.approx(-2.0) and expected[1][1] == pytest.approx(2 * 0.3716841 * 4 / 1.05, rel=1e-6)
    # the gradient's scale 4σ(1-σ): 1 at r = 1, less elsewhere
    assert meta["gate"][:, 0].tolist() == pytest.approx([1.0, 1.0])
    assert meta["gate"][0, 1].item() == pytest.approx(4 * _sigmoid(0.5) * (1 - _sigmoid(0.5)))


def test_sapo_gradient_passes_gradcheck():
    policy, old, advantages = _sapo_case()
    config = PolicyLossConfig("sapo", sapo_tau_pos=0.7, sapo_tau_neg=1.3)
    assert torch.autograd.gradcheck(lambda lp: sapo_loss(advantages, lp, old, config)[0],
                                    (policy.clone().requires_grad_(True),))


def test_sapo_gradient_at_ratio_one_equals_the_unclipped_policy_gradient():
    policy, _, advantages = _sapo_case()
    grads = {}
    for loss_type in ("sapo", "reinforce_with_baseline"):
        leaf = policy.clone().requires_grad_(True)
        loss, _ = policy_gradient_loss(leaf, PolicyLossConfig(loss_type), advantages=advantages,
                                       old_log_probs=policy)  # r = 1 everywhere
        loss.sum().backward()
        grads[loss_type] = leaf.grad
    assert torch.allclose(grads["sapo"], grads["reinforce_with_baseline"])
    assert torch.allclose(grads["sapo"], torch.tensor([[-1.0, -1.0], [2.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("loss_type", ["cispo", "sapo"])
def test_ratio_losses_are_on_policy_without_old_log_probs(loss_type):
    # One update per rollout batch: π_old is π, every ratio 1, and the gradient is REINFORCE's.
    policy, _, advantages = _sapo_case()
    mask = torch.ones_like(policy)
    grads = {}
    for name in (loss_type, "reinforce_with_baseline"):
        leaf = policy.clone().requires_grad_(True)
        loss, meta = grpo_microbatch_loss(leaf, mask, 1.0, PolicyLossConfig(name), advantages=advantages)
        loss.backward()
        grads[name] = leaf.grad
        if name == loss_type:
            assert meta["ratio_mean"].item() == pytest.approx(1.0)
    assert torch.allclose(grads[loss_type], grads["reinforce_with_baseline"])


@pytest.mark.parametrize(("options", "message"), [
    ({"loss_type": "cispo", "cliprange": None}, "needs cliprange_high"),
    ({"loss_type": "sapo", "cliprange_high": 0.28}, "cliprange_high needs"),
    ({"loss_type": "sapo", "sapo_tau_neg": 0.0}, "sapo_tau_neg must be > 0"),
    ({"loss_type": "cispo", "importance_level": "sequence"}, "needs loss_type='grpo_clip'"),
])
def test_bad_cispo_and_sapo_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**options)
