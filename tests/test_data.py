"""Tests for r1_lightning.data: templates, jsonl readers, the resumable loader and the datamodules."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import ModelCheckpoint

from r1_lightning.data import (
    DataFormatError,
    PromptDataModule,
    PromptExample,
    ResumableDataLoader,
    SFTDataModule,
    SFTExample,
    load_gsm8k,
    load_math,
    load_prompt_dataset,
    load_sft,
    load_template,
    read_jsonl,
    render_prompt,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
REPO_DATA = Path(__file__).resolve().parents[1] / "data"  # shipped with the repository
MATH_TRAIN = REPO_DATA / "math" / "train.jsonl"
MATH_VAL = REPO_DATA / "math" / "validation.jsonl"
GSM8K_TEST = REPO_DATA / "gsm8k" / "test.jsonl"
# The CS336 SFT file is not ours to ship: the tests that read it need the development machine's copy.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MATH_SFT = SHARED_DATA / "math" / "sft.jsonl"

needs_shared_data = pytest.mark.skipif(not MATH_SFT.is_file(), reason=f"needs the CS336 SFT file at {MATH_SFT}")

# Typed out from the CS336 assignment's r1_zero.prompt, not read from the package.
R1_ZERO_PREAMBLE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the "
    "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)


def first_json_lines(path: Path, count: int) -> list[dict]:
    """The first `count` records of a jsonl file, read without the package."""
    with path.open() as file:
        return [json.loads(next(file)) for _ in range(count)]


def write_lines(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- templates


def test_r1_zero_template_renders_the_cs336_prompt():
    rendered = render_prompt(load_template("r1_zero"), "What is $1+1$?")
    assert rendered == R1_ZERO_PREAMBLE + "\nUser: What is $1+1$?\nAssistant: <think>"


@needs_shared_data
def test_sft_jsonl_prompts_are_r1_zero_with_a_blank_line_before_user():
    # sft.jsonl line 1 holds MATH train problem 1 (the Chandra bowls question). Its prompt has the
    # preamble, then "\n\nUser:" -- one more newline than the CS336 r1_zero.prompt we ship.
    question = first_json_lines(MATH_TRAIN, 1)[0]["problem"]
    sft_prompt = first_json_lines(MATH_SFT, 1)[0]["prompt"]
    rendered = render_prompt(load_template("r1_zero"), question)
    assert sft_prompt == R1_ZERO_PREAMBLE + "\n\nUser: " + question + "\nAssistant: <think>"
    assert sft_prompt == rendered.replace("</answer>.\nUser: ", "</answer>.\n\nUser: ", 1)


def test_render_keeps_braces_in_the_question():
    question = r"Compute $\frac{1}{2} + \{x\}$ where {0} and {} and {question} appear."
    assert render_prompt("Q: {question}!", question) == "Q: " + question + "!"
    assert render_prompt(load_template("question_only"), question) == question


def test_load_template_from_file_strips_one_trailing_newline(tmp_path):
    path = tmp_path / "mine.prompt"
    path.write_text("Problem: {question}\nSolution:\n")
    template = load_template(path)
    assert template == "Problem: {question}\nSolution:"
    assert render_prompt(template, "2+2?") == "Problem: 2+2?\nSolution:"


def test_load_template_errors(tmp_path):
    no_placeholder = tmp_path / "bad.prompt"
    no_placeholder.write_text("Answer this: {problem}")
    with pytest.raises(ValueError, match=r"bad\.prompt.*\{question\}"):
        load_template(no_placeholder)
    with pytest.raises(FileNotFoundError, match="r1_zer0"):
        load_template("r1_zer0")
    with pytest.raises(ValueError, match=r"\{question\}"):
        render_prompt("no placeholder", "q")


# ---------------------------------------------------------------- read_jsonl


def test_invalid_json_names_file_and_line():
    path = FIXTURES / "math_malformed_line3.jsonl"
    with pytest.raises(DataFormatError, match=r"math_malformed_line3\.jsonl:3: invalid JSON") as info:
        list(read_jsonl(path))
    assert isinstance(info.value, ValueError) and info.value.line == 3
    with pytest.raises(DataFormatError, match=r":3: "):
        load_math(path)


def test_read_jsonl_skips_blank_lines_but_counts_them(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"a": 1}\n   \n{"a": 2}\n\n')
    assert list(read_jsonl(path)) == [(2, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_file_without_records_is_an_error(tmp_path, content):
    path = tmp_path / "nothing.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=r"nothing\.jsonl: empty file"):
        list(read_jsonl(path))
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: empty file"):
        load_sft(FIXTURES / "empty.jsonl")


def test_read_jsonl_rejects_non_objects_and_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match=r"data\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(write_lines(tmp_path, ['{"a": 1}', "[1, 2]"])))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------- MATH / GSM8K / SFT readers


def test_missing_field_names_file_line_and_field():
    with pytest.raises(DataFormatError, match=r"math_missing_answer\.jsonl:2: missing field 'answer'"):
        load_math(FIXTURES / "math_missing_answer.jsonl")


@pytest.mark.parametrize(
    "reader, bad_line, message",
    [
        (load_math, '{"answer": "2"}', "missing field 'problem'"),
        (load_math, '{"problem": "p", "answer": ["2"]}', "field 'answer' must be a string"),
        (load_math, '{"problem": "p", "solution": "no box here"}', r"no complete \\boxed"),
        (load_gsm8k, '{"question": "q"}', "missing field 'answer'"),
        (load_gsm8k, '{"question": "q", "answer": "so 4\\n#### "}', "nothing after '####'"),
        (load_sft, '{"prompt": "p"}', "missing field 'response'"),
        (load_sft, '{"prompt": "p", "response": null}', "field 'response' is null"),
        (load_sft, '{"text": "p"}', "needs 'prompt' and 'response'"),
        (load_sft, '{"messages": []}', "non-empty list"),
        (
            load_sft,
            json.dumps({"messages": [{"role": role, "content": "x"} for role in ["user", "assistant"] * 2]}),
            "got roles",
        ),
    ],
)
def test_bad_records_name_their_line(tmp_path, reader, bad_line, message):
    good = {
        load_math: '{"problem": "p", "answer": "1"}',
        load_gsm8k: '{"question": "q", "answer": "#### 1"}',
        load_sft: '{"prompt": "p", "response": "r"}',
    }[reader]
    path = write_lines(tmp_path, [good, "", bad_line])
    with pytest.raises(DataFormatError, match=r"data\.jsonl:3: .*" + message):
        reader(path)


def test_math_answers_from_last_boxed_in_solution():
    examples = load_math(FIXTURES / "math_solutions.jsonl")
    assert [example.ground_truth for example in examples] == [r"\frac{\sqrt{3}}{2}", "2", "9", "8"]
    assert examples[0] == PromptExample(
        question=r"Find $\sin 60^\circ$.",
        ground_truth=r"\frac{\sqrt{3}}{2}",
        level=2,
        subject="Precalculus",
        unique_id="test/precalculus/1.json",
    )
    assert [example.level for example in examples] == [2, 3, "Level ?", None]
    assert examples[1].subject == "Algebra" and examples[1].unique_id is None


def test_empty_math_answer_is_skipped_with_a_warning(tmp_path):
    path = write_lines(
        tmp_path,
        [
            '{"problem": "p1", "answer": "1"}',
            '{"problem": "p2", "solution": "$\\\\boxed{}$"}',
            '{"problem": "p3", "answer": "  "}',
        ],
    )
    with pytest.warns(UserWarning, match=r"skipped 2 problem\(s\) with an empty answer, at lines \[2, 3\]"):
        examples = load_math(path)
    assert [example.question for example in examples] == ["p1"]


def test_gsm8k_answer_after_hashes_without_commas():
    examples = load_gsm8k(FIXTURES / "gsm8k_small.jsonl")
    assert [example.ground_truth for example in examples] == ["1200", "2"]
    assert examples[1] == PromptExample(
        question="Tom has 3 apples and eats 1. How many are left?", ground_truth="2"
    )


def test_gsm8k_without_hashes_names_the_line():
    with pytest.raises(DataFormatError, match=r"gsm8k_missing_hashes\.jsonl:2: .*'#### <number>'"):
        load_gsm8k(FIXTURES / "gsm8k_missing_hashes.jsonl")


def test_sft_messages_format():
    examples = load_sft(FIXTURES / "sft_messages.jsonl")
    assert examples == [
        SFTExample(prompt="What is 1+1?", response="1+1=2 </think> <answer> 2 </answer>", ground_truth="2"),
        SFTExample(prompt="Think step by step.\nWhat is 2+2?", response="4", ground_truth=None),
    ]


def test_sft_unknown_role_names_the_line_and_role():
    with pytest.raises(DataFormatError, match=r"sft_bad_role\.jsonl:2: messages\[1\] has role 'tool'"):
        load_sft(FIXTURES / "sft_bad_role.jsonl")


def test_load_prompt_dataset_auto_detects_by_fields(tmp_path):
    assert load_prompt_dataset(FIXTURES / "gsm8k_small.jsonl")[0].ground_truth == "1200"
    assert load_prompt_dataset(FIXTURES / "math_solutions.jsonl")[2].ground_truth == "9"
    with pytest.raises(DataFormatError, match=r"data\.jsonl:1: cannot tell the dataset"):
        load_prompt_dataset(write_lines(tmp_path, ['{"prompt": "p", "response": "r"}']))
    with pytest.raises(ValueError, match="unknown dataset 'svamp'"):
        load_prompt_dataset(FIXTURES / "gsm8k_small.jsonl", dataset="svamp")


@needs_shared_data
def test_real_files_first_records():
    # Expected values read off the files' first lines by eye (see /work/shared/data).
    assert load_math(MATH_VAL)[0] == PromptExample(
        question="What is $10.0000198\\cdot 5.9999985401\\cdot 6.9999852$ to the nearest whole number?",
        ground_truth="420",
        level=3,
        subject="Prealgebra",
        unique_id="test/prealgebra/126.json",
    )
    assert load_gsm8k(GSM8K_TEST)[2].ground_truth == "70000"
    sft = load_sft(MATH_SFT)
    assert len(sft) == 1767
    assert sft[0].ground_truth == "16" and sft[0].response.endswith("</think> <answer> 16 </answer>")


# ---------------------------------------------------------------- ResumableDataLoader


def take(loader: ResumableDataLoader, num_batches: int) -> list:
    """Pull batches across epochs the way Lightning does with max_steps: one iter() per epoch."""
    batches = []
    while len(batches) < num_batches:
        for batch in loader:
            batches.append(batch)
            if len(batches) == num_batches:
                break
    return batches


def test_loader_order_is_randperm_of_seed_plus_epoch():
    loader = ResumableDataLoader(list(range(10)), batch_size=3, seed=7, drop_last=True)
    assert len(loader) == 3
    for epoch in range(2):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()[:9]
        assert [index for batch in loader for index in batch] == expected


def test_loader_length_last_batch_and_no_shuffle():
    loader = ResumableDataLoader(list("abcdefg"), batch_size=3, shuffle=False, collate_fn="".join)
    assert len(loader) == 3
    assert list(loader) == ["abc", "def", "g"]
    with pytest.raises(ValueError, match="no batch"):
        ResumableDataLoader([1, 2], batch_size=3, drop_last=True)


def test_loader_shards_between_replicas():
    shards = [
        list(ResumableDataLoader(list(range(9)), batch_size=2, seed=1, num_replicas=2, rank=rank))
        for rank in range(2)
    ]
    seen = [[index for batch in shard for index in batch] for shard in shards]
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])


def test_loader_state_dict_counts_batches_of_the_current_epoch():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, seed=0)  # 4 batches per epoch
    assert loader.state_dict() == {"epoch": 0, "batches_yielded": 0}
    take(loader, 5)
    assert loader.state_dict() == {"epoch": 1, "batches_yielded": 1}
    iterator = iter(loader)  # a new iter() without a loaded state starts the next epoch
    assert loader.state_dict() == {"epoch": 2, "batches_yielded": 0}
    next(iterator)
    assert loader.state_dict() == {"epoch": 2, "batches_yielded": 1}


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 5, 8, 11])
def test_loader_resumes_exactly_where_it_stopped(stop_after):
    def make_loader():
        return ResumableDataLoader(list(range(8)), batch_size=2, seed=3)  # 4 batches per epoch

    straight = take(make_loader(), 12)
    interrupted = make_loader()
    before = take(interrupted, stop_after)
    resumed = make_loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert before + take(resumed, 12 - stop_after) == straight


def test_loader_resumed_from_a_finished_epoch_starts_the_next_one():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, seed=3)
    loader.load_state_dict({"epoch": 0, "batches_yielded": 4})
    first_batch = next(iter(loader))
    assert loader.state_dict() == {"epoch": 1, "batches_yielded": 1}
    assert first_batch == torch.randperm(8, generator=torch.Generator().manual_seed(3 + 1)).tolist()[:2]


def test_loader_load_state_dict_checks_keys():
    with pytest.raises(KeyError, match="batches_yielded"):
        ResumableDataLoader([1], batch_size=1).load_state_dict({"epoch": 1})


class _RecordingModule(L.LightningModule):
    """Records each training batch; one parameter so Lightning has something to optimize."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches_seen: list = []

    def training_step(self, batch, batch_idx):
        self.batches_seen.append(list(batch))
        return (self.weight**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _ToyDataModule(L.LightningDataModule):
    def train_dataloader(self):
        return ResumableDataLoader(
            list(range(10)), batch_size=3, seed=5, drop_last=True
        )  # 3 batches per epoch


def _fit(
    root: Path, max_steps: int, ckpt_path: Path | None = None, checkpoint_every: int | None = None
) -> list:
    module = _RecordingModule()
    callbacks = (
        [
            ModelCheckpoint(
                dirpath=root, filename="{step}", every_n_train_steps=checkpoint_every, save_top_k=-1
            )
        ]
        if checkpoint_every
        else []
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=_ToyDataModule(), ckpt_path=ckpt_path)
    return module.batches_seen


def test_lightning_checkpoint_resume_sees_the_same_batches(tmp_path):
    straight = _fit(tmp_path, max_steps=7, checkpoint_every=1)
    assert len(straight) == 7
    for step in (2, 3, 4):  # mid-epoch, at the epoch boundary, just after it
        resumed = _fit(tmp_path / f"resume{step}", max_steps=7, ckpt_path=tmp_path / f"step={step}.ckpt")
        assert straight[:step] + resumed == straight, f"resumed from step {step}"


# ---------------------------------------------------------------- datamodules


@needs_shared_data
def test_sft_datamodule_batches_in_file_order_without_shuffle():
    datamodule = SFTDataModule(MATH_SFT, batch_size=2, max_examples=5, shuffle=False)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader, _Stateful)
    assert datamodule.train_dataloader() is loader
    batches = list(loader)
    records = first_json_lines(MATH_SFT, 5)
    assert [len(batch["prompt"]) for batch in batches] == [2, 2, 1]
    assert batches[1] == {
        field: [records[2][field], records[3][field]] for field in ("prompt", "response", "ground_truth")
    }


def test_sft_filter_correct_then_max_examples(monkeypatch):
    def stub_reward_fn(response, ground_truth):
        correct = float(response == f"good {ground_truth}")
        return {"format_reward": 1.0, "answer_reward": correct, "reward": correct}

    monkeypatch.setattr("r1_lightning.data.datamodules._get_reward_fn", lambda name: stub_reward_fn)
    datamodule = SFTDataModule(FIXTURES / "sft_small.jsonl", filter_correct=True, shuffle=False)
    assert [example.prompt for example in datamodule.train_examples()] == ["P1", "P3"]
    assert datamodule.filter_stats == {"total": 4, "kept": 2}
    limited = SFTDataModule(FIXTURES / "sft_small.jsonl", filter_correct=True, max_examples=1)
    assert [example.prompt for example in limited.train_examples()] == ["P1"]


def test_sft_filter_correct_needs_ground_truth(tmp_path, monkeypatch):
    monkeypatch.setattr("r1_lightning.data.datamodules._get_reward_fn", lambda name: pytest.fail("graded"))
    path = write_lines(
        tmp_path,
        ['{"prompt": "p", "response": "r", "ground_truth": "1"}', '{"prompt": "p", "response": "r"}'],
    )
    with pytest.raises(ValueError, match="1 of 2 examples .* no ground_truth"):
        SFTDataModule(path, filter_correct=True).train_examples()


def test_sft_filter_correct_with_the_real_reward_fn(tmp_path):
    rewards = pytest.importorskip("r1_lightning.rewards")
    if not hasattr(rewards, "get_reward_fn"):
        pytest.skip("r1_lightning.rewards.get_reward_fn is not there yet")
    lines = [
        {"prompt": "p", "response": " 4 * 4 = 16. </think> <answer> 16 </answer>", "ground_truth": "16"},
        {"prompt": "p", "response": " 4 * 3 = 12. </think> <answer> 12 </answer>", "ground_truth": "16"},
        {
            "prompt": "p",
            "response": " so <answer> 16 </answer>",
            "ground_truth": "16",
        },  # no "</think> <answer>"
    ]
    path = write_lines(tmp_path, [json.dumps(line) for line in lines])
    datamodule = SFTDataModule(path, filter_correct=True, reward_fn="r1_zero")
    assert [example.response for example in datamodule.train_examples()] == [lines[0]["response"]]


def test_prompt_datamodule_batches():
    datamodule = PromptDataModule(
        MATH_TRAIN, val_path=MATH_VAL, batch_size=4, max_examples=6, max_val_examples=5, val_batch_size=2
    )
    datamodule.setup("fit")
    assert datamodule.template == "r1_zero"  # the default; the prompts below are its text
    train_batches = list(datamodule.train_dataloader())
    assert [len(batch["prompt"]) for batch in train_batches] == [
        4
    ]  # 6 examples: the incomplete batch is dropped
    batch = train_batches[0]
    assert set(batch) == {"prompt", "question", "ground_truth", "level", "subject", "unique_id"}
    first_six = [record["problem"] for record in first_json_lines(MATH_TRAIN, 6)]
    assert set(batch["question"]) <= set(first_six)
    assert batch["prompt"][0] == R1_ZERO_PREAMBLE + f"\nUser: {batch['question'][0]}\nAssistant: <think>"

    val_batches = list(datamodule.val_dataloader())
    val_records = first_json_lines(MATH_VAL, 5)
    assert [len(batch["question"]) for batch in val_batches] == [2, 2, 1]
    assert [q for batch in val_batches for q in batch["question"]] == [
        record["problem"] for record in val_records
    ]
    assert val_batches[0]["ground_truth"] == ["420", r"\dfrac{1}{9}"] and val_batches[0]["level"] == [3, 4]
    assert datamodule.val_examples()[1].subject == "Prealgebra"


def test_prompt_datamodule_gsm8k_question_only_template():
    datamodule = PromptDataModule(
        FIXTURES / "gsm8k_small.jsonl", template="question_only", batch_size=2, shuffle=False
    )
    (batch,) = list(datamodule.train_dataloader())
    assert batch["prompt"] == batch["question"] and batch["ground_truth"] == ["1200", "2"]
    assert batch["level"] == [None, None]
    assert datamodule.val_dataloader() == []
    with pytest.raises(ValueError, match="val_path is not set"):
        datamodule.val_examples()


def test_datamodule_option_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"PromptDataModule\.train_path: no such file: .*missing\.jsonl"
    ):
        PromptDataModule(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"SFTDataModule\.val_path: no such file"):
        SFTDataModule(FIXTURES / "sft_small.jsonl", val_path=tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"PromptDataModule\.batch_size must be a positive integer"):
        PromptDataModule(FIXTURES / "gsm8k_small.jsonl", batch_size=0)
    with pytest.raises(ValueError, match=r"PromptDataModule\.batch_size is not set \(GRPOModule sets it"):
        PromptDataModule(FIXTURES / "gsm8k_small.jsonl").train_dataloader()
    with pytest.raises(ValueError, match=r"PromptDataModule .*gsm8k_small\.jsonl.*2 examples"):
        PromptDataModule(FIXTURES / "gsm8k_small.jsonl", batch_size=4).train_dataloader()
