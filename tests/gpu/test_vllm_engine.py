"""VLLMEngine on a real GPU, against the policy it serves.

Placement follows the machine: with 2+ GPUs the policy is on cuda:0 and the engine on cuda:1 (the
default); with one GPU both share cuda:0 and the engine runs colocated (vLLM sleep mode).

The model is tiny but real-shaped for vLLM (Qwen2, head_dim 64), random, saved with
`save_pretrained` next to a character-level tokenizer. The engine computes in bfloat16 and the
policy in float32, so two greedy decodings may part at a near-tie of the policy's logits; the
comparisons allow exactly that and nothing else.

    pytest tests/gpu/test_vllm_engine.py
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM: pip install 'r1-lightning[vllm]'")

from tiny_models import char_tokenizer, char_vocab, tiny_qwen2
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1_lightning.rollout import HFEngine, SamplingConfig, VLLMEngine

# No space character: transformers 5.17 (on the GPU machine) drops " " when it reloads this
# character-level tokenizer from disk.
CHARS = list("abcdefghij_<>/=+0123456789")
VOCAB = char_vocab("".join(CHARS))
EOS = VOCAB["<eos>"]
PROMPTS = ["a", "bc_d", "12+34=", "j", "ab/ab"]
NEAR_TIE = 0.05  # logit margin under which bf16 vs fp32 may pick different greedy tokens
MAX_LOGPROB_GAP = 1e-2  # mean |engine log-prob - policy log-prob| of a healthy sync (bf16)


def save_tiny_model(path) -> None:
    tokenizer = char_tokenizer(VOCAB)
    tokenizer.save_pretrained(path)
    model = tiny_qwen2(
        len(VOCAB), hidden_size=256, intermediate_size=512, max_position_embeddings=512, tie_word_embeddings=False,
        initializer_range=0.05,  # logits of std ~1: clear greedy winners, bf16 errors well below
        eos_token_id=EOS, pad_token_id=VOCAB["<pad>"],
    )
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    save_tiny_model(path)
    colocate = torch.cuda.device_count() < 2
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda:0")
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine(
        device=0 if colocate else "auto",
        colocate=colocate,
        gpu_memory_utilization=0.3,
        max_model_len=256,
        enforce_eager=True,  # start in seconds; CUDA graphs are not what is tested here
    )
    engine.attach(policy, tokenizer)  # builds the engine from the policy's own folder
    hf_engine = HFEngine()
    hf_engine.attach(policy, tokenizer)
    yield SimpleNamespace(
        policy=policy, tokenizer=tokenizer, engine=engine, hf_engine=hf_engine, colocate=colocate
    )
    engine.close()  # drops the in-process LLM
    gc.collect()
    torch.cuda.empty_cache()


@torch.no_grad()
def policy_logits(policy, prompt_ids, token_ids) -> torch.Tensor:
    """Float32 logits predicting each of `token_ids` (and the token after them)."""
    ids = torch.tensor([prompt_ids + token_ids], device=policy.device)
    return policy(ids).logits[0, len(prompt_ids) - 1 :].float()


def policy_logprobs(policy, completion) -> torch.Tensor:
    logits = policy_logits(policy, completion.prompt_token_ids, completion.token_ids)[:-1]
    chosen = torch.tensor(completion.token_ids, device=logits.device)[:, None]
    return torch.log_softmax(logits, -1).gather(-1, chosen).squeeze(-1).cpu()


def mean_logprob_gap(policy, completions) -> float:
    gaps = [(torch.tensor(c.logprobs) - policy_logprobs(policy, c)).abs() for c in completions]
    return torch.cat(gaps).mean().item()


def assert_same_greedy(policy, first, second) -> bool:
    """Equal greedy decodings, or parted only where the policy's top two logits nearly tie.
    Returns whether they were exactly equal."""
    a, b = first.token_ids, second.token_ids
    if a == b:
        return True
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    logits = policy_logits(policy, first.prompt_token_ids, a[:common])[-1]
    top2 = logits.topk(2).values
    margin = (top2[0] - top2[1]).item()
    assert margin < NEAR_TIE, (
        f"greedy decodings part at token {common} with a clear margin {margin:.3f}: {a} vs {b}"
    )
    return False


def greedy(engine, max_tokens=24):
    return engine.generate(PROMPTS, SamplingConfig(temperature=0, max_tokens=max_tokens, stop=[]))


def test_engine_sits_on_its_gpu_and_leaves_the_trainer_device_alone(setup):
    devices = setup.engine.llm.apply_model(lambda model: str(next(model.parameters()).device))
    assert devices == ["cuda:0" if setup.colocate else "cuda:1"]
    assert torch.cuda.current_device() == 0


def test_n_samples_per_prompt_and_the_stop_string_is_kept(setup):
    engine = setup.engine
    free = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=32, stop=[], seed=0))
    stop = max(free, key=lambda c: len(c.text)).text[10:12]

    completions = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=32, stop=[stop], seed=0))

    assert [c.prompt_index for c in completions] == [i for i in range(len(PROMPTS)) for _ in range(4)]
    ended_on_stop = 0
    for c in completions:
        assert c.prompt_token_ids == [VOCAB[ch] for ch in PROMPTS[c.prompt_index]]
        assert 1 <= len(c.token_ids) <= 32
        # one character per token: the text is exactly the decoded tokens, nothing after the stop
        assert c.text == setup.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        if stop in c.text:
            ended_on_stop += 1
            assert c.text.endswith(stop) and c.text.count(stop) == 1 and c.finish_reason == "stop"
        elif c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS
        else:
            assert len(c.token_ids) == 32
    assert ended_on_stop > 0


def test_one_seed_per_call_samples_the_same_call_the_same(setup):
    """per_request_seeds false: the workers' sampler is reseeded with the call's seed
    (WorkerExtension.reseed_sampler), so the same call samples the same, whatever was sampled
    between, and another seed samples otherwise."""
    engine = setup.engine
    sampling = SamplingConfig(n=4, max_tokens=24, stop=[], seed=5)
    engine.per_request_seeds = False
    try:
        first = [c.token_ids for c in engine.generate(PROMPTS, sampling)]
        engine.generate(PROMPTS[:2], SamplingConfig(n=3, max_tokens=8, stop=[], seed=9))  # moves the generator
        again = [c.token_ids for c in engine.generate(PROMPTS, sampling)]
        other = [c.token_ids for c in engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=24, stop=[], seed=6))]
    finally:
        engine.per_request_seeds = True
    assert first == again
    assert first != other


def test_greedy_equals_hf_engine_greedy(setup):
    exact = [
        assert_same_greedy(setup.policy, vllm_c, hf_c)
        for vllm_c, hf_c in zip(greedy(setup.engine), greedy(setup.hf_engine))
    ]
    assert sum(exact) >= len(PROMPTS) - 1, "bf16 and fp32 should rarely meet a near-tie"


def test_engine_logprobs_match_policy_logprobs(setup):
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=24, stop=[], seed=1, logprobs=True)
    completions = setup.engine.generate(PROMPTS, sampling)
    assert all(len(c.logprobs) == len(c.token_ids) for c in completions)
    assert mean_logprob_gap(setup.policy, completions) < MAX_LOGPROB_GAP


def test_colocated_engine_sleeps_between_rollouts(setup):
    if not setup.colocate:
        pytest.skip("colocated mode is exercised on a 1-GPU machine (here the engine has its own GPU)")
    engine = setup.engine
    greedy(engine)
    assert engine._sleeping  # it went to sleep after the rollout
    engine.wake_up()
    free_awake = torch.cuda.mem_get_info(0)[0]
    engine.sleep()
    free_asleep = torch.cuda.mem_get_info(0)[0]
    assert free_asleep - free_awake > 1 << 30  # the KV cache (GiBs at 0.3 utilization) was freed
    assert greedy(engine)  # and it wakes up by itself for the next rollout


def test_weight_sync_after_optimizer_steps(setup):
    # Runs last: it trains the shared policy.
    policy, engine = setup.policy, setup.engine
    before = greedy(engine)
    stale_samples = engine.generate(
        PROMPTS, SamplingConfig(n=4, max_tokens=24, stop=[], seed=2, logprobs=True)
    )

    target = torch.tensor([[VOCAB[ch] for ch in "12+34=46<>12+34=46"]], device=policy.device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(5):
        loss = policy(target, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()

    # The engine still serves the old weights: its log-probs no longer match the policy's.
    stale_gap = mean_logprob_gap(policy, stale_samples)
    assert stale_gap > 10 * MAX_LOGPROB_GAP

    engine.load_weights(policy.named_parameters())  # what RolloutModule.sync_engine does

    after = greedy(engine)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    exact = [assert_same_greedy(policy, v, h) for v, h in zip(after, greedy(setup.hf_engine))]
    assert sum(exact) >= len(PROMPTS) - 1
    fresh = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=24, stop=[], seed=2, logprobs=True))
    assert mean_logprob_gap(policy, fresh) < MAX_LOGPROB_GAP
