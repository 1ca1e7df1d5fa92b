"""What papers report from several samples per problem: pass@k, maj@k and mean@k.

With n samples per problem (c of them correct), for any k <= n:
- pass@k: the probability that at least one of k samples drawn without replacement from the n is
  correct, by the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained
  on Code", eq. 1): 1 - C(n-c, k) / C(n, k). It uses all n samples, so it varies less than
  "is one of the first k correct".
- maj@k: majority vote over the final answers of the first k samples (samples are i.i.d., so the
  first k are a random k-subset). Answers vote by their canonical string (`vote_key`: the final
  answer block or box, normalized as the grader does); a sample without a final answer does not
  vote. Ties go to the answer reached first among the k samples. The problem counts as solved when
  the winning answer's first sample was graded correct. No answer at all: not solved.
- mean@k: the mean accuracy of the first k samples (mean@n is the plain sample accuracy).
Each is averaged over problems, overall and by MATH level and subject where the records carry them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from r1_lightning.rewards.extract import extract_answer_tag, extract_boxed_answer, unwrap_boxed
from r1_lightning.rewards.normalize import normalize_answer


def k_values(n: int) -> list[int]:
    """The k reported for n samples per problem: the powers of two below n, and n (16 -> 1, 2, 4, 8, 16)."""
    return [2**i for i in range(n.bit_length()) if 2**i < n] + [n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), as the stable product 1 - Π_{i=n-c+1..n} (1 - k/i)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def vote_key(response: str) -> str | None:
    """The canonical final answer a response votes with: its last `<answer>` block (or the box in
    it), else its last `\\boxed{}`; None when it has neither."""
    answer = extract_answer_tag(response)
    answer = unwrap_boxed(answer) if answer is not None else extract_boxed_answer(response)
    if answer is None or not answer.strip():
        return None
    return normalize_answer(answer)


def majority_vote_correct(keys: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer of `keys` (None does not vote; ties: the answer seen first) is correct,
    judged by the grade of its first sample."""
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            first_seen.setdefault(key, i)
    if not counts:
        return False
    winner = max(counts, key=lambda key: (counts[key], -first_seen[key]))
    return bool(correct[first_seen[winner]])


def problem_metrics(keys: Sequence[str | None], correct: Sequence[bool], ks: Iterable[int]) -> dict[str, float]:
    """pass@k, maj@k and mean@k of one problem's samples (in sampling order) for each k in `ks`."""
    n, c = len(correct), sum(map(bool, correct))
    metrics = {}
    for k in ks:
        metrics[f"pass@{k}"] = pass_at_k(n, c, k)
        metrics[f"maj@{k}"] = float(majority_vote_correct(keys[:k], correct[:k]))
        metrics[f"mean@{k}"] = sum(map(bool, correct[:k])) / k
    return metrics


def k_sample_summary(records: Sequence[dict], ks: Sequence[int]) -> dict:
    """pass@k / maj@k / mean@k averaged over problems, overall and `..._by_level` / `..._by_subject`.

    `records` are evaluation records (`evaluation.grade_completions`): one per sample, with
    "prompt", "response", "answer_reward" (1 = correct), "sample" (its index among the problem's
    samples) and optionally "level" and "subject". Every problem must have at least max(ks) samples.
    """
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_problem[record["prompt"]].append(record)
    per_problem = []
    for samples in by_problem.values():
        samples = sorted(samples, key=lambda r: r.get("sample", 0))
        if len(samples) < max(ks):
            raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem, got {len(samples)}")
        keys = [vote_key(r["response"]) for r in samples]
        correct = [r["answer_reward"] >= 1.0 for r in samples]
        per_problem.append((samples[0], problem_metrics(keys, correct, ks)))
    summary: dict = {"problems": len(per_problem), **_mean_metrics(m for _, m in per_problem)}
    for field in ("level", "subject"):
        groups: dict[str, list[dict[str, float]]] = defaultdict(list)
        for first, metrics in per_problem:
            if field in first:
                groups[str(first[field])].append(metrics)
        if groups:
            summary[f"k_sample_by_{field}"] = {name: _mean_metrics(group) for name, group in sorted(groups.items())}
    return summary


def _mean_metrics(metrics: Iterable[dict[str, float]]) -> dict[str, float]:
    metrics = list(metrics)
    return {name: sum(m[name] for m in metrics) / len(metrics) for name in metrics[0]} if metrics else {}
