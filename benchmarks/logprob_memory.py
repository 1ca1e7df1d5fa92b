"""Peak CPU memory of per-token log-probs + entropy, forward and backward: naive vs chunked head.

Both variants go through the public `get_response_log_probs` on a stand-in "model" whose decoder
returns fixed hidden states (N tokens, H dims) and whose head is a Qwen-sized linear layer
(V = 151,936), so the numbers isolate the LM head + log-softmax, which is what chunking changes.
Each variant runs in a fresh subprocess and reports its peak RSS growth over the set-up (inputs,
weights) from `resource.getrusage(...).ru_maxrss`; the parent compares outputs and gradients.

    python benchmarks/logprob_memory.py --out benchmarks/results/logprob_memory_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from r1_lightning.functional import get_response_log_probs


class _FixedHiddenDecoder(torch.nn.Module):
    """A decoder that returns the same hidden states (1, N, H) whatever the input ids."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = torch.nn.Parameter(hidden)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=self.hidden)


class _HeadOnlyLM(torch.nn.Module):
    """The minimal causal-LM interface `get_response_log_probs` uses: decoder, linear head, logits."""

    def __init__(self, hidden: torch.Tensor, vocab_size: int):
        super().__init__()
        self.model = _FixedHiddenDecoder(hidden)
        self.lm_head = torch.nn.Linear(hidden.shape[-1], vocab_size, bias=False)

    def get_decoder(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.lm_head(self.model(input_ids).last_hidden_state))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_variant(args) -> None:
    """Child process: one forward + backward, then write timings, peak memory and outputs."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = _HeadOnlyLM(torch.randn(1, args.tokens, args.hidden), args.vocab)
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    labels = torch.randint(0, args.vocab, (1, args.tokens))
    token_weights = torch.randn(1, args.tokens)  # an arbitrary upstream gradient, like advantages
    chunk_size = None if args.variant == "naive" else args.variant
    # Warm up on 8 tokens so that lazily loaded kernels and thread pools are not counted as the
    # variant's memory.
    warm = get_response_log_probs(
        _HeadOnlyLM(torch.randn(1, 8, args.hidden), 64),
        labels[:, :8] % 64,
        labels[:, :8] % 64,
        return_token_entropy=True,
        chunk_size=chunk_size and 4,
    )
    (warm["log_probs"].sum() + warm["token_entropy"].sum()).backward()
    baseline = _peak_rss_bytes()

    start = time.perf_counter()
    out = get_response_log_probs(model, labels, labels, return_token_entropy=True, chunk_size=chunk_size)
    loss = (out["log_probs"] * token_weights).sum() + 0.01 * out["token_entropy"].sum()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()

    probe = torch.randn(args.hidden, generator=torch.Generator().manual_seed(1))
    torch.save(
        {
            "log_probs": out["log_probs"].detach(),
            "token_entropy": out["token_entropy"].detach(),
            "grad_hidden": model.model.hidden.grad,
            "grad_weight_probe": model.lm_head.weight.grad
            @ probe,  # (V,): the (V, H) grad is too big to keep
        },
        args.tensors,
    )
    print(
        json.dumps(
            {"peak_rss_delta_bytes": peak - baseline, "baseline_rss_bytes": baseline, "seconds": seconds}
        )
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--tokens", type=int, default=2048, help="B·T tokens of one microbatch")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child: "naive" or a chunk size
    parser.add_argument("--tensors", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        args.variant = args.variant if args.variant == "naive" else int(args.variant)
        run_variant(args)
        return

    shape = [
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--tokens",
        str(args.tokens),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ["naive", *args.chunk_sizes]:
            tensors = f"{tmp}/{variant}.pt"
            child = subprocess.run(
                [sys.executable, __file__, *shape, "--variant", str(variant), "--tensors", tensors],
                check=True,
                capture_output=True,
                text=True,
            )
            name = "naive" if variant == "naive" else f"chunked_{variant}"
            results[name] = json.loads(child.stdout.strip().splitlines()[-1])
            outputs[name] = torch.load(tensors)
            print(name, results[name], file=sys.stderr)

    naive_peak = results["naive"]["peak_rss_delta_bytes"]
    for name, result in results.items():
        if name == "naive":
            continue
        result["peak_ratio_naive_over_chunked"] = naive_peak / result["peak_rss_delta_bytes"]
        result["max_abs_diff_vs_naive"] = {
            key: (outputs[name][key] - outputs["naive"][key]).abs().max().item() for key in outputs["naive"]
        }
    report = {
        "benchmark": "per-token log-probs + entropy of a linear LM head, forward + backward, float32, CPU",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shape": {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab},
        "full_logits_float32_bytes": args.tokens * args.vocab * 4,
        "head_weight_float32_bytes": args.vocab * args.hidden * 4,
        "peak_rss_delta_bytes_measures": "ru_maxrss growth over the set-up, in a fresh process per variant; "
        "includes the (V, H) weight gradient, allocated by both variants",
        "results": results,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
