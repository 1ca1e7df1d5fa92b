"""Difficulty estimation (pass rates per problem), resumable, and the data options that use them."""

from __future__ import annotations

import json
import re

import pytest
from test_cli import ROOT
from test_modules import tiny_trainer

from r1_lightning.__main__ import main as command
from r1_lightning.data import PromptDataModule
from r1_lightning.data.readers import DataFormatError
from r1_lightning.modules import PassRateModule
from r1_lightning.rollout import Completion

N = 4


class ScriptedEngine:
    """Answers `What is a + b?` right in the first `a % 5` of its n samples (capped at n), wrong after."""

    shares_policy_weights = True

    def __init__(self, fail_on_call: int | None = None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def attach(self, policy, tokenizer, ranks=None):
        pass

    def generate(self, prompts, sampling):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        out = []
        for i, prompt in enumerate(prompts):
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt).groups())
            for j in range(sampling.n):
                text = str(a + b) if j < a % 5 else "wrong"
                out.append(Completion(i, [1], [1], text, "stop"))
        return out

    def load_weights(self, named_tensors):
        pass


def expected_pass_rate(problem: str) -> float:
    a = int(re.search(r"What is (\d+)", problem).group(1))
    return min(a % 5, N) / N


def estimate(model_dir, task_dir, tmp_path, engine, out):
    module = PassRateModule(model_dir, engine=engine, samples_per_problem=N, output_path=str(out),
                            reward_fn="toy_rewards.exact_answer_reward")
    data = PromptDataModule(str(task_dir / "train.jsonl"), batch_size=16)
    tiny_trainer(tmp_path).predict(module, datamodule=data, return_predictions=False)


def test_pass_rates_are_the_share_of_correct_samples_in_file_order(tiny_model_dir, toy_task_dir, tmp_path):
    out = tmp_path / "pass_rates.jsonl"
    estimate(tiny_model_dir, toy_task_dir, tmp_path, ScriptedEngine(), out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    problems = [json.loads(line) for line in (toy_task_dir / "train.jsonl").read_text().splitlines()]
    assert [row["problem"] for row in rows] == [p["problem"] for p in problems]
    for row, problem in zip(rows, problems):
        assert row["answer"] == problem["answer"] and row["samples"] == N
        assert row["pass_rate"] == expected_pass_rate(row["problem"]) == row["correct"] / N
    assert {row["pass_rate"] for row in rows} == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_a_stopped_estimation_continues_and_writes_what_the_straight_run_writes(tiny_model_dir, toy_task_dir, tmp_path):
    straight = tmp_path / "straight.jsonl"
    estimate(tiny_model_dir, toy_task_dir, tmp_path, ScriptedEngine(), straight)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        estimate(tiny_model_dir, toy_task_dir, tmp_path, ScriptedEngine(fail_on_call=3), out)
    assert len(out.read_text().splitlines()) == 32  # two batches of 16
    with open(out, "a") as f:
        f.write('{"problem": "cut off by a cra')  # a crash in the middle of a write
    engine = ScriptedEngine()
    estimate(tiny_model_dir, toy_task_dir, tmp_path, engine, out)
    assert engine.calls == 3  # only the batches without rows: 80 problems in 5 batches, 2 done
    assert out.read_text() == straight.read_text()


def annotated(tmp_path, rates):
    path = tmp_path / "annotated.jsonl"
    path.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1), "pass_rate": rate}) + "\n"
                            for i, rate in enumerate(rates)))
    return path


def test_a_pass_rate_band_keeps_the_problems_inside_it(tmp_path):
    path = annotated(tmp_path, [0.0, 0.25, 1.0, 0.5, 0.0, 1.0, 0.75])
    data = PromptDataModule(str(path), batch_size=1, min_pass_rate=0.01, max_pass_rate=0.99)
    assert [e.question for e in data.train_examples()] == ["What is 1 + 1?", "What is 3 + 1?", "What is 6 + 1?"]
    only_unsolved = PromptDataModule(str(path), batch_size=1, max_pass_rate=0.0)
    assert [e.pass_rate for e in only_unsolved.train_examples()] == [0.0, 0.0]


def test_curriculum_visits_the_easiest_first_and_breaks_ties_by_the_seed(tmp_path):
    rates = [0.5, 1.0, 0.25, 1.0, 0.5, 0.0, 1.0, 0.5]
    path = annotated(tmp_path, rates)
    orders = {}
    for seed in (0, 1):
        data = PromptDataModule(str(path), batch_size=2, curriculum=True, seed=seed, shuffle=True)
        batches = list(data.train_dataloader())
        orders[seed] = [q for batch in batches for q in batch["question"]]
        assert [rates[int(q.split()[2])] for q in orders[seed]] == sorted(rates, reverse=True)
    assert orders[0] != orders[1]  # equal rates come in the seed's shuffled order
    again = PromptDataModule(str(path), batch_size=2, curriculum=True, seed=0)
    assert [q for b in again.train_dataloader() for q in b["question"]] == orders[0]


def test_filtering_an_unannotated_file_names_the_option_and_the_fix(toy_task_dir):
    data = PromptDataModule(str(toy_task_dir / "train.jsonl"), batch_size=1, min_pass_rate=0.1)
    with pytest.raises(ValueError, match=r"min_pass_rate .* have no 'pass_rate'.*r1-lightning predict"):
        data.train_examples()


@pytest.mark.parametrize(("options", "message"), [
    ({"min_pass_rate": 0.8, "max_pass_rate": 0.2}, "min_pass_rate <= max_pass_rate"),
    ({"max_pass_rate": 1.5}, "max_pass_rate <= 1"),
])
def test_a_bad_band_is_refused(toy_task_dir, options, message):
    with pytest.raises(ValueError, match=message):
        PromptDataModule(str(toy_task_dir / "train.jsonl"), **options)


def test_a_bad_pass_rate_names_the_file_and_line(tmp_path):
    path = annotated(tmp_path, [0.5, 2.0])
    with pytest.raises(DataFormatError, match=r"annotated.jsonl:2: field 'pass_rate' must be a number in \[0, 1\]"):
        PromptDataModule(str(path), batch_size=1, min_pass_rate=0.1).train_examples()


def test_difficulty_config_runs_on_the_cpu_with_the_hf_engine(tiny_model_dir, toy_task_dir, tmp_path):
    out = tmp_path / "run"
    command(["predict", "--config", ROOT / "configs/difficulty.yaml",
             "--model.init_args.model_name_or_path", tiny_model_dir,
             "--model.init_args.engine", "r1_lightning.rollout.HFEngine",
             "--model.init_args.reward_fn", "toy_rewards.digit_fraction_reward",
             "--model.init_args.sampling_max_tokens", 4, "--model.init_args.samples_per_problem", 2,
             "--model.init_args.dtype", "float32",
             "--data.init_args.train_path", toy_task_dir / "train.jsonl", "--data.init_args.max_examples", 6,
             "--data.init_args.batch_size", 4, "--trainer.accelerator", "cpu", "--trainer.default_root_dir", out,
             "--trainer.enable_progress_bar", "false"])  # the package command, as `r1-lightning predict`
    rows = [json.loads(line) for line in (out / "pass_rates.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(row["samples"] == 2 and 0 <= row["pass_rate"] <= 1 for row in rows)
