"""pass@k / maj@k / mean@k against closed-form values."""

from itertools import combinations
from math import comb

import pytest

from r1_lightning.sample_metrics import k_sample_summary, majority_vote_correct, pass_at_k, vote_key


@pytest.mark.parametrize(("n", "c", "k"), [(10, 3, 1), (10, 3, 5), (10, 3, 8), (16, 0, 4), (16, 16, 4), (5, 1, 5)])
def test_pass_at_k_is_one_minus_the_chance_that_k_draws_miss(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample():
    correct = [1, 0, 0, 1, 0, 0]
    subsets = list(combinations(correct, 3))
    assert pass_at_k(6, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))  # 16/20
    assert pass_at_k(6, 2, 1) == pytest.approx(2 / 6)


def test_pass_at_k_refuses_k_beyond_n():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote_ties_go_to_the_answer_seen_first_and_none_does_not_vote():
    assert majority_vote_correct(["5", "7", "7", "5"], [True, False, False, True]) is True  # 2-2: "5" first
    assert majority_vote_correct([None, None, "7"], [True, True, False]) is False  # only "7" votes
    assert majority_vote_correct(["7", "5", "5"], [False, True, True]) is True
    assert majority_vote_correct([None, None], [False, False]) is False


def test_vote_key_reads_the_final_answer_canonically():
    assert vote_key("x </think> <answer> \\boxed{\\frac12} </answer>") == vote_key("<answer>\\frac{1}{2}</answer>")
    assert vote_key("so \\boxed{3}") == "3"
    assert vote_key("no final answer") is None


def _records(problem, level, answers, correct):
    return [{"prompt": problem, "response": f"<answer> {a} </answer>", "answer_reward": float(ok),
             "sample": i, "level": level} for i, (a, ok) in enumerate(zip(answers, correct))]


def test_k_sample_summary_averages_over_problems_and_levels():
    records = (_records("p1", "Level 1", ["4", "4", "5", "4"], [1, 1, 0, 1])
               + _records("p2", "Level 5", ["2", "3", "3", "1"], [1, 0, 0, 0]))
    summary = k_sample_summary(records, ks=[1, 4])
    # p1: c=3 of 4; p2: c=1 of 4 (majority "3" is wrong)
    assert summary["pass@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert summary["pass@4"] == pytest.approx(1.0)
    assert summary["maj@4"] == pytest.approx(0.5)
    assert summary["mean@1"] == pytest.approx(1.0)  # both first samples correct
    assert summary["k_sample_by_level"]["Level 5"]["maj@4"] == 0.0
    assert summary["k_sample_by_level"]["Level 1"]["pass@1"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least 8 samples"):
        k_sample_summary(records, ks=[8])


class TaggedScriptedEngine:
    """Answers `What is a + b?` right in the first min(a % 5, n) of its n samples, `<answer> wrong </answer>` after."""

    shares_policy_weights = True

    def attach(self, policy, tokenizer, ranks=None):
        pass

    def generate(self, prompts, sampling):
        import re

        from r1_lightning.rollout import Completion

        out = []
        for i, prompt in enumerate(prompts):
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt).groups())
            for j in range(sampling.n):
                text = f" </think> <answer> {a + b if j < a % 5 else 'wrong'} </answer>"
                out.append(Completion(i, [1], [1], text, "stop"))
        return out

    def load_weights(self, named_tensors):
        pass


def test_validate_with_several_samples_reports_pass_maj_and_mean_at_k(tiny_model_dir, toy_task_dir, tmp_path):
    import json
    import re

    from test_modules import tiny_trainer

    from r1_lightning.data import PromptDataModule
    from r1_lightning.modules import RolloutModule

    n = 4
    module = RolloutModule(tiny_model_dir, engine=TaggedScriptedEngine(), reward_fn="toy_rewards.answer_tag_reward",
                           eval_samples=n, eval_temperature=1.0, eval_output_dir=str(tmp_path / "eval"))
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), val_path=str(toy_task_dir / "val.jsonl"))
    tiny_trainer(tmp_path, limit_val_batches=None).validate(module, datamodule=data)
    (summary_path,) = (tmp_path / "eval").glob("*_summary.json")
    summary = json.loads(summary_path.read_text())
    problems = [json.loads(line)["problem"] for line in (toy_task_dir / "val.jsonl").read_text().splitlines()]
    correct = [min(int(re.search(r"What is (\d+)", p).group(1)) % 5, n) for p in problems]
    assert summary["samples_per_problem"] == n and summary["problems"] == len(problems)
    for k in (1, 2, 4):
        expected = sum(1 - comb(n - c, k) / comb(n, k) for c in correct) / len(problems)
        assert summary[f"pass@{k}"] == pytest.approx(expected)
    # 2 right and 2 wrong is a tie, won by the answer given first: the right one (sample 0)
    assert summary["maj@4"] == pytest.approx(sum(c >= 2 for c in correct) / len(problems))
    assert summary["mean@4"] == pytest.approx(sum(correct) / (n * len(problems)))
    assert summary["answer_accuracy"] == pytest.approx(summary["mean@4"])


def test_several_samples_need_a_sampling_temperature(tiny_model_dir):
    from r1_lightning.modules import RolloutModule

    with pytest.raises(ValueError, match="eval_samples 8 needs eval_temperature > 0"):
        RolloutModule(tiny_model_dir, eval_samples=8, eval_temperature=0.0)
