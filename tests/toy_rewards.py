"""A dense toy reward for CPU learning tests: a random tiny model gets non-zero, varied rewards
from its first rollout, so GRPO has a signal without any warm-up."""


def digit_fraction_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Reward = fraction of the response's characters that are digits (verifiable, in [0, 1])."""
    fraction = sum(c.isdigit() for c in response) / len(response) if response else 0.0
    return {"format_reward": 1.0, "answer_reward": fraction, "reward": fraction}


def exact_answer_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Reward 1 when the response, stripped, is the ground truth; else 0."""
    correct = float(response.strip() == ground_truth)
    return {"format_reward": 1.0, "answer_reward": correct, "reward": correct}


def answer_tag_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Reward 1 when the text of the response's `<answer>` block, stripped, is the ground truth; else 0."""
    start, end = response.rfind("<answer>"), response.rfind("</answer>")
    correct = float(0 <= start < end and response[start + len("<answer>"):end].strip() == ground_truth)
    return {"format_reward": float(start >= 0), "answer_reward": correct, "reward": correct}
