"""The functional core: pure tensor functions for SFT, expert iteration and GRPO-family training.

The functions with CS336 names (`tokenize_prompt_and_output`, `compute_entropy`,
`get_response_log_probs`, `masked_mean`, `masked_normalize`, `sft_microbatch_train_step`,
`compute_group_normalized_rewards`, `compute_naive_policy_gradient_loss`, `compute_grpo_clip_loss`,
`compute_policy_gradient_loss`, `grpo_microbatch_train_step`) keep the names, arguments and
semantics of the Stanford CS336 alignment assignment, so its users feel at home and each piece is
testable on plain tensors. Everything is importable from here; one concept per module:

- `packing`: prompt and output token ids -> the shifted `input_ids` / `labels` / `response_mask`
  batch every loss reads; the cut of an update into microbatches (equal slices or a token budget).
- `logprobs`: per-token log-probs and entropies under a causal LM, with a chunked LM head (a custom
  autograd function) that never materializes the `(B, T, vocab)` float32 logits.
- `masked`: masked mean / sum and `aggregate_loss`, the GRPO, DAPO and Dr. GRPO loss aggregations.
- `sft`: the SFT microbatch loss (masked NLL).
- `advantages`: advantages from a tensor of rewards — group-normalized (GRPO), leave-one-out
  (RLOO), batch-whitened (REINFORCE++) — and the CS336 function that grades with a reward function
  first; which groups carry any reward variance; DAPO's soft overlong penalty, a reward term.
- `policy_loss`: `PolicyLossConfig` (every option of the loss, checked once) and the
  policy-gradient losses it drives: REINFORCE with or without baseline, the clipped GRPO/PPO
  surrogate with DAPO clip-higher, CISPO's clipped detached weights, SAPO's soft gate, GSPO sequence ratios, a k3 KL penalty, truncated importance
  sampling, and the GRPO microbatch loss with the GRPO / DAPO / Dr. GRPO aggregations.

The `*_microbatch_loss` functions return the loss without calling `backward()` (Lightning modules
call `manual_backward` themselves); the CS336 `*_train_step` functions are these plus `backward()`,
and never zero or replace `.grad`, so repeated calls accumulate.

Shapes: B = batch (sequences), T = sequence length (tokens), V = vocabulary, H = hidden size,
N = flattened tokens (B·T).
"""

from r1_lightning.functional.advantages import (
    ADVANTAGE_ESTIMATORS,
    batch_whitened,
    check_advantage_estimator,
    compute_group_normalized_rewards,
    estimate_advantages,
    group_normalized_advantages,
    overlong_penalty,
    rloo_advantages,
    varied_groups,
)
from r1_lightning.functional.logprobs import (
    compute_entropy,
    get_response_log_probs,
    response_log_probs_from_hidden,
)
from r1_lightning.functional.masked import LOSS_AGGREGATIONS, aggregate_loss, masked_mean, masked_normalize
from r1_lightning.functional.packing import (
    microbatch_groups,
    pack_prompt_and_output_ids,
    scatter_response_values,
    split_by_token_budget,
    tokenize_prompt_and_output,
)
from r1_lightning.functional.policy_loss import (
    IMPORTANCE_LEVELS,
    LOSS_TYPES,
    RATIO_LOSSES,
    PolicyLossConfig,
    cispo_loss,
    compute_grpo_clip_loss,
    compute_k3_kl,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    grpo_clip_loss,
    grpo_microbatch_loss,
    grpo_microbatch_train_step,
    policy_gradient_loss,
    sapo_loss,
    truncated_importance_weight,
)
from r1_lightning.functional.sft import sft_microbatch_loss, sft_microbatch_train_step

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IMPORTANCE_LEVELS",
    "LOSS_AGGREGATIONS",
    "LOSS_TYPES",
    "RATIO_LOSSES",
    "PolicyLossConfig",
    "aggregate_loss",
    "batch_whitened",
    "check_advantage_estimator",
    "cispo_loss",
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_grpo_clip_loss",
    "compute_k3_kl",
    "compute_naive_policy_gradient_loss",
    "compute_policy_gradient_loss",
    "estimate_advantages",
    "get_response_log_probs",
    "group_normalized_advantages",
    "grpo_clip_loss",
    "grpo_microbatch_loss",
    "grpo_microbatch_train_step",
    "masked_mean",
    "masked_normalize",
    "microbatch_groups",
    "overlong_penalty",
    "pack_prompt_and_output_ids",
    "policy_gradient_loss",
    "response_log_probs_from_hidden",
    "rloo_advantages",
    "sapo_loss",
    "scatter_response_values",
    "sft_microbatch_loss",
    "sft_microbatch_train_step",
    "split_by_token_budget",
    "tokenize_prompt_and_output",
    "truncated_importance_weight",
    "varied_groups",
]
