"""The SFT files built from worked solutions: the transformation on hand-written rows, errors that
name file:line, and the shipped `data/math/sft.jsonl` and `data/gsm8k/sft_chat.jsonl`: every row graded
correct, prompts those of the problem sets GRPO trains on, and a rebuild reproduces them byte for byte
(for the GSM8K file, tests/test_recipes.py rebuilds it with the command its config documents)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from r1_lightning.data import SFTDataModule, load_template, render_prompt
from r1_lightning.data.build_sft import build, gsm8k_reasoning, main, unbox
from r1_lightning.rewards import get_reward_fn, r1_zero_reward_fn
from r1_lightning.rewards.grader import grade

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
PRM800K_TRAIN = ROOT / ".." / "shared" / "data" / "math" / "prm800k" / "train.jsonl"
MATH_BUILD_OPTIONS = ["--id-prefix", "train/", "--exclude", str(DATA / "math" / "validation.jsonl")]
ALL_REWARDS = {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}


def write_jsonl(path: Path, lines: list[dict | str]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def read_rows(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- the transformation
@pytest.mark.parametrize("text, expected", [
    ("so $5x + 3 = \\boxed{18}$.", "so $5x + 3 = 18$."),
    ("is $\\boxed{\\frac{3\\sqrt{13}}{13}}$.", "is $\\frac{3\\sqrt{13}}{13}$."),  # nested braces
    ("$\\boxed{\\{1, 2\\}}$", "$\\{1, 2\\}$"),  # escaped braces are not grouping
    ("first $\\boxed{10}$. OR: $\\boxed{10}$.", "first $10$. OR: $10$."),  # every box goes
    ("$\\boxed{\\boxed{7}}$", "$7$"),
    ("$= \\boxed {17}.$$", "$= 17.$$"),  # TeX allows a space before the brace
    ("\\fbox{A} wins", "A wins"),
    ("no box at all", "no box at all"),
])
def test_unbox(text, expected):
    assert unbox(text) == expected


@pytest.mark.parametrize("text", ["our answer is $\\boxed 2$.", "$\\boxed{\\frac{1}{2}$", "\\boxed"])
def test_unbox_rejects_a_box_without_a_closed_brace_argument(text):
    with pytest.raises(ValueError, match=r"\\boxed at character \d+ has no \{\.\.\.\} argument"):
        unbox(text)


def test_gsm8k_reasoning_drops_the_calculator_annotations_and_the_answer_line():
    solution = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
    assert gsm8k_reasoning(solution) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.")


def test_built_rows_on_hand_written_sources(tmp_path, capsys):
    template = tmp_path / "qa.prompt"
    template.write_text("Q: {question}\nA: <think>\n")
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "How many?", "answer": "He has 600*2 = <<600*2=1200>>1,200 apples.\n#### 1,200"},
    ])
    math = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Half?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
         "unique_id": "train/algebra/1.json"},
        {"problem": "Test split", "solution": "$\\boxed{1}$", "answer": "1", "unique_id": "test/a/1.json"},
        {"problem": "  Held out?\n", "solution": "$\\boxed{2}$", "answer": "2", "unique_id": "train/a/2"},
        {"problem": "No braces", "solution": "$\\boxed 3$", "answer": None, "unique_id": "train/a/3.json"},
        {"problem": "Empty", "solution": "$\\boxed{}$", "answer": "", "unique_id": "train/a/4.json"},
    ])
    held_out = write_jsonl(tmp_path / "val.jsonl", [{"problem": "Held out?", "answer": "2"}])

    assert build(["gsm8k", gsm8k, tmp_path / "g.jsonl", "--template", template]) == 1
    assert read_rows(tmp_path / "g.jsonl") == [{
        "prompt": "Q: How many?\nA: <think>",
        "response": " He has 600*2 = 1,200 apples. </think> <answer> 1200 </answer>",
        "ground_truth": "1200",
    }]
    assert build(["math", math, tmp_path / "m.jsonl", "--template", template,
                  "--id-prefix", "train/", "--exclude", held_out]) == 1
    assert read_rows(tmp_path / "m.jsonl") == [{
        "prompt": "Q: Half?\nA: <think>",
        "response": " It is $\\frac{1}{2}$. </think> <answer> \\frac{1}{2} </answer>",
        "ground_truth": "\\frac{1}{2}",
    }]
    report = capsys.readouterr().err
    for skipped in ("1 (unique_id not starting with 'train/')", "1 (problem in an --exclude file)",
                    "1 (null answer)", "1 (empty answer)"):
        assert f"skipped {skipped}" in report


@pytest.mark.parametrize("dataset, lines, message", [
    ("gsm8k", [{"question": "q", "answer": "1+1=2\n#### 2"}, "{not json"], "gsm8k.jsonl:2: invalid JSON"),
    ("gsm8k", [{"question": "q", "answer": "1+1=2\n#### 2"}, {"question": "q", "answer": "2"}],
     "gsm8k.jsonl:2: field 'answer' does not end with a '#### <number>' line"),
    ("gsm8k", [{"question": "q", "answer": "#### 2"}], "gsm8k.jsonl:1: field 'answer' has no worked lines"),
    ("math", [{"problem": "p", "answer": "2"}], "math.jsonl:1: missing field 'solution'"),
    ("math", [{"problem": "p", "solution": "s", "answer": "1"}, {"problem": "p", "solution": "$\\boxed{2$",
                                                                  "answer": "2"}],
     "math.jsonl:2: field 'solution': \\boxed at character 1 has no {...} argument or is never closed"),
])
def test_a_malformed_row_is_one_line_naming_file_and_line(tmp_path, capsys, dataset, lines, message):
    source = write_jsonl(tmp_path / f"{dataset}.jsonl", lines)
    with pytest.raises(SystemExit) as exit_info:
        main([dataset, source, str(tmp_path / "out.jsonl")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"error: {source.removesuffix(f'{dataset}.jsonl')}{message}" in error
    assert not (tmp_path / "out.jsonl").exists()


# ----------------------------------------------------------------------------- the shipped files
@pytest.fixture(scope="module")
def shipped() -> dict[str, list[dict]]:
    return {"math": read_rows(DATA / "math" / "sft.jsonl"), "gsm8k": read_rows(DATA / "gsm8k" / "sft_chat.jsonl")}


@pytest.mark.parametrize("name", ["math", "gsm8k"])
def test_every_shipped_row_is_graded_correct_and_well_formatted(shipped, name):
    rewards = [r1_zero_reward_fn] + ([get_reward_fn("gsm8k")] if name == "gsm8k" else [])
    for line, row in enumerate(shipped[name], start=1):
        assert set(row) == {"prompt", "response", "ground_truth"}, line
        assert row["prompt"].endswith("<think>") and row["response"].startswith(" "), line
        assert row["response"].endswith(f" </think> <answer> {row['ground_truth']} </answer>"), line
        for reward_fn in rewards:
            assert reward_fn(row["response"], row["ground_truth"]) == ALL_REWARDS, (line, reward_fn.__name__)


def test_shipped_math_rows_are_the_grpo_train_problems_with_their_answers(shipped):
    template = load_template("r1_zero")
    answers = {render_prompt(template, row["problem"].strip()): row["answer"]
               for row in read_rows(DATA / "math" / "train.jsonl")}
    validation = read_rows(DATA / "math" / "validation.jsonl")
    held_out = {render_prompt(template, row["problem"].strip()) for row in validation}
    prompts = [row["prompt"] for row in shipped["math"]]
    assert len(set(prompts)) == len(prompts) == 7500 - 1 - 4  # minus the validation duplicate, 4 unanswered
    assert not held_out & set(prompts)
    for row in shipped["math"]:
        assert grade(row["ground_truth"], answers[row["prompt"]]), row["prompt"][-200:]


def test_shipped_gsm8k_rows_are_the_train_questions_with_their_answers(shipped):
    template = load_template(ROOT / "configs" / "gsm8k" / "r1_zero_chat.prompt")
    sources = read_rows(DATA / "gsm8k" / "train.jsonl")
    prompts = [render_prompt(template, source["question"]) for source in sources]
    assert [row["prompt"] for row in shipped["gsm8k"]] == prompts
    assert [row["ground_truth"] for row in shipped["gsm8k"]] == [
        s["answer"].split("\n#### ")[-1].replace(",", "") for s in sources]
    assert not any("<<" in row["response"] for row in shipped["gsm8k"])


@pytest.mark.skipif(not PRM800K_TRAIN.is_file(), reason="needs ../shared/data/math/prm800k/train.jsonl")
def test_rebuilding_math_reproduces_the_shipped_file(tmp_path):
    build(["math", PRM800K_TRAIN, tmp_path / "sft.jsonl", *MATH_BUILD_OPTIONS])
    assert (tmp_path / "sft.jsonl").read_bytes() == (DATA / "math" / "sft.jsonl").read_bytes()


def test_the_sft_config_trains_on_every_shipped_math_row(monkeypatch):
    """configs/sft.yaml's data section as the CLI would build it (paths relative to the clone's root):
    `filter_correct: true` with the r1_zero reward keeps all of the shipped rows."""
    monkeypatch.chdir(ROOT)
    data = yaml.safe_load((ROOT / "configs" / "sft.yaml").read_text())["data"]
    assert data["class_path"] == "r1_lightning.data.SFTDataModule"
    assert data["init_args"]["train_path"] == "data/math/sft.jsonl" and data["init_args"]["filter_correct"]
    assert len(SFTDataModule(**data["init_args"]).train_examples()) == 7495
