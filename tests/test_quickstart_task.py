"""The embedded quickstart task, tokenizer and model: built in code, deterministic, lossless."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1_lightning.data.templates import load_template, render_prompt
from r1_lightning.quickstart import (
    PROMPT_TEMPLATE,
    build_model,
    build_tokenizer,
    make_problem,
    make_trace,
    materialize,
    write_task_files,
)
from r1_lightning.rewards import r1_zero_reward_fn

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


class AlwaysSlips(random.Random):
    """An rng whose every draw is 0.0: the sloppy teacher forgets every carry it may forget."""

    def random(self) -> float:
        return 0.0


class NeverSlips(random.Random):
    """An rng whose every draw is 0.99: the sloppy teacher keeps every carry (it slips below 0.7)."""

    def random(self) -> float:
        return 0.99


def operands(question: str) -> tuple[int, int]:
    a, b = re.findall(r"\d+", question)
    return int(a), int(b)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def samples() -> list[str]:
    """Prompts in both templates and correct and sloppy responses, as the quickstart produces them."""
    rng = random.Random(0)
    texts = []
    for template in (load_template("r1_zero"), load_template(PROMPT_TEMPLATE)):
        for _ in range(20):
            question, answer = make_problem(rng)
            texts += [render_prompt(template, question), make_trace(question, answer),
                      make_trace(question, answer, rng, carry_slip=0.7)]
    return texts


# ---------------------------------------------------------------------------------------- task


def test_problems_have_two_digit_operands_and_their_sum():
    rng = random.Random(1)
    for _ in range(500):
        question, answer = make_problem(rng)
        a, b = operands(question)
        assert question == f"What is {a} + {b}?"
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert answer == str(a + b)


def test_traces_add_the_columns_from_the_units_up():
    assert make_trace("What is 34 + 44?", "78") == " 4+4=8, 3+4=7 </think> <answer> 78 </answer>"
    assert make_trace("What is 47 + 85?", "132") == " 7+5=12, 4+8+1=13 </think> <answer> 132 </answer>"
    assert make_trace("What is 347 + 85?", "432") == " 7+5=12, 4+8+1=13, 3+1=4 </think> <answer> 432 </answer>"


def test_make_trace_refuses_a_wrong_answer_and_a_slip_without_rng():
    with pytest.raises(ValueError, match="not the sum"):
        make_trace("What is 47 + 85?", "122")
    with pytest.raises(ValueError, match="rng"):
        make_trace("What is 47 + 85?", "132", carry_slip=0.5)
    with pytest.raises(ValueError, match="quickstart question"):
        make_trace("What is 47 plus 85?", "132")


def test_the_sloppy_teacher_forgets_every_carry_the_leading_digit_included():
    assert make_trace("What is 47 + 85?", "132", AlwaysSlips(), 0.7) == (
        " 7+5=12, 4+8=12 </think> <answer> 22 </answer>"
    )
    # The carry out of the last column is the sum's leading digit: forgetting it drops that digit.
    assert make_trace("What is 91 + 17?", "108", AlwaysSlips(), 0.7) == (
        " 1+7=8, 9+1=10 </think> <answer> 08 </answer>"
    )
    assert make_trace("What is 47 + 85?", "132", NeverSlips(), 0.7) == make_trace("What is 47 + 85?", "132")
    # Without a carry there is nothing to forget.
    assert make_trace("What is 34 + 44?", "78", AlwaysSlips(), 0.7) == make_trace("What is 34 + 44?", "78")


def test_the_r1_zero_reward_grades_correct_traces_1_and_slips_0():
    rng = random.Random(2)
    for _ in range(100):
        question, answer = make_problem(rng)
        assert r1_zero_reward_fn(make_trace(question, answer), answer)["reward"] == 1.0
    slipped = make_trace("What is 47 + 85?", "132", AlwaysSlips(), 0.7)
    assert r1_zero_reward_fn(slipped, "132") == {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_write_task_files_fields_sizes_and_held_out_val(tmp_path):
    paths = write_task_files(tmp_path, n_train=300, n_val=50, n_sft=400, seed=3)
    train, val, sft = (read_jsonl(paths[name]) for name in ("train", "val", "sft"))
    assert (len(train), len(val), len(sft)) == (300, 50, 400)
    assert all(set(row) == {"problem", "answer"} for row in train + val)
    assert all(set(row) == {"prompt", "response", "ground_truth"} for row in sft)
    for row in train + val:
        assert row["answer"] == str(sum(operands(row["problem"])))

    template = load_template(paths["template"])
    assert template == load_template(PROMPT_TEMPLATE)
    sft_questions = []
    for row in sft:
        question = re.search(r"What is \d+ \+ \d+\?", row["prompt"]).group(0)
        assert row["prompt"] == render_prompt(template, question)
        assert row["ground_truth"] == str(sum(operands(question)))
        assert row["response"].endswith(" </answer>") and "</think> <answer> " in row["response"]
        sft_questions.append(question)

    val_questions = {row["problem"] for row in val}
    assert len(val_questions) == 50
    assert not val_questions & {row["problem"] for row in train}
    assert not val_questions & set(sft_questions)


def test_the_sft_teacher_is_wrong_on_the_expected_share_of_problems(tmp_path):
    # The teacher is right when it keeps every carry there is (each kept with probability 0.3).
    # Units digits are uniform (45 of 100 pairs carry); tens digits 1-9 (45 of 81 pairs reach 10,
    # 53 of 81 reach 9, which carries with a units carry added):
    #   0.55 * (36/81 + 45/81 * 0.3) + 0.45 * 0.3 * (28/81 + 53/81 * 0.3) = 0.409
    sft = read_jsonl(write_task_files(tmp_path, n_train=10, n_val=10, n_sft=4000, seed=0)["sft"])
    accuracy = sum(r1_zero_reward_fn(row["response"], row["ground_truth"])["reward"] for row in sft) / len(sft)
    assert accuracy == pytest.approx(0.409, abs=0.03)


def test_write_task_files_is_deterministic_given_the_seed(tmp_path):
    first = write_task_files(tmp_path / "a", n_train=100, n_val=20, n_sft=100, seed=7)
    again = write_task_files(tmp_path / "b", n_train=100, n_val=20, n_sft=100, seed=7)
    other = write_task_files(tmp_path / "c", n_train=100, n_val=20, n_sft=100, seed=8)
    for name in ("train", "val", "sft", "template"):
        assert first[name].read_bytes() == again[name].read_bytes()
    assert first["sft"].read_bytes() != other["sft"].read_bytes()


def test_write_task_files_refuses_more_problems_than_exist(tmp_path):
    with pytest.raises(ValueError, match="distinct problems"):
        write_task_files(tmp_path, n_train=8000, n_val=200, n_sft=10)


# ----------------------------------------------------------------------------------- tokenizer


def test_decode_inverts_encode_on_prompts_and_responses(tokenizer, samples):
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_tags_words_and_digits_are_single_tokens(tokenizer):
    def pieces(text):
        return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert pieces("</think> <answer> 132 </answer>") == ["</think>", " ", "<answer>", " ", "1", "3", "2", " ", "</answer>"]
    assert pieces("A conversation between User and Assistant.") == [
        "A", " conversation", " between", " User", " and", " Assistant", "."
    ]
    assert pieces("Assistant: <think>") == ["Assistant", ":", " ", "<think>"]
    assert pieces("9+0=9, 4+8+1=13") == ["9", "+", "0", "=", "9", ",", " ", "4", "+", "8", "+", "1", "=", "1", "3"]
    # A word the vocabulary lacks falls back to letters instead of <unk>; a prefix is not a word.
    assert pieces(" Chandra isolated") == [" ", "C", "h", "a", "n", "d", "r", "a", " ", *"isolated"]
    # Every word of the R1-Zero prompt is one token.
    words = re.findall(r"[A-Za-z]{2,}", re.sub("<[^>]*>", " ", load_template("r1_zero")))
    for word in words:
        assert len(pieces(" " + word)) == 1, word


def test_special_tokens_and_size(tokenizer):
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert 100 < len(tokenizer) < 300
    ids = tokenizer("<answer> 5 </answer><|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<answer> 5 </answer>"


def test_the_tokenizer_is_the_same_on_every_build(tokenizer):
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_save_and_reload_keep_the_tokenizer(tokenizer, samples, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
        assert reloaded.decode(ids) == text


# --------------------------------------------------------------------------------------- model


def test_materialized_folder_loads_with_auto_classes_and_runs(tmp_path, samples):
    folder = materialize(tmp_path / "quickstart")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    # The Auto classes must bring back this tokenizer, not the one registered for the model type.
    ids = tokenizer(samples[1], add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == samples[1]
    assert model.config.tie_word_embeddings and model.get_input_embeddings().num_embeddings == len(tokenizer)

    batch = tokenizer(samples[:2], add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()

    expected = build_model(build_tokenizer(), seed=0).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_build_model_is_seeded_and_leaves_the_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = build_model(tokenizer, seed=0)
    assert torch.equal(torch.rand(3), before)
    same, other = build_model(tokenizer, seed=0), build_model(tokenizer, seed=1)
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(first.state_dict()[weight], same.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert build_model(tokenizer, num_hidden_layers=1).config.num_hidden_layers == 1
