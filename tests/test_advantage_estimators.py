"""RLOO and REINFORCE++ advantages, against values worked out by hand."""

import math

import pytest
import torch

from r1_lightning.functional import batch_whitened, estimate_advantages, rloo_advantages


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # group 1: 1 - (0+0+1)/3, 0 - (1+0+1)/3, ...; group 2: 1 - (1+1+0)/3, ..., 0 - (1+1+1)/3
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0]
    assert rloo_advantages(rewards, 4).tolist() == pytest.approx(expected)
    advantages, _ = estimate_advantages(rewards, 4, "rloo", 1e-6, normalize_by_std=True)  # never scaled
    assert advantages.tolist() == pytest.approx(expected)


def test_reinforce_pp_whitens_group_centered_rewards_over_the_whole_batch():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # group-centered: [0.5, -0.5, 0, 0, 0, 0]; batch mean 0, sample variance (0.25 + 0.25) / 5 = 0.1
    std = math.sqrt(0.1)
    expected = [0.5 / std, -0.5 / std, 0.0, 0.0, 0.0, 0.0]
    advantages, _ = estimate_advantages(rewards, 2, "reinforce_pp", 0.0, normalize_by_std=False)
    assert advantages.tolist() == pytest.approx(expected)
    # GRPO's per-group std would give every varied group +-0.707 instead: a different estimator
    grpo, _ = estimate_advantages(rewards, 2, "grpo", 0.0, normalize_by_std=True)
    assert grpo[0].item() == pytest.approx(0.5 / math.sqrt(0.5))


def test_batch_whitening_across_ranks_equals_whitening_the_joined_batch():
    torch.manual_seed(0)
    ranks = [torch.randn(6) + 3.0, torch.randn(10) - 1.0]  # unequal sizes, unequal means

    def sum_over_ranks(rank_index):
        def all_reduce_sum(moments):  # what torch.distributed.all_reduce(SUM) gives every rank
            others = [r for i, r in enumerate(ranks) if i != rank_index]
            return moments + sum(torch.stack([torch.tensor(float(o.numel())), o.sum(), o.square().sum()]).double()
                                 for o in others)
        return all_reduce_sum

    joined = torch.cat(ranks)
    expected = (joined - joined.mean()) / (joined.std() + 1e-6)
    per_rank = [batch_whitened(values, 1e-6, sum_over_ranks(i)) for i, values in enumerate(ranks)]
    assert torch.allclose(torch.cat(per_rank), expected, atol=1e-6)
    # without the reduction each rank would use its own statistics
    assert not torch.allclose(batch_whitened(ranks[0], 1e-6), expected[:6], atol=1e-3)


def test_batch_whitening_of_equal_values_is_zero_not_nan():
    assert batch_whitened(torch.full((4,), 2.0), 1e-6).tolist() == [0.0] * 4
    assert batch_whitened(torch.tensor([5.0]), 1e-6).tolist() == [0.0]


@pytest.mark.parametrize(("estimator", "group_size", "message"), [
    ("ppo", 4, "unknown advantage_estimator"),
    ("rloo", 1, "needs group_size >= 2"),
    ("reinforce_pp", 1, "needs group_size >= 2"),
])
def test_bad_estimator_options_are_refused(estimator, group_size, message):
    with pytest.raises(ValueError, match=message):
        estimate_advantages(torch.zeros(4), group_size, estimator, 1e-6, normalize_by_std=False)


@pytest.mark.parametrize(("estimator", "group_size", "message"), [
    ("ppo", 4, "GRPOModule: unknown advantage_estimator 'ppo'"),
    ("rloo", 1, "GRPOModule: advantage_estimator='rloo' needs group_size >= 2"),
])
def test_grpo_module_refuses_a_bad_estimator_when_built(tiny_model_dir, estimator, group_size, message):
    from r1_lightning.modules import BatchConfig, GRPOModule

    batching = BatchConfig(rollout_batch_size=4, group_size=group_size, train_batch_size=4, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match=message):
        GRPOModule(tiny_model_dir, batching=batching, advantage_estimator=estimator)
