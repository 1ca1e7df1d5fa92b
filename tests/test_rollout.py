"""Rollout engines on the CPU: HFEngine end to end on a tiny random Qwen2, and the parts of
VLLMEngine that need no vLLM (argument mapping, output conversion, placement, import hygiene).

Expected outputs come from a hand-written greedy loop (`reference_greedy`: one full forward per
token, no KV cache, no padding, no batching) that implements the vLLM semantics the engines
promise: EOS suppressed before min_tokens, stop strings only checked on text generated after
min_tokens, the stop string kept and the text cut right after it.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import tiny_qwen2, word_level_tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from r1_lightning.models import compile_decoder_layers
from r1_lightning.rollout import (
    Completion,
    HFEngine,
    RolloutEngine,
    SamplingConfig,
    TrainerRanks,
    VLLMEngine,
)
from r1_lightning.rollout.hf import _cut_sample, _truncate_after_stop_string
from r1_lightning.rollout.vllm import build as vllm_build
from r1_lightning.rollout.vllm import engine as vllm_engine
from r1_lightning.rollout.vllm.build import TESTED_VLLM_VERSION
from r1_lightning.rollout.vllm.engine import engine_weights
from r1_lightning.rollout.vllm.generation import (
    generate_completions,
    prompt_shares,
    sampled_token_logprobs,
    sampling_params_kwargs,
    to_completions,
)
from r1_lightning.rollout.vllm.layout import engine_gpus
from r1_lightning.rollout.vllm.llm_process import LLMProcess, load
from r1_lightning.rollout.vllm.worker import WORKER_EXTENSION, WorkerExtension

CHARS = list("abcdefghij <>/=+0123456789")
VOCAB = {token: i for i, token in enumerate(["<pad>", "<eos>", *CHARS])}
PAD, EOS = VOCAB["<pad>"], VOCAB["<eos>"]
PROMPTS = ["a", "bc d", "12+34=", "j", "ab/ab"]  # different lengths: left padding matters


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two spinning
    threads made this file ~10x slower (94 s vs 7 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """One token per character; decoding concatenates."""
    special = {"pad_token": "<pad>"} if with_pad else {}
    return word_level_tokenizer(VOCAB, "<pad>", per_character=True, eos_token="<eos>", **special)


def make_policy(seed: int = 0) -> Qwen2ForCausalLM:
    # A large init scale makes the random model's next-token distributions peaked and varied, so
    # greedy decoding has clear winners (no float ties) and does not repeat one token forever.
    policy = tiny_qwen2(len(VOCAB), seed, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.3)
    return policy.eval()


def speak_eos_instead_of(policy: Qwen2ForCausalLM, token_id: int) -> None:
    """Swap two output rows so the model says EOS wherever it used to say `token_id`."""
    with torch.no_grad():
        rows = policy.lm_head.weight
        rows[[token_id, EOS]] = rows[[EOS, token_id]].clone()


def attached(policy, tokenizer, **kwargs) -> HFEngine:
    engine = HFEngine(**kwargs)
    engine.attach(policy, tokenizer)
    return engine


@torch.no_grad()
def reference_greedy(policy, tokenizer, prompt, max_tokens, min_tokens=0, stop=()):
    """(token_ids, text, finish_reason) by argmax of full forwards, vLLM stop semantics."""
    prompt_ids = [VOCAB[c] for c in prompt]
    tokens, text = [], ""
    for _ in range(max_tokens):
        logits = policy(torch.tensor([prompt_ids + tokens])).logits[0, -1]
        if len(tokens) < min_tokens:
            logits[EOS] = -float("inf")
        tokens.append(int(logits.argmax()))
        if tokens[-1] == EOS:
            return tokens, text, "stop"
        new_text = tokenizer.decode(tokens, skip_special_tokens=True)
        if len(tokens) > min_tokens:
            for s in stop:
                # only occurrences that end in the characters this token added
                at = new_text.find(s, max(0, len(text) - len(s) + 1))
                if at >= 0:
                    return tokens, new_text[: at + len(s)], "stop"
        text = new_text
    return tokens, text, "length"


def assert_matches(completions: list[Completion], expected: list[tuple]) -> None:
    got = [(c.token_ids, c.text, c.finish_reason) for c in completions]
    assert got == [(list(t), text, reason) for t, text, reason in expected]


# -- greedy decoding against the hand-written loop ---------------------------------------------------


@pytest.fixture(scope="module")
def greedy_case():
    """A policy whose greedy continuations of PROMPTS end in all three ways (EOS, stop string,
    max_tokens), and the stop string that does it."""
    tokenizer = make_tokenizer()
    policy = make_policy()
    before = [reference_greedy(policy, tokenizer, p, 20)[0] for p in PROMPTS]
    # Make EOS the rarest token of PROMPTS[2]'s continuation (past its first two tokens).
    rarest = min(sorted(set(before[2][2:])), key=lambda token: sum(token in tokens for tokens in before))
    speak_eos_instead_of(policy, rarest)
    stop = [reference_greedy(policy, tokenizer, PROMPTS[0], 20)[1][6:8]]
    expected = [reference_greedy(policy, tokenizer, p, 20, stop=stop) for p in PROMPTS]
    endings = {
        "eos" if tokens[-1] == EOS else "stop string" if reason == "stop" else "length"
        for tokens, _, reason in expected
    }
    assert endings == {"eos", "stop string", "length"}, "the case no longer covers every ending"
    return policy, tokenizer, stop, expected


@pytest.mark.parametrize("max_batch_size", [2, 64])
def test_greedy_equals_reference_loop_in_left_padded_batches(greedy_case, max_batch_size):
    # One batch of five prompts of different lengths (64), or chunks of two (2): left padding,
    # chunking, the stop/EOS cut of rows that finished early, and batch invariance at once.
    policy, tokenizer, stop, expected = greedy_case
    engine = attached(policy, tokenizer, max_batch_size=max_batch_size)
    completions = engine.generate(PROMPTS, SamplingConfig(temperature=0, max_tokens=20, stop=stop))
    assert_matches(completions, expected)


def test_generation_runs_a_compiled_policy_eagerly(greedy_case):
    """`compile` is for training's shapes: the HF engine decodes through the same layers without
    calling the compiler, and gives the eager answers."""
    policy, tokenizer, stop, expected = greedy_case
    compiled = copy.deepcopy(policy)
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    compile_decoder_layers(compiled, backend=counting_backend)
    torch._dynamo.reset()
    completions = attached(compiled, tokenizer).generate(PROMPTS, SamplingConfig(temperature=0, max_tokens=20, stop=stop))
    assert_matches(completions, expected)
    assert graphs == []
    compiled(torch.tensor([[1, 2, 3]]))  # the layers are compiled: outside generation the compiler runs
    assert graphs


def test_greedy_with_n_repeats_the_single_greedy_answer(greedy_case):
    policy, tokenizer, stop, expected = greedy_case
    engine = attached(policy, tokenizer)
    completions = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=0, max_tokens=20, stop=stop))
    assert [c.prompt_index for c in completions] == [i for i in range(len(PROMPTS)) for _ in range(3)]
    assert_matches(completions, [e for e in expected for _ in range(3)])


def test_min_tokens_suppresses_eos_and_early_stop_strings(greedy_case):
    policy, tokenizer, stop, expected = greedy_case
    eos_length = len(expected[2][0])  # PROMPTS[2] says EOS at this length without min_tokens
    min_tokens = eos_length + 2
    engine = attached(policy, tokenizer)
    sampling = SamplingConfig(temperature=0, max_tokens=20, min_tokens=min_tokens, stop=stop)
    completions = engine.generate(PROMPTS, sampling)

    with_min = [reference_greedy(policy, tokenizer, p, 20, min_tokens, stop) for p in PROMPTS]
    assert_matches(completions, with_min)
    assert len(completions[2].token_ids) >= min_tokens > eos_length
    assert all(len(c.token_ids) >= min_tokens for c in completions)


def test_tokenizer_without_pad_token_pads_with_eos(greedy_case):
    policy, _, stop, expected = greedy_case
    tokenizer = make_tokenizer(with_pad=False)
    assert tokenizer.pad_token_id is None
    engine = attached(policy, tokenizer)
    completions = engine.generate(PROMPTS, SamplingConfig(temperature=0, max_tokens=20, stop=stop))
    # "<pad>" is an ordinary token for this tokenizer, so decoded texts may differ: compare ids.
    assert [c.token_ids for c in completions] == [tokens for tokens, _, _ in expected]
    assert [c.finish_reason for c in completions] == [reason for _, _, reason in expected]
    assert tokenizer.pad_token_id is None  # the engine did not set one on the caller's tokenizer


# -- sampling --------------------------------------------------------------------------------------------


def test_samples_are_prompt_major_groups():
    tokenizer = make_tokenizer()
    engine = attached(make_policy(), tokenizer)
    completions = engine.generate(PROMPTS[:4], SamplingConfig(n=3, max_tokens=8, stop=[], seed=0))

    assert len(completions) == 12
    assert [c.prompt_index for c in completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for c in completions:
        assert c.prompt_token_ids == [VOCAB[ch] for ch in PROMPTS[c.prompt_index]]
        assert 1 <= len(c.token_ids) <= 8
        assert c.logprobs is None
        assert c.finish_reason == ("length" if len(c.token_ids) == 8 and EOS not in c.token_ids else "stop")
    assert engine.generate([], SamplingConfig()) == []


def test_seed_makes_sampling_reproducible_and_leaves_caller_rng_alone():
    engine = attached(make_policy(), make_tokenizer())

    def sample(seed):
        return [
            (c.token_ids, c.text)
            for c in engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=12, seed=seed))
        ]

    torch.manual_seed(123)
    caller_state = torch.get_rng_state()
    first = sample(7)
    assert torch.equal(torch.get_rng_state(), caller_state)
    assert sample(7) == first
    assert sample(8) != first
    assert len({tuple(tokens) for tokens, _ in first}) > len(PROMPTS)  # the n samples of a prompt differ


def test_stop_string_is_kept_and_nothing_after_it():
    # Same seed with and without the stop string: every row draws the same random numbers until
    # the whole batch stops, so each sample with the stop string is the sample without it, cut
    # right after the first token that completes the stop string (or unchanged if it never does).
    tokenizer = make_tokenizer()
    engine = attached(make_policy(), tokenizer)
    free = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=24, stop=[], seed=3))
    longest = max(free, key=lambda c: len(c.text)).text
    stop = longest[10:12]

    stopped = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=24, stop=[stop], seed=3))

    cut_rows = 0
    for before, after in zip(free, stopped):
        ends = [
            i
            for i in range(len(before.token_ids))
            if stop in tokenizer.decode(before.token_ids[: i + 1], skip_special_tokens=True)
        ]
        if not ends:
            assert (after.token_ids, after.text, after.finish_reason) == (
                before.token_ids,
                before.text,
                before.finish_reason,
            )
            continue
        cut_rows += 1
        expected_tokens = before.token_ids[: ends[0] + 1]
        expected_text = tokenizer.decode(expected_tokens, skip_special_tokens=True)
        assert after.token_ids == expected_tokens
        assert after.text == expected_text[: expected_text.index(stop) + len(stop)]
        assert after.text.endswith(stop) and after.finish_reason == "stop"
    assert 0 < cut_rows < len(free)


def test_eos_ends_a_sample_and_is_kept():
    engine = attached(make_policy(), make_tokenizer())
    completions = engine.generate(PROMPTS, SamplingConfig(n=8, max_tokens=16, stop=[], seed=1))
    by_eos = [c for c in completions if c.finish_reason == "stop"]
    by_length = [c for c in completions if c.finish_reason == "length"]
    assert by_eos and by_length
    for c in by_eos:
        assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
        assert "<eos>" not in c.text
    for c in by_length:
        assert len(c.token_ids) == 16 and EOS not in c.token_ids


def test_logprobs_are_raw_model_logprobs_of_the_sampled_tokens():
    # temperature, top_k and min_tokens all change the sampling distribution; the returned
    # log-probs must still be the plain log-softmax of the model's logits.
    policy = make_policy()
    engine = attached(policy, make_tokenizer())
    sampling = SamplingConfig(
        n=3, temperature=0.7, top_k=5, min_tokens=3, max_tokens=12, stop=[], seed=0, logprobs=True
    )
    completions = engine.generate(PROMPTS, sampling)

    for c in completions:
        assert len(c.logprobs) == len(c.token_ids)
        with torch.no_grad():
            logits = policy(torch.tensor([c.prompt_token_ids + c.token_ids])).logits[0]
        positions = range(len(c.prompt_token_ids) - 1, len(c.prompt_token_ids) + len(c.token_ids) - 1)
        expected = [torch.log_softmax(logits[p], -1)[t].item() for p, t in zip(positions, c.token_ids)]
        assert c.logprobs == pytest.approx(expected, abs=1e-5)


def test_logprobs_for_the_first_prompts_only():
    # A sample for a weight-sync check: the first 3 of 5 prompts (over calls of 2 prompts each).
    # Recording log-probs does not change what is sampled.
    policy = make_policy()
    engine = attached(policy, make_tokenizer(), max_batch_size=2)
    every = SamplingConfig(n=2, max_tokens=8, stop=[], seed=3, logprobs=True)
    some = engine.generate(PROMPTS, dataclasses.replace(every, logprobs_prompts=3))
    full = engine.generate(PROMPTS, every)
    assert [c.token_ids for c in some] == [c.token_ids for c in full]
    assert [c.logprobs for c in some] == [c.logprobs if c.prompt_index < 3 else None for c in full]
    assert all(c.logprobs is not None for c in full)
    assert [sampling_params_kwargs(dataclasses.replace(every, logprobs_prompts=1), i)["logprobs"] for i in range(3)] == [0, None, None]
    with pytest.raises(ValueError, match="logprobs_prompts"):
        SamplingConfig(logprobs=True, logprobs_prompts=-1)


# -- the policy module is left as it was found ------------------------------------------------------------


def test_training_mode_restored_and_kv_cache_used_under_gradient_checkpointing(greedy_case):
    shared_policy, tokenizer, stop, expected = greedy_case
    policy = copy.deepcopy(shared_policy)
    # transformers 5 renamed gradient checkpointing to activation checkpointing (old name warns)
    enable = getattr(policy, "activation_checkpointing_enable", None) or policy.gradient_checkpointing_enable
    enable()
    policy.train()
    policy.model.layers[0].mlp.eval()  # a submodule the caller keeps in eval mode
    token_counts = []
    policy.model.embed_tokens.register_forward_hook(
        lambda m, args, out: token_counts.append(args[0].shape[1])
    )

    completions = attached(policy, tokenizer).generate(
        PROMPTS, SamplingConfig(temperature=0, max_tokens=20, stop=stop)
    )

    assert_matches(completions, expected)
    # One prefill of the padded prompts, then one token per step: the KV cache was on.
    assert token_counts[0] == max(len(p) for p in PROMPTS) and set(token_counts[1:]) == {1}
    assert policy.training and policy.model.layers[1].training
    assert not policy.model.layers[0].mlp.training


def test_engines_satisfy_the_protocol():
    assert isinstance(HFEngine(), RolloutEngine) and HFEngine().shares_policy_weights
    assert isinstance(VLLMEngine(), RolloutEngine) and not VLLMEngine().shares_policy_weights


def test_sampling_config_validation():
    assert SamplingConfig(stop="</answer>").stop == ["</answer>"]
    for bad in (
        {"n": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"min_p": 2},
        {"max_tokens": 0},
        {"min_tokens": 5, "max_tokens": 4},
        {"stop": [""]},
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_cut_sample_and_stop_string_truncation():
    # a stop-string end, an EOS, and padding that equals EOS after the row stopped
    assert _cut_sample([5, 6, 7, 1, 1], {1}, 1) == ([5, 6], "stop", True)
    assert _cut_sample([5, 6, 1, 1], {1}, -1) == ([5, 6, 1], "stop", False)
    assert _cut_sample([5, 6, 7], {1}, -1) == ([5, 6, 7], "length", False)
    # the last token ran past the stop string; an earlier occurrence (inside min_tokens) stays
    assert _truncate_after_stop_string("x</a> y</a>\n\n", ["</a>"]) == "x</a> y</a>"


# -- VLLMEngine without vLLM -------------------------------------------------------------------------------


def test_importing_the_package_does_not_import_vllm():
    code = "import sys, r1_lightning.rollout as r; r.VLLMEngine(); assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attach_without_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # restored after the test
    with pytest.raises(ImportError, match=r"r1-lightning\[vllm\].*HFEngine"):
        VLLMEngine().attach(make_policy(), make_tokenizer())


def test_an_untested_vllm_version_is_warned_about_once(monkeypatch, caplog):
    """An in-process engine imports vLLM at attach and again to build its LLM: one warning, not two."""
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(__version__="0.0.1-test", envs=SimpleNamespace()))
    monkeypatch.setitem(sys.modules, "vllm.envs", sys.modules["vllm"].envs)
    monkeypatch.setattr(vllm_build, "_warned_versions", set())
    with caplog.at_level("WARNING", logger=vllm_build.__name__):
        assert vllm_build.import_vllm() is vllm_build.import_vllm() is sys.modules["vllm"]
    assert [r.getMessage() for r in caplog.records] == [
        f"VLLMEngine is tested with vllm=={TESTED_VLLM_VERSION}, found 0.0.1-test"]


@pytest.mark.parametrize("per_request_seeds, reseedable", [(True, True), (False, True), (False, False)])
def test_per_request_seeds_or_one_seed_per_call(monkeypatch, per_request_seeds, reseedable):
    """With per_request_seeds every prompt gets its own seed. Without, no request has one, and the
    call's seed goes to the workers' sampler first (WorkerExtension.reseed_sampler, through
    collective_rpc); a vLLM without worker extensions samples from the engine's own generator."""
    made, order = [], []
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kwargs: made.append(kwargs)))
    engine = VLLMEngine(per_request_seeds=per_request_seeds)
    engine.tokenizer, engine._reseedable = make_tokenizer(), reseedable
    engine.llms = [SimpleNamespace(
        generate=lambda prompts, params, use_tqdm: order.append("generate") or [SimpleNamespace(outputs=[]) for _ in prompts],
        collective_rpc=lambda method, args: order.append((method, args)))]
    engine.device_indices = [-1]  # torch.cuda.device(-1) is a no-op: no GPU here
    engine.generate(["ab", "cd", "ef"], SamplingConfig(n=4, seed=10))
    seeds = [kwargs.get("seed") for kwargs in made]
    assert seeds == ([10, 14, 18] if per_request_seeds else [None, None, None])
    assert order == ([("reseed_sampler", (10,)), "generate"] if not per_request_seeds and reseedable else ["generate"])


def test_the_worker_extension_seeds_its_workers_gpu_and_loads_weights_in_place(monkeypatch):
    """WorkerExtension's methods, as vLLM calls them on a worker (self: the worker, with its device and
    its weight transfer engine)."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    worker = type("Worker", (WorkerExtension,), {"device": -1})()  # device -1: torch.cuda.device is a no-op
    # and NumPy's global generator, whence vLLM's V2 model runner draws an unseeded request's seed
    np_state = np.random.get_state()
    try:
        worker.reseed_sampler(123)
        after_reseed = np.random.randint(2**62, size=4)
        np.random.seed(7)
        np.random.randint(2**62, size=3)  # requests sampled in between
        worker.reseed_sampler(123)
        assert (np.random.randint(2**62, size=4) == after_reseed).all()
    finally:
        np.random.set_state(np_state)
    assert seeded == [123, 123]
    # load_weights_in_place: the worker's weight transfer engine receives and loads the update itself
    received = []
    worker.weight_transfer_engine = SimpleNamespace(update_weights=received.append)
    worker.load_weights_in_place({"names": ["w"]})
    assert received == [{"names": ["w"]}]
    worker.weight_transfer_engine = None
    with pytest.raises(RuntimeError, match="weight_transfer_config"):
        worker.load_weights_in_place({"names": ["w"]})
    assert WORKER_EXTENSION == "r1_lightning.rollout.vllm.worker.WorkerExtension"
    assert load(WORKER_EXTENSION.replace(".WorkerExtension", ":WorkerExtension")) is WorkerExtension


def test_a_separate_engine_generates_in_its_own_process(monkeypatch):
    """With the LLM in its own process, the engine sends token ids and sampling options there and
    gets Completions back: `generate_completions` runs in that process, not here."""
    calls = []
    llm = LLMProcess.__new__(LLMProcess)  # no process: what generate sends it is the point
    llm.call = lambda function, *args: calls.append((function, *args)) or ["completions"]
    engine = VLLMEngine(process="separate")
    engine.tokenizer, engine.llms = make_tokenizer(), [llm]
    assert engine.generate(["ab", "c"], SamplingConfig(n=2, seed=10, stop=["</answer>"])) == ["completions"]
    [(function, prompt_ids, params, call_seed)] = calls
    assert load(function) is generate_completions and call_seed is None  # per-request seeds (the default)
    assert prompt_ids == engine.tokenizer(["ab", "c"], add_special_tokens=False)["input_ids"]
    assert [(p["n"], p["seed"], p["stop"]) for p in params] == [(2, 10, ["</answer>"]), (2, 12, ["</answer>"])]


def test_vllm_log_prob_processors_are_built_without_the_tokenizer(monkeypatch):
    """`build_llm` first makes vLLM's front end build each request's LogprobsProcessor without a
    tokenizer (it then skips the per-token strings), once however often it runs; the request and the
    way vLLM calls it (keywords) are unchanged."""
    built = []

    class LogprobsProcessor:  # vLLM 0.26's hook, as vllm/v1/engine/logprobs.py defines it
        @classmethod
        def from_new_request(cls, tokenizer, request):
            built.append((cls, tokenizer, request))

    module = SimpleNamespace(LogprobsProcessor=LogprobsProcessor)
    for name in ("vllm", "vllm.v1", "vllm.v1.engine"):
        monkeypatch.setitem(sys.modules, name, SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.logprobs", module)
    monkeypatch.setattr(vllm_build, "import_vllm", lambda: SimpleNamespace(LLM=lambda **kwargs: kwargs))
    assert vllm_build.build_llm(model="m") == {"model": "m"}
    vllm_build.without_logprob_token_strings()  # a second engine: not wrapped twice
    LogprobsProcessor.from_new_request(tokenizer="tokenizer", request="request")
    assert built == [(LogprobsProcessor, None, "request")]


def test_engine_options_reach_vllm_and_none_leaves_vllm_defaults(monkeypatch):
    built = []
    fake_vllm = SimpleNamespace(LLM=lambda **kwargs: built.append(kwargs), __version__=TESTED_VLLM_VERSION)
    monkeypatch.setattr(vllm_build, "import_vllm", lambda: fake_vllm)
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    for engine in (VLLMEngine(max_num_seqs=2048, max_model_len=1536, gpu_memory_utilization=0.5), VLLMEngine()):
        engine.device_indices = [-1]  # torch.cuda.device(-1) is a no-op: no GPU here
        engine._build_llms(fake_vllm, "model-folder", "tokenizer-folder")
    tuned, default = built
    assert (tuned["max_num_seqs"], tuned["max_model_len"], tuned["gpu_memory_utilization"]) == (2048, 1536, 0.5)
    assert tuned["device_ids"] == [-1] and tuned["model"] == "model-folder" and tuned["tokenizer"] == "tokenizer-folder"
    assert "max_num_seqs" not in default and "max_model_len" not in default
    assert default["worker_extension_cls"] == WORKER_EXTENSION and engine._reseedable  # reseed_sampler there
    with pytest.raises(ValueError, match="max_num_seqs"):
        VLLMEngine(max_num_seqs=0)


def test_each_replica_is_built_with_its_share_of_the_engine_gpu_memory(monkeypatch):
    """The replicas share one GPU: each `LLM` gets gpu_memory_utilization / replicas, in its build
    arguments themselves (no caller rewrites them)."""
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    fake_vllm = SimpleNamespace(__version__=TESTED_VLLM_VERSION)
    for replicas, share in ((1, 0.8), (4, 0.2)):
        options = VLLMEngine(process="separate", replicas=replicas, gpu_memory_utilization=0.8).options
        engine_args = vllm_build.llm_engine_args(options, fake_vllm, "model-folder", "model-folder",
                                                 ranks=TrainerRanks(), device_indices=[1], launch_env={}, name="engine")
        assert engine_args["gpu_memory_utilization"] == pytest.approx(share)


def test_engine_device_resolution():
    assert engine_gpus("auto", colocate=False, num_gpus=2, policy_device_index=0) == [1]
    assert engine_gpus("auto", colocate=True, num_gpus=1, policy_device_index=0) == [0]
    assert engine_gpus("cuda:3", colocate=False, num_gpus=4, policy_device_index=0) == [3]
    assert engine_gpus(0, colocate=True, num_gpus=1, policy_device_index=0) == [0]
    with pytest.raises(RuntimeError, match="colocate true"):
        engine_gpus("auto", colocate=False, num_gpus=1, policy_device_index=0)
    with pytest.raises(RuntimeError, match="HFEngine"):
        engine_gpus("auto", colocate=False, num_gpus=0, policy_device_index=None)
    with pytest.raises(ValueError):
        engine_gpus(2, colocate=False, num_gpus=2, policy_device_index=0)


def test_sampling_params_mapping():
    sampling = SamplingConfig(
        n=4,
        temperature=0.9,
        top_p=0.95,
        top_k=0,
        min_p=0.05,
        max_tokens=100,
        min_tokens=4,
        stop=["</answer>"],
        seed=10,
        logprobs=True,
    )
    kwargs = sampling_params_kwargs(sampling, prompt_index=0)
    assert kwargs == {
        "n": 4,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": -1,
        "min_p": 0.05,
        "max_tokens": 100,
        "min_tokens": 4,
        "stop": ["</answer>"],
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "logprobs": 0,
        "flat_logprobs": True,
        "seed": 10,
    }
    # each prompt's n samples get seeds of their own
    seeds = [sampling_params_kwargs(sampling, i)["seed"] + j for i in range(3) for j in range(4)]
    assert len(set(seeds)) == 12
    unseeded = sampling_params_kwargs(SamplingConfig(top_k=20, stop=[]), 0)
    assert unseeded["top_k"] == 20 and unseeded["logprobs"] is None and unseeded["stop"] is None
    assert "seed" not in unseeded


def test_vllm_outputs_become_prompt_major_completions():
    def sample(index, tokens, reason, logprobs=None):
        steps = (
            None
            if logprobs is None
            else [
                {t: SimpleNamespace(logprob=lp), 99: SimpleNamespace(logprob=0.0)}
                for t, lp in zip(tokens, logprobs)
            ]
        )
        return SimpleNamespace(
            index=index, token_ids=tuple(tokens), text=f"t{tokens}", finish_reason=reason, logprobs=steps
        )

    outputs = [
        SimpleNamespace(
            outputs=[sample(1, [4, 5], "length", [-0.5, -1.5]), sample(0, [3, 1], "stop", [-0.25, -2.0])]
        ),
        SimpleNamespace(outputs=[sample(0, [7], "stop", [-3.0]), sample(1, [8, 9], "stop", [-0.1, -0.2])]),
    ]
    completions = to_completions(outputs, [[10, 11], [12]])
    assert [(c.prompt_index, c.token_ids, c.finish_reason) for c in completions] == [
        (0, [3, 1], "stop"),
        (0, [4, 5], "length"),
        (1, [7], "stop"),
        (1, [8, 9], "stop"),
    ]
    assert [c.logprobs for c in completions] == [[-0.25, -2.0], [-0.5, -1.5], [-3.0], [-0.1, -0.2]]
    assert completions[2].prompt_token_ids == [12] and completions[0].text == "t[3, 1]"

    aborted = [SimpleNamespace(outputs=[sample(0, [3], "abort")])]
    with pytest.raises(RuntimeError, match="abort"):
        to_completions(aborted, [[1]])


def test_flat_logprobs_give_the_sampled_tokens_logprobs():
    """vLLM's FlatLogprobs (flat_logprobs=True): position i's entries run from start_indices[i], the
    sampled token's first; here position 0 also carries another token's entry."""
    flat = SimpleNamespace(start_indices=[0, 2, 3], end_indices=[2, 3, 4], token_ids=[5, 99, 6, 7],
                           logprobs=[-0.5, -9.0, -1.25, -0.125])
    assert sampled_token_logprobs(flat, [5, 6, 7]) == [-0.5, -1.25, -0.125]
    as_dicts = [{5: SimpleNamespace(logprob=-0.5), 99: SimpleNamespace(logprob=-9.0)},
                {6: SimpleNamespace(logprob=-1.25)}, {7: SimpleNamespace(logprob=-0.125)}]
    assert sampled_token_logprobs(as_dicts, [5, 6, 7]) == [-0.5, -1.25, -0.125]
    output = SimpleNamespace(index=0, token_ids=(5, 6, 7), text="", finish_reason="stop", logprobs=flat)
    assert to_completions([SimpleNamespace(outputs=[output])], [[1]])[0].logprobs == [-0.5, -1.25, -0.125]


def test_tied_models_do_not_send_lm_head():
    named = [("model.embed_tokens.weight", torch.zeros(1)), ("lm_head.weight", torch.zeros(1))]
    assert [n for n, _ in engine_weights(named, tie_word_embeddings=True)] == ["model.embed_tokens.weight"]
    assert [n for n, _ in engine_weights(named, tie_word_embeddings=False)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]


def test_a_colocated_engine_wakes_after_torch_gives_its_cached_memory_back(monkeypatch):
    """Colocated, vLLM maps its memory back through the CUDA driver: torch's cached blocks go back
    first (empty_cache) at every wake-up, the sync's two-stage one (weights, then KV cache) included."""
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    engine = VLLMEngine(colocate=True)
    engine.llms = [SimpleNamespace(wake_up=lambda tags=None: calls.append(("wake_up", tags)),
                                   apply_model=lambda fn: [{"w"}], reset_prefix_cache=lambda: calls.append("reset"))]
    engine.device_indices = [-1]  # torch.cuda.device(-1) is a no-op: no GPU here
    engine._sleeping = True
    engine.wake_up()
    assert calls == ["empty_cache", ("wake_up", None)] and not engine._sleeping
    calls.clear()
    engine._sleeping = True
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    engine._load_in_process([("w", torch.zeros(1))])
    assert calls == ["empty_cache", ("wake_up", ["weights"]), "empty_cache", ("wake_up", ["kv_cache"]), "reset"]


def test_prompt_shares_cover_every_prompt_once_in_order_and_balanced():
    for num_prompts in range(12):
        for parts in range(1, 5):
            shares = prompt_shares(num_prompts, parts)
            assert len(shares) == parts and [i for share in shares for i in share] == list(range(num_prompts))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert prompt_shares(5, 2) == [range(3), range(3, 5)]


def test_replicas_sample_their_shares_at_once_and_return_them_in_prompt_order():
    """replicas=2: each LLMProcess gets a contiguous share of the prompts with the sampling options
    (seeds included) the whole call gives those prompts; both run at once; the completions come back
    in prompt order with their index into the whole call. One seed per call: call_seed + replica."""
    both_running = threading.Barrier(2, timeout=10)  # a replica that waited for the other would time out
    received = {}

    def replica(name):
        llm = LLMProcess.__new__(LLMProcess)  # no process: what generate sends it is the point

        def call(function, prompt_ids, params, call_seed):
            both_running.wait()
            received[name] = (prompt_ids, [p.get("seed") for p in params], call_seed)
            return [Completion(prompt_index=i, prompt_token_ids=ids, token_ids=[sample], text=name,
                               finish_reason="stop")
                    for i, ids in enumerate(prompt_ids) for sample in range(params[i]["n"])]

        llm.call = call
        return llm

    engine = VLLMEngine(process="separate", replicas=2)
    engine.llms = [replica("first"), replica("second")]
    engine.tokenizer = make_tokenizer()
    prompts = ["ab", "cd", "ef", "a", "b"]
    completions = engine.generate(prompts, SamplingConfig(n=2, seed=10))
    ids = engine.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert received["first"] == (ids[:3], [10, 12, 14], None) and received["second"] == (ids[3:], [16, 18], None)
    assert [(c.prompt_index, c.prompt_token_ids, c.text) for c in completions[::2]] == [
        (i, ids[i], "first" if i < 3 else "second") for i in range(5)]
    engine.per_request_seeds, engine._reseedable = False, True
    engine.generate(prompts, SamplingConfig(n=2, seed=10))
    assert received["first"][1:] == ([None] * 3, 10) and received["second"][1:] == ([None] * 2, 11)


def test_replicas_are_built_one_by_one_sharing_the_memory_and_each_gets_the_weights(monkeypatch):
    built, sent = [], []

    class RecordingLLMProcess:
        def __init__(self, engine_args, env, build):
            built.append((engine_args["gpu_memory_utilization"], env["VLLM_ENABLE_V1_MULTIPROCESSING"]))

    class RecordingSender:
        def __init__(self, llm, name, *args, **kwargs):
            self.llm, self.name = llm, name

        def send(self, weights):
            sent.append((self.name, [name for name, _ in weights]))

    fake_vllm = SimpleNamespace(__version__=TESTED_VLLM_VERSION)
    monkeypatch.setattr(vllm_build, "import_vllm", lambda: fake_vllm)
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    monkeypatch.setattr(vllm_engine, "engine_gpus", lambda *args, **kwargs: [1])
    monkeypatch.setattr(vllm_engine, "LLMProcess", RecordingLLMProcess)
    monkeypatch.setattr(vllm_engine, "NCCLWeightSender", RecordingSender)
    engine = VLLMEngine(process="separate", replicas=2, gpu_memory_utilization=0.8, model="model-folder")
    engine.attach(make_policy(), make_tokenizer())
    assert built == [(0.4, "1"), (0.4, "1")] and engine.llm is engine.llms[0] and len(engine.llms) == 2
    assert "2 replicas" in str(engine)
    engine.load_weights([("model.norm.weight", torch.ones(2))])
    assert [name.rsplit(" ", 2)[-2:] for name, _ in sent] == [["replica", "0"], ["replica", "1"]]
    assert all(names == ["model.norm.weight"] for _, names in sent)


@pytest.mark.parametrize("options", [{"replicas": 0}, {"replicas": 2}, {"replicas": 2, "process": "separate",
                                                                      "tensor_parallel_size": 2}])
def test_replicas_need_separate_single_gpu_engines(options):
    with pytest.raises(ValueError, match="replicas"):
        VLLMEngine(**options)
