"""Reward functions `fn(response, ground_truth) -> {"format_reward", "answer_reward", "reward"}`
(the CS336 signature), a registry by name, and weighted combinations.

The reward is always the answer reward: a well-formatted wrong answer earns nothing, so a policy
cannot climb by learning the format alone. `format_reward` is reported for logging.

Reward hacks guarded against (see tests/test_rewards.py):
- several `<answer>` blocks: only the last one counts, so hedging with many answers gains nothing;
  text after its `</answer>` is ignored;
- an empty answer (`<answer></answer>`, `<answer> \\boxed{} </answer>`, an empty last block after a
  full one) is not well formatted and earns nothing; an unclosed `\\boxed{` is formatted but wrong;
- the ground truth written in the reasoning, outside the answer block, earns nothing;
- a list of candidates in one answer ("1, 2, 3") is a set, not equal to a single value.
"""

import importlib
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

from r1_lightning.rewards.extract import (
    extract_answer_tag,
    extract_boxed_answer,
    extract_last_number,
    unwrap_boxed,
)
from r1_lightning.rewards.grader import grade
from r1_lightning.rewards.normalize import parse_plain_number

RewardFn = Callable[[str, str], dict[str, float]]
# A ground truth may list several accepted answers.
GroundTruth = str | int | float | Sequence[str]

R1_ZERO_SEPARATOR = "</think> <answer>"
REWARD_KEYS = ("format_reward", "answer_reward", "reward")


def _rewards(well_formatted: bool, correct: bool) -> dict[str, float]:
    format_reward = 1.0 if well_formatted else 0.0
    answer_reward = 1.0 if well_formatted and correct else 0.0
    return {"format_reward": format_reward, "answer_reward": answer_reward, "reward": answer_reward}


def _as_list(ground_truth: GroundTruth) -> Sequence:
    return [ground_truth] if isinstance(ground_truth, (str, int, float)) else ground_truth


def _grade_any(answer: str, ground_truth: GroundTruth) -> bool:
    return any(grade(answer, str(truth)) for truth in _as_list(ground_truth))


def _r1_zero_answer(response: str) -> str | None:
    """The answer of an R1-Zero response as written (a box not yet unwrapped), or None if the
    response is not well formatted: it must contain `</think> <answer>`, and its last `<answer>`
    must be closed and not empty, nor hold only an empty `\\boxed{}`."""
    if R1_ZERO_SEPARATOR not in response:
        return None
    answer = extract_answer_tag(response)
    if not answer:
        return None
    unwrapped = unwrap_boxed(answer)
    if unwrapped is not None and not unwrapped.strip():
        return None
    return answer


def r1_zero_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
    """Reward for the R1-Zero format `... </think> <answer> ANSWER </answer>`.

    The answer is the text of the last `<answer>` block; a `\\boxed{}` inside it is unwrapped
    (an unclosed box means a wrong answer).
    """
    answer = _r1_zero_answer(response)
    if answer is None:
        return _rewards(well_formatted=False, correct=False)
    answer = unwrap_boxed(answer)
    return _rewards(well_formatted=True, correct=answer is not None and _grade_any(answer, ground_truth))


def question_only_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
    """Reward for a free-form response: the last `\\boxed{}` is the answer; format reward 1 iff
    there is one and it is not empty."""
    answer = extract_boxed_answer(response)
    if not answer or not answer.strip():
        return _rewards(well_formatted=False, correct=False)
    return _rewards(well_formatted=True, correct=_grade_any(answer, ground_truth))


def gsm8k_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
    """Reward for GSM8K in the R1-Zero format: the last number of the answer block (after `$`,
    thousands separators, units and a trailing period are dropped) must equal the ground truth
    number exactly (`18.00` = `18`)."""
    answer = _r1_zero_answer(response)
    if answer is None:
        return _rewards(well_formatted=False, correct=False)
    given = _gsm8k_answer_value(answer)
    correct = given is not None and any(given == _last_number_value(str(t)) for t in _as_list(ground_truth))
    return _rewards(well_formatted=True, correct=correct)


def r1_zero_format_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
    """Format shaping for weak starting models: reward 1 for a well-formed R1-Zero response,
    whatever the answer. Use it only combined with a correctness reward and a small weight, e.g.
    `reward_fn: {r1_zero: 1.0, r1_zero_format: 0.1}`; its format/answer entries are 0 so a
    combination's logged format and answer rewards stay those of the correctness reward. For
    numeric answers prefer `gsm8k_format`, which a copied placeholder cannot earn."""
    return _shaping(_r1_zero_answer(response) is not None)


def gsm8k_format_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
    """Format shaping for GSM8K: reward 1 for a well-formed R1-Zero response whose answer block
    holds a number (the one `gsm8k` grades), right or wrong; e.g. `reward_fn: {gsm8k: 1.0,
    gsm8k_format: 0.1}`. Without the number a policy can earn the shaping by copying the prompt's
    own example, `<answer> a single number </answer>`, to every question: the samples of a group
    then all score the same, their advantages are zero, and nothing moves it off that answer."""
    answer = _r1_zero_answer(response)
    return _shaping(answer is not None and _gsm8k_answer_value(answer) is not None)


def _shaping(earned: bool) -> dict[str, float]:
    """A shaping term's rewards: its format/answer entries are 0, so that a combination logs those of
    its correctness reward."""
    return {"format_reward": 0.0, "answer_reward": 0.0, "reward": 1.0 if earned else 0.0}


def _gsm8k_answer_value(answer: str) -> Fraction | None:
    """The value of the last number in an answer block (inside its `\\boxed{}` when there is one)."""
    return _last_number_value(unwrap_boxed(answer) or "")


def _last_number_value(text: str) -> Fraction | None:
    number = extract_last_number(text)
    parsed = parse_plain_number(number) if number is not None else None
    return None if parsed is None else parsed.value


REWARD_FNS: dict[str, RewardFn] = {
    "r1_zero": r1_zero_reward_fn,
    "question_only": question_only_reward_fn,
    "gsm8k": gsm8k_reward_fn,
    "r1_zero_format": r1_zero_format_reward_fn,
    "gsm8k_format": gsm8k_format_reward_fn,
}


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered as `name` ("r1_zero", "question_only", "gsm8k"), or your own
    given as an import path `package.module.function` (same signature: response, ground_truth ->
    {"format_reward", "answer_reward", "reward"})."""
    if name in REWARD_FNS:
        return REWARD_FNS[name]
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"reward function {name!r} could not be imported: {error}") from error
        if not callable(fn):
            raise ValueError(f"reward function {name!r} is not callable")
        return fn if fn in REWARD_FNS.values() else CheckedRewardFn(name, fn)
    raise ValueError(
        f"unknown reward function {name!r}; choose one of {sorted(REWARD_FNS)} or give an import path "
        f"such as my_package.rewards.my_reward_fn"
    )


class CheckedRewardFn:
    """A user's reward function, checked on every call to return the three reward keys, so that a
    wrong return value fails at once with one line naming the function and the missing keys,
    rather than as a KeyError deep in the trainer."""

    def __init__(self, name: str, fn: RewardFn):
        self.name, self.fn = name, fn

    def __call__(self, response: str, ground_truth: GroundTruth) -> dict[str, float]:
        rewards = self.fn(response, ground_truth)
        if not isinstance(rewards, Mapping):
            raise TypeError(f"reward function {self.name!r} returned {type(rewards).__name__}, not a dict "
                            f"with keys {list(REWARD_KEYS)}")
        missing = [key for key in REWARD_KEYS if key not in rewards]
        if missing:
            raise ValueError(f"reward function {self.name!r} returned a dict without the keys {missing} "
                             f"(it has {sorted(rewards)}; every reward function returns {list(REWARD_KEYS)})")
        return rewards


def resolve_reward_fn(spec: str | dict[str, float]) -> RewardFn:
    """A config's `reward_fn`: a name or import path (`get_reward_fn`), or a {name: weight} dict
    (`combine_reward_fns`)."""
    return get_reward_fn(spec) if isinstance(spec, str) else combine_reward_fns(dict(spec))


def combine_reward_fns(weights: dict[str, float]) -> RewardFn:
    """A reward function whose three rewards are the weighted sums of the named functions' rewards,
    with each component's reward also reported as `"<name>/reward"` for logging.

    >>> fn = combine_reward_fns({"r1_zero": 1.0, "question_only": 0.5})
    """
    if not weights:
        raise ValueError("combine_reward_fns needs at least one reward function")
    components = {name: get_reward_fn(name) for name in weights}

    def combined_reward_fn(response: str, ground_truth: GroundTruth) -> dict[str, float]:
        totals = dict.fromkeys(REWARD_KEYS, 0.0)
        for name, fn in components.items():
            rewards = fn(response, ground_truth)
            for key in REWARD_KEYS:
                totals[key] += weights[name] * rewards[key]
            totals[f"{name}/reward"] = rewards["reward"]
        return totals

    return combined_reward_fn
