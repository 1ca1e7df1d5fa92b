"""Shared pieces of the GPU benchmarks (`policy_update.py`, `rollouts.py`).

- the Qwen2.5-Math-1.5B shape (random weights from its config, no download) and a 2-layer `--tiny` shape;
- `build_word_tokenizer`: an offline word-level tokenizer of any vocabulary size (151,936 for the 1.5B
  shape), lossless on its own token strings, optionally with "stop tokens" whose text ends in `</answer>`;
- `smollm2_hf_folder`: SmolLM2-135M-Instruct's GGUF file -> a Hugging Face folder (vLLM loads it);
- `make_rollout_batches`: seeded synthetic GRPO batches (groups sharing a prompt, rollout-like lengths);
- the environment record (GPU, versions, date, command), the measured bf16 matmul peak, the MFU formula,
  and JSON output.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(os.environ.get("R1L_BENCH_CACHE", "/tmp/r1l-bench"))
DEFAULT_GGUF = os.environ.get("SMOLLM2_GGUF", "/tmp/site/_models/SmolLM2-135M-Instruct.Q4_1.gguf")

# Qwen2.5-Math-1.5B's config.json (architecture only): 1,543,714,304 parameters, tied embeddings.
QWEN_15B_SHAPE = {
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "use_sliding_window": False,
}
# Qwen2.5-Math-7B's config.json (architecture only): 7,615,616,512 parameters, untied LM head.
QWEN_7B_SHAPE = dict(QWEN_15B_SHAPE, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
TINY_SHAPE = dict(QWEN_15B_SHAPE, vocab_size=1024, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


# ----------------------------------------------------------------------------------- tokenizer
EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = [c for c in string.printable if c not in "\r\x0b\x0c"]


def build_word_tokenizer(vocab_size: int, words=(), stop_fraction: float = 0.0):
    """A word-level tokenizer with exactly `vocab_size` ids, built in code (no download).

    Ids: EOS (= pad) and UNK, the R1-Zero tags, every printable ASCII character (the fallback that
    keeps decoding lossless, which HF's StopStringCriteria needs), the given words (`word` and
    ` word`, up to half the free room), filler tokens ` w0`, ` w1`, ... and, last, `stop tokens`
    ` z0</answer>`, ` z1</answer>`, ... (`stop_fraction` of the vocabulary). A model with random
    weights samples almost uniformly, so each sampled token ends the sample on the `</answer>` stop
    string with probability ~stop_fraction: lengths become geometric with mean ~1/stop_fraction
    (capped by max_tokens), ended by the engines' real stop-string machinery. Filler text decodes and
    re-encodes to the same ids, so SFT paths that tokenize text see exactly the synthetic ids.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    head = [EOS_TOKEN, UNK_TOKEN, *TAG_TOKENS, *CHARACTERS]
    n_stop = round(stop_fraction * vocab_size)
    room = vocab_size - len(head) - n_stop
    if room < 16:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for filler tokens")
    pieces: list[str] = []
    for word in sorted({w for w in words if len(w) >= 2 and w.isascii() and w.isalpha()}):
        if len(pieces) + 2 > room // 2:
            break
        pieces += [word, " " + word]
    n_fill = room - len(pieces)
    tokens = [*head, *pieces, *(f" w{i}" for i in range(n_fill)), *(f" z{i}</answer>" for i in range(n_stop))]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == vocab_size == len(tokens), "duplicate token strings"
    known = sorted(pieces[::2], key=len, reverse=True)
    pattern = (r" ?(?:" + "|".join(map(re.escape, known)) + r")\b|" if known else "") + r" w\d+| z\d+</answer>|[\s\S]"
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_tokens([AddedToken(tag, normalized=False) for tag in TAG_TOKENS])
    backend.add_special_tokens([AddedToken(EOS_TOKEN, normalized=False, special=True)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    return tokenizer


def filler_range(tokenizer) -> tuple[int, int]:
    """[first, last) ids of the ` wN` filler tokens of a (possibly reloaded) `build_word_tokenizer`."""
    ids = sorted(i for token, i in tokenizer.get_vocab().items() if re.fullmatch(r" w\d+", token))
    if not ids or ids[-1] - ids[0] + 1 != len(ids):
        raise ValueError("not a build_word_tokenizer tokenizer: no contiguous ` wN` filler tokens")
    return ids[0], ids[-1] + 1


# ----------------------------------------------------------------------------------- data
def find_gsm8k(path: str | None = None) -> Path:
    """GSM8K test questions: `path`, else $R1L_GSM8K, else the copy shipped in data/."""
    candidates = [path, os.environ.get("R1L_GSM8K"), REPO_ROOT / "data/gsm8k/test.jsonl"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"GSM8K test.jsonl not found (tried {[c for c in candidates if c]}); pass --gsm8k PATH")


def gsm8k_questions(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


def r1_zero_prompts(questions: list[str], n: int) -> list[str]:
    """The first n questions (cycled if there are fewer) in the R1-Zero template."""
    from r1_lightning.data import load_template, render_prompt

    template = load_template("r1_zero")
    return [render_prompt(template, questions[i % len(questions)]) for i in range(n)]


def template_and_question_words(questions: list[str]) -> list[str]:
    from r1_lightning.data import load_template

    return re.findall(r"[A-Za-z]+", load_template("r1_zero") + " " + " ".join(questions))


@dataclass
class Rollout:
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def make_rollout_batches(n_steps: int, n_prompts: int, group_size: int, prompt_len: tuple[int, int],
                         response_len: tuple[int, int], token_range: tuple[int, int], seed: int) -> list[list[Rollout]]:
    """n_steps batches of n_prompts x group_size rollouts, group-major (the samples of prompt 0 first).

    Prompt lengths ~ U[prompt_len], response lengths ~ U[response_len] (inclusive), token ids ~
    U[token_range), rewards ~ Bernoulli(0.5): random advantages after group normalization.
    """
    gen = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int, size: int = 1) -> list[int]:
        return torch.randint(low, high, (size,), generator=gen).tolist()

    batches = []
    for _ in range(n_steps):
        batch = []
        for _ in range(n_prompts):
            prompt = randint(*token_range, randint(prompt_len[0], prompt_len[1] + 1)[0])
            for _ in range(group_size):
                response = randint(*token_range, randint(response_len[0], response_len[1] + 1)[0])
                batch.append(Rollout(prompt, response, float(randint(0, 2)[0])))
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------------- model folders
def _complete(folder: Path) -> bool:
    return (folder / "COMPLETE").exists()


def _finish(tmp: Path, folder: Path) -> Path:
    (tmp / "COMPLETE").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def random_model_folder(shape: dict, tokenizer, name: str, seed: int = 0, root: Path | None = None) -> Path:
    """A Qwen2 model of `shape` with seeded random weights (bf16) + `tokenizer`, saved as a HF folder.

    Cached under root by a hash of (shape, seed, tokenizer): every benchmark process, engine and
    variant loads exactly the same weights.
    """
    from transformers import AutoModelForCausalLM, Qwen2Config

    layout = 2  # bump when what is saved changes
    init_device = "cuda" if torch.cuda.is_available() else "cpu"  # the same seed draws differently there
    key = hashlib.sha256(json.dumps([layout, shape, seed, init_device, tokenizer.backend_tokenizer.to_str()],
                                    sort_keys=True).encode())
    folder = Path(root or CACHE_ROOT) / f"{name}-{key.hexdigest()[:10]}"
    if _complete(folder):
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = Qwen2Config(**shape, **ids)
    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    # initialized on the GPU where there is one: 1.5B random draws take ~30 s on the CPU
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.update(**ids)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # transformers 5 reloads any tokenizer saved beside a qwen2 config.json as a byte-level BPE
    # Qwen2Tokenizer (its own pre-tokenizer and decoder): keep an exact copy where no config.json is.
    tokenizer.save_pretrained(tmp / "tokenizer")
    print(f"[bench] wrote {folder} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return _finish(tmp, folder)


# --model name -> (shape, description) of the random-weight models the step benchmarks build
ROLLOUT_SHAPES = {"qwen1.5b-shape": (QWEN_15B_SHAPE, "Qwen2.5-Math-1.5B"), "qwen7b-shape": (QWEN_7B_SHAPE, "Qwen2.5-Math-7B")}


def qwen_shape_rollout_folder(questions: list[str], tiny: bool, stop_fraction: float,
                              model: str = "qwen1.5b-shape") -> tuple[Path, str]:
    """A `ROLLOUT_SHAPES` model (or the tiny one) with random weights and a word tokenizer that knows
    the R1-Zero template's and the questions' words, `stop_fraction` of its ids ending in `</answer>`
    (shared by rollouts.py and grpo_step.py). Returns (folder, description)."""
    shape, title = ROLLOUT_SHAPES[model]
    shape = TINY_SHAPE if tiny else shape
    tokenizer = build_word_tokenizer(shape["vocab_size"], template_and_question_words(questions), stop_fraction)
    name = "tiny-qwen2-rollouts" if tiny else f"{title.lower()}-shape-rollouts"
    note = (f"{title} shape{' (tiny: 2 layers)' if tiny else ''}, random weights; word-level "
            f"tokenizer, {stop_fraction:.5f} of its ids end in `</answer>`")
    return random_model_folder(shape, tokenizer, name), note


def load_bench_tokenizer(folder: str | Path):
    """The folder's tokenizer, exactly as built: from `folder/tokenizer` when there is one (see
    `random_model_folder`), else from the folder; pad = EOS when unset (as r1-lightning does)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def smollm2_hf_folder(gguf_path: str | Path = DEFAULT_GGUF, out_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct's GGUF -> a plain Hugging Face folder (float32 weights + tokenizer, EOS = pad =
    <|im_end|>, id 2, as in the GGUF).

    transformers dequantizes the GGUF (needs the `gguf` package) but refuses to `save_pretrained` a
    model it marks as quantized, so the weights go into a fresh `from_config` model first. Cached:
    returns at once when `out_dir` is already complete.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder = Path(out_dir) if out_dir else CACHE_ROOT / "smollm2-135m-instruct-hf"
    if _complete(folder):
        return folder
    if not gguf_path.is_file():
        raise FileNotFoundError(
            f"SmolLM2 GGUF not found at {gguf_path}: unpack the device pack (pack-gpu-extras.sh --smollm2) "
            "or set SMOLLM2_GGUF / --gguf"
        )
    import importlib.util

    for package in ("gguf", "accelerate"):  # transformers needs both to read a GGUF file
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"reading a GGUF file needs the `{package}` package (the device pack: PYTHONPATH=/tmp/site)")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the config: missing {missing}, unexpected {unexpected}")
    model.generation_config = loaded.generation_config
    # transformers (5.17-5.23) reads the GGUF's EOS as <|im_start|>; the file says eos = pad = id 2
    # (<|im_end|>), as the generation config does: restore that.
    eos_id = loaded.generation_config.eos_token_id
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    tokenizer.eos_token = tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos_id)
    tokenizer.clean_up_tokenization_spaces = False  # a byte-level BPE: clean-up would eat spaces
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _finish(tmp, folder)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embedding/LM head counted once


# ----------------------------------------------------------------------------------- GPU, timing
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible (use --device cpu with --tiny for a smoke run)")
    return device if device.type != "cuda" or device.index is not None else torch.device("cuda:0")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall-clock seconds of regions, with the device synchronized at both ends.

    profile_step: run `torch.profiler` over that region (0 = the first) and keep, in `self.profile`,
    its busiest operators and the total time kernels kept the GPU busy: a step whose kernel time is
    far below its wall time is waiting on the CPU (Python, launches, syncs), not on the GPU.
    """

    def __init__(self, device: torch.device, profile_step: int | None = None) -> None:
        self.device, self.seconds, self._start = device, [], None
        self.profile_step, self.profile, self._profiler = profile_step, None, None

    def start(self) -> None:
        synchronize(self.device)
        if self.profile_step == len(self.seconds):
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self._profiler = profile(activities=activities)
            self._profiler.__enter__()
        self._start = time.perf_counter()

    def stop(self) -> float:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            from torch.autograd import DeviceType

            events = self._profiler.key_averages()
            # Kernels only: an operator's row also carries its kernels' time, so summing every row
            # counts it twice (the table's "Self CUDA time total" sums these same rows).
            device_us = sum(e.self_device_time_total for e in events
                            if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
            sort_by = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            self.profile = {"step": self.profile_step, "wall_s_profiled": self.seconds[-1],
                            "kernel_time_s": device_us / 1e6, "table": events.table(sort_by=sort_by, row_limit=25)}
            self._profiler = None
        return self.seconds[-1]


class GpuMonitor:
    """Every visible GPU's memory in use and utilization (`nvidia-smi`, polled every `interval` s on a
    thread) while the block runs, all processes together (a trainer and the vLLM engines beside it,
    whatever allocator they use). `peak_gb`: the most memory in use per GPU; `utilization(start, end)`:
    each GPU's mean utilization (%: the share of time a kernel ran, as the driver samples it) over the
    polls between two `time.time()` stamps. Both stay None without nvidia-smi. GPUs are listed as torch
    numbers them: those in CUDA_VISIBLE_DEVICES, in its order (nvidia-smi itself ignores it)."""

    QUERY = ("nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits")

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.interval, self.peak_gb, self._stop = interval, None, threading.Event()
        self.samples: list[tuple[float, list[float]]] = []  # (time.time(), utilization % per GPU)
        self._thread = threading.Thread(target=self._poll, name="gpu-monitor", daemon=True)

    def _poll(self) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        query = [*self.QUERY, f"--id={visible}"] if visible else list(self.QUERY)
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
                rows = [[float(x) for x in line.split(",")] for line in out.strip().splitlines()]
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            used = [memory / 1024 for memory, _ in rows]
            self.peak_gb = [round(max(a, b), 2) for a, b in zip(self.peak_gb or used, used)]
            self.samples.append((time.time(), [utilization for _, utilization in rows]))
            self._stop.wait(self.interval)

    def utilization(self, start: float, end: float) -> list[float] | None:
        """Mean utilization (%) per GPU of the polls in [start, end] (`time.time()`); None if none fell there."""
        inside = [per_gpu for t, per_gpu in self.samples if start <= t <= end]
        if not inside:
            return None
        return [round(sum(gpu) / len(inside), 1) for gpu in zip(*inside)]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_memory_gb": None, "peak_reserved_gb": None}
    return {"peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """The device's measured dense matmul rate (TFLOP/s): best of 5 trials of square matmuls
    (8192^3 on a GPU, 512^3 on the CPU), used as the MFU denominator."""
    n, iters = (8192, 20) if device.type == "cuda" else (512, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    best = 0.0
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        synchronize(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start) / 1e12)
    del a, b, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


MFU_FORMULA = (
    "model FLOPs per step = 6 * N * sum(T_i) + 12 * L * d * sum(T_i^2); T_i = real (non-padding) tokens of "
    "sequence i (prompt + response), N = all parameters (tied embedding/LM head counted once: it is the LM "
    "head matmul), L = layers, d = heads * head_dim; the attention term counts QK^T and AV forward + "
    "backward without causal halving (PaLM convention; mfu_causal halves it). Gradient-checkpointing "
    "recompute and padding are not counted (MFU, not HFU). MFU = FLOPs / step seconds / measured matmul peak."
)


def model_flops(n_params: int, n_layers: int, d_attn: int, seq_lens: list[int], causal: bool = False) -> float:
    attention = 12 * n_layers * d_attn * sum(t * t for t in seq_lens)
    return 6 * n_params * sum(seq_lens) + (attention / 2 if causal else attention)


def shape_parameters(shape: dict) -> int:
    """Parameters of a Qwen2 model of `shape` (built on the meta device: no memory, no init)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(Qwen2Config(**shape)))


def mfu_fields(flops: list[float], flops_causal: list[float], seconds: list[float], peak_tflops: float | None) -> dict:
    """Median achieved model TFLOP/s over steps, and MFU against `peak_tflops` (None: not measured)."""
    rate = median([f / s for f, s in zip(flops, seconds)]) / 1e12
    rate_causal = median([f / s for f, s in zip(flops_causal, seconds)]) / 1e12
    return {"achieved_model_tflops": rate, "mfu": rate / peak_tflops if peak_tflops else None,
            "mfu_causal": rate_causal / peak_tflops if peak_tflops else None}


def median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# ----------------------------------------------------------------------------------- record, output
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | None = None) -> dict:
    """Command, date, GPU and versions (read from package metadata: nothing is imported)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    env = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "transformers", "lightning", "r1-lightning", "vllm", "trl",
                                              "accelerate", "datasets", "tokenizers")},
        "cuda": torch.version.cuda,
        "env": {k: os.environ[k] for k in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    else:
        env["gpu"] = None
        env["cpu_threads"] = torch.get_num_threads()
    return env


def run_child(script: str | Path, argv: list[str], drop: tuple[str, ...], extra: list[str]) -> dict:
    """Run `script` in a fresh Python process with `argv` minus the options named in `drop` (and
    their values) plus `extra`; return the JSON it wrote to its --out, or an error record. Its output
    is forwarded to our stderr, so our stdout keeps only our own JSON."""
    import tempfile

    kept, skip = [], False
    for a in argv:
        if skip or a in drop:
            skip = not skip and a in drop
        elif not any(a.startswith(name + "=") for name in drop):
            kept.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, str(script), *kept, *extra, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        sys.stderr.write(proc.stdout)
        if proc.returncode == 0 and out.exists():
            return json.loads(out.read_text())
        return {"error": f"exit code {proc.returncode}", "output_tail": proc.stdout[-3000:]}


def write_partial(result: dict, out: str | None) -> None:
    """Write what is measured so far to --out (a run stopped by a time limit keeps it)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")


def emit(result: dict, out: str | None) -> dict:
    """Print the result as one JSON object on stdout and, with --out, write it to that file."""
    text = json.dumps(result, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text, flush=True)
    return result
