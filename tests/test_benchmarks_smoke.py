"""CPU smoke runs of the GPU benchmarks in their `--tiny` mode (2-layer model, a few steps).

They check that every code path the GPU run takes works and that the JSON reports what it should;
the numbers themselves mean nothing on a CPU. The TRL variant and the vLLM engine run only where
their packages (and, for vLLM, a GPU) are present: on the GPU machine, with PYTHONPATH=/tmp/site.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GSM8K_FIXTURE = Path(__file__).parent / "fixtures" / "data" / "gsm8k_small.jsonl"
RESULTS = BENCHMARKS / "results"


def load_script(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    policy_update, rollouts = load_script("policy_update"), load_script("rollouts")
    import common

    previous_root, previous_threads = common.CACHE_ROOT, torch.get_num_threads()
    common.CACHE_ROOT = tmp_path_factory.mktemp("bench_cache")
    yield policy_update, rollouts, common
    common.CACHE_ROOT = previous_root
    torch.set_num_threads(previous_threads)  # the tiny runs use one thread


def has_modules(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


TINY = ["--tiny", "--device", "cpu", "--dtype", "float32", "--peak-tflops", "1.0"]


@pytest.mark.parametrize("variant", ["r1", "hf"])
@pytest.mark.parametrize("phase", ["grpo", "sft"])
def test_policy_update_tiny(scripts, variant, phase, tmp_path, capsys):
    policy_update = scripts[0]
    out = tmp_path / "result.json"
    result = policy_update.main(["--variant", variant, "--phase", phase, *TINY, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert json.loads(capsys.readouterr().out)["variant"] == variant  # stdout is one JSON object
    assert result["steps_timed"] == 2 and all(s > 0 for s in result["step_seconds"])
    # 8 sequences a step, prompt 4-12 and response 4-24 tokens: the real (unpadded) token counts
    assert all(8 * 8 <= t <= 8 * 36 for t in result["tokens_per_step"])
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] and result["mfu_causal"] < result["mfu"]
    assert result["config"]["gradient_accumulation_steps"] == 4 and result["config"]["gradient_checkpointing"]
    # the installed distribution's version (a CUDA wheel from PyPI says 2.x.y, its torch.__version__ 2.x.y+cu130)
    assert result["environment"]["versions"]["torch"] == importlib.metadata.version("torch")
    assert result["environment"]["command"].startswith("python ")


def test_policy_update_r1_packed_tiny(scripts):
    """Token-budget microbatches: same sequences, fewer microbatches than micro 2 x accumulation 4."""
    for phase in ("grpo", "sft"):
        result = scripts[0].main(["--variant", "r1-packed", "--phase", phase, *TINY, "--r1-microbatch-max-tokens", "64"])
        assert result["config"]["microbatch_max_tokens"] == 64 and result["steps_timed"] == 2


def test_policy_update_profile_of_a_warmup_step(scripts):
    result = scripts[0].main(["--variant", "hf", "--phase", "grpo", *TINY, "--profile-step", "0"])
    profile = result["profile"]
    assert profile["step"] == 0 and profile["wall_s_profiled"] > 0 and "Self CPU" in profile["table"]
    with pytest.raises(SystemExit):
        scripts[0].parse_args(["--tiny", "--profile-step", "1"])  # tiny has 1 warm-up step: 1 is timed


def test_weak_scaling_runs_one_gpu_the_powers_of_two_and_the_largest(scripts):
    counts = scripts[0].weak_scaling_devices
    assert counts(2) == [1, 2] and counts(4) == [1, 2, 4] and counts(8) == [1, 2, 4, 8] and counts(6) == [1, 2, 4, 6]


def test_same_batches_for_every_variant(scripts):
    policy_update = scripts[0]
    args = policy_update.parse_args(["--tiny"])
    _, first = policy_update.prepare(args)
    _, again = policy_update.prepare(args)
    assert [[(r.prompt_ids, r.response_ids, r.reward) for r in b] for b in first] == \
           [[(r.prompt_ids, r.response_ids, r.reward) for r in b] for b in again]
    groups = [b[i:i + 4] for b in first for i in range(0, 8, 4)]
    assert all(len({tuple(r.prompt_ids) for r in g}) == 1 for g in groups)  # a group shares its prompt


def test_word_tokenizer_round_trips_filler_and_stops(scripts):
    common = scripts[2]
    tokenizer = common.build_word_tokenizer(2048, ["Janet", "eggs"], stop_fraction=0.01)
    assert len(tokenizer) == 2048
    low, high = common.filler_range(tokenizer)
    ids = list(range(low, low + 5)) + [high - 1]
    assert tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.decode([high]).endswith("</answer>")  # the first stop token follows the filler
    assert tokenizer(" Janet eggs", add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids([" Janet", " eggs"])


def test_run_child_filters_options(scripts, tmp_path):
    common = scripts[2]
    child = tmp_path / "child.py"
    child.write_text("import json, sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                     "json.dump({'argv': sys.argv[1:-2]}, open(out, 'w'))\n")
    result = common.run_child(child, ["--variant", "all", "--tiny", "--out=x.json", "--phase", "sft"],
                              ("--variant", "--phase", "--out"), ["--variant", "r1"])
    assert result == {"argv": ["--tiny", "--variant", "r1"]}
    assert "error" in common.run_child(tmp_path / "missing.py", [], (), [])


def test_rollouts_hf_engine_tiny(scripts, tmp_path):
    rollouts = scripts[1]
    result = rollouts.main(["--model", "qwen1.5b-shape", "--engine", "hf", "--tiny", "--device", "cpu",
                            "--stop-token-fraction", "0.2", "--gsm8k", str(GSM8K_FIXTURE), "--out", str(tmp_path / "r.json")])
    hf = result["results"]["hf"]
    assert hf["completions"] == 4 * 2 and hf["generated_tokens"] > 0 and hf["tokens_per_s"] > 0
    assert 4 <= hf["min_length"] and hf["max_length"] <= 16  # min_tokens 4, max_tokens 16
    assert hf["finished_by_stop_string"] > 0  # a fifth of the ids end in </answer>
    total = hf["finished_by_stop_string"] + hf["finished_by_eos"] + hf["truncated_at_max_tokens"]
    assert total == pytest.approx(1.0)
    assert json.loads((tmp_path / "r.json").read_text())["results"]["hf"]["completions"] == 8


def test_rollouts_hf_engine_on_a_prefix_of_the_prompts(scripts):
    result = scripts[1].main(["--model", "qwen1.5b-shape", "--engine", "hf", "--tiny", "--device", "cpu",
                              "--hf-num-prompts", "2", "--gsm8k", str(GSM8K_FIXTURE)])
    hf = result["results"]["hf"]
    assert hf["prompts"] == 2 and hf["completions"] == 2 * 2


def test_grpo_step_tiny_reports_every_part(scripts, tmp_path):
    """The end-to-end benchmark runs `r1-lightning fit` on a derived configs/grpo.yaml and reads the
    breakdown back from the CSV log."""
    grpo_step = load_script("grpo_step")
    result = grpo_step.main(["--tiny", "--device", "cpu", "--steps", "2", "--gsm8k", str(GSM8K_FIXTURE),
                             "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "g.json")])
    assert result["fit_exit_code"] == 0 and [row["step"] for row in result["steps"]] == [0, 1]
    # the medians leave the warm-up step out (one by default)
    assert result["timed_steps"] == [1] and result["median_timed"]["step_s"] == result["steps"][1]["step_s"]
    windows = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert len(windows) == 2 and all(w["end"] > w["start"] for w in windows)  # StepClock: one window a step
    if shutil.which("nvidia-smi") is None:
        assert result["gpu_utilization_percent"] is None
    for row in result["steps"]:
        parts = sum(row[f"{part}_s"] for part in grpo_step.PARTS)
        assert row["rollout_s"] > 0 and row["update_s"] > 0 and 0 <= parts <= row["step_s"]
        assert row["response_length_mean"] <= 16
    assert result["shape"]["group_size"] == 2 and result["engine"]["class_path"].endswith("HFEngine")
    derived = (tmp_path / "run" / "grpo_step.yaml").read_text()
    assert "tokenizer_name_or_path" in derived and "enable_checkpointing: false" in derived
    assert "compile: false" in derived  # configs/grpo.yaml compiles; the smoke run must not wait for inductor


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_monitor_reads_memory_and_utilization_per_gpu(tmp_path, monkeypatch):
    """GpuMonitor polls nvidia-smi (here a stand-in printing two GPUs, then a busier second poll):
    the peak memory per GPU, and each GPU's mean utilization over the polls inside a time window."""
    sys.path.insert(0, str(BENCHMARKS))
    import common

    polls = tmp_path / "polls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {polls}
if [ "$(wc -l < {polls})" -eq 1 ]; then printf '1024, 40\\n4096, 100\\n'; else printf '3072, 60\\n2048, 100\\n'; fi
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with common.GpuMonitor(interval=0.05) as gpus:
        deadline = time.monotonic() + 30
        while len(gpus.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert gpus.peak_gb == [3.0, 4.0]
    (t0, first), (t1, second) = gpus.samples[:2]
    assert first == [40, 100] and second == [60, 100]
    assert gpus.utilization(t0, t1) == [50.0, 100.0]
    assert gpus.utilization(t1 + 0.01, t1 + 0.02) is None  # no poll inside (they are 0.05 s apart)
    assert gpus.utilization(t0, gpus.samples[-1][0]) == [round((40 + 60 * (len(gpus.samples) - 1)) / len(gpus.samples), 1),
                                                         100.0]
    assert "--id" not in polls.read_text()
    # with CUDA_VISIBLE_DEVICES, only those GPUs, in torch's numbering (nvidia-smi ignores the variable)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with common.GpuMonitor(interval=0.05) as gpus:
        deadline = time.monotonic() + 30
        while not gpus.samples and time.monotonic() < deadline:
            time.sleep(0.01)
    assert polls.read_text().splitlines()[-1].endswith("--id=1")


def test_grpo_step_refuses_warmup_steps_that_leave_nothing_timed(capsys):
    grpo_step = load_script("grpo_step")
    assert grpo_step.parse_args(["--steps", "8", "--warmup-steps", "3"]).warmup_steps == 3
    for steps, warmup in (("3", "3"), ("3", "-1")):
        with pytest.raises(SystemExit):
            grpo_step.parse_args(["--steps", steps, "--warmup-steps", warmup])
        assert f"--warmup-steps {warmup} must be at least 0 and below --steps {steps}" in capsys.readouterr().err


def test_grpo_step_tiny_async_rollouts_report_the_wait_and_the_wall_clock(scripts, tmp_path):
    """With --async-rollouts the step's time is the wait for the rollout sampled during the previous
    update, not the rollout itself; every step also has its wall clock (StepClock)."""
    grpo_step = load_script("grpo_step")
    result = grpo_step.main(["--tiny", "--device", "cpu", "--steps", "2", "--async-rollouts", "--gsm8k",
                             str(GSM8K_FIXTURE), "--workdir", str(tmp_path / "run")])
    assert result["fit_exit_code"] == 0 and result["async_rollouts"] and [r["step"] for r in result["steps"]] == [0, 1]
    assert result["engine"]["init_args"]["own_weights"] is True
    for row in result["steps"]:
        assert row["wall_step_s"] >= row["step_s"] - row["rollout_wait_s"] - row["weight_sync_s"] > 0
        assert row["other_s"] >= 0  # the step is made of the wait, the update and the sync, not the rollout
    with pytest.raises(SystemExit, match="VLLMEngine options"):
        grpo_step.main(["--tiny", "--device", "cpu", "--engine-process", "separate", "--gsm8k", str(GSM8K_FIXTURE)])


def test_rollouts_vllm_without_gpu_fails_clearly(scripts):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the vLLM engine is exercised by the real benchmark run")
    rollouts = scripts[1]
    with pytest.raises(SystemExit, match="vllm engine: the vLLM engine needs a CUDA GPU"):
        rollouts.main(["--model", "qwen1.5b-shape", "--engine", "vllm", "--tiny", "--device", "cpu",
                       "--gsm8k", str(GSM8K_FIXTURE)])


@pytest.mark.skipif(not has_modules("trl", "datasets", "accelerate"),
                    reason="the TRL variant needs trl==1.16.0, datasets and accelerate (on the GPU machine: "
                           "PYTHONPATH=/tmp/site); run benchmarks/policy_update.py --variant trl there")
@pytest.mark.parametrize("phase", ["grpo", "sft"])
def test_policy_update_trl_tiny(scripts, phase):
    result = scripts[0].main(["--variant", "trl", "--phase", phase, *TINY])
    assert result["steps_timed"] == 2 and result["config"]["gradient_checkpointing"]


@pytest.mark.skipif(not (torch.cuda.is_available() and has_modules("vllm")),
                    reason="the vLLM engine needs a CUDA GPU and vllm==0.26.0: run benchmarks/rollouts.py on the GPU machine")
def test_rollouts_vllm_tiny(scripts):
    result = scripts[1].main(["--model", "qwen1.5b-shape", "--engine", "both", "--tiny", "--sync-repeats", "2",
                              "--gpu-memory-utilization", "0.3", "--enforce-eager"])
    assert "tokens_per_s" in result["results"]["vllm"], result["results"]["vllm"]


def test_results_document_matches_its_raw_files():
    """benchmarks/results/README.md names exactly the files (and folders, as `name/`) in raw/, and
    its update ratios are the ones the raw JSON gives."""
    doc = (RESULTS / "README.md").read_text()
    named = set(re.findall(r"`([\w.-]+\.(?:json|csv|log))`", doc))
    folders = set(re.findall(r"`([\w.-]+)/`", doc)) - {"raw"}  # the intro names raw/ itself
    assert named | folders == {p.name for p in (RESULTS / "raw").iterdir()}
    assert all((RESULTS / "raw" / name).is_dir() for name in folders)
    raw = {name: json.loads((RESULTS / "raw" / name).read_text()) for name in named if name.endswith(".json")}
    for r1, trl in [("update_r1_16k", "update_trl"), ("update_r1_4k_chunk256", "update_trl"),
                    ("update_r1_4k_chunk256_compile", "update_trl"), ("update_sft_r1_4k_chunk256", "update_sft_trl")]:
        ratio = raw[f"{r1}.json"]["tokens_per_s"] / raw[f"{trl}.json"]["tokens_per_s"]
        assert f"{ratio:.2f}×" in doc, (r1, ratio)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_runner_parses():
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu" / "run.sh")], check=False).returncode == 0


def test_pipeline_report_reads_the_committed_pipeline_files(tmp_path, capsys):
    """benchmarks/pipeline_report.py on raw/pipeline_gsm8k: its table carries the evaluations' own
    accuracies (the last r1 evaluation, TRL's after SFT and after GRPO), and it draws the figure."""
    report = load_script("pipeline_report")
    folder = RESULTS / "raw" / "pipeline_gsm8k"
    report.main([str(folder), "--png", str(tmp_path / "curves.png")])
    table = capsys.readouterr().out
    last_r1 = max(folder.glob("r1_eval_step_*_summary.json"), key=lambda p: int(p.stem.split("_")[3]))
    trl = json.loads((folder / "trl_pipeline.json").read_text())["evaluations"]
    for summary in (json.loads(last_r1.read_text()), trl["sft"], trl["grpo"][-1]):
        assert f"| {100 * summary['answer_accuracy']:.1f}% | {100 * summary['format_rate']:.1f}% |" in table
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def write_run(folder: Path, train: list[tuple[float, float]], evals: dict[int, tuple[float, float]]) -> None:
    """A CSV log as Lightning's CSVLogger writes it (an evaluation row with empty train cells, then one
    row per step) and the evaluation callback's summaries."""
    folder.mkdir(parents=True)
    lines = ["step,train/reward_mean,train/answer_reward,train/format_reward,train/response_length,val/answer_accuracy",
             "0,,,,,0.5"]  # the CSV's own val row: the report takes evaluations from the summaries
    lines += [f"{step},{answer + 0.1 * fmt},{answer},{fmt},{100 - step}," for step, (answer, fmt) in enumerate(train)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    for step, (accuracy, fmt) in evals.items():
        (folder / f"eval_step_{step}_summary.json").write_text(json.dumps(
            {"n": 50, "answer_accuracy": accuracy, "format_rate": fmt, "response_tokens_mean": 10.0}))


def test_async_learning_report_keeps_runs_and_steps_apart(tmp_path, capsys):
    """benchmarks/async_learning_report.py on two made-up runs whose every value differs: each table
    row and each curve carries its own run's values at their own steps (evaluations at 0, 2 and 10,
    which sort differently as text)."""
    report = load_script("async_learning_report")
    write_run(tmp_path / "sync", [(0.0, 0.1), (0.2, 0.6), (0.4, 0.9)], {10: (0.3, 1.0), 0: (0.1, 0.2), 2: (0.2, 0.5)})
    write_run(tmp_path / "async", [(0.0, 0.0), (0.0, 0.2), (0.1, 0.7)], {2: (0.05, 0.25), 10: (0.15, 0.75), 0: (0.1, 0.2)})
    report.main([str(tmp_path), "--png", str(tmp_path / "curves.png")])
    table = capsys.readouterr().out
    # sync: format reward 0.6 >= 0.5 first at step 1, answer reward mean (0 + 0.2 + 0.4) / 3;
    # async: 0.7 at step 2, (0 + 0 + 0.1) / 3
    assert "| synchronous | 10.0% / 20.0% / 30.0% | 20.0% / 50.0% / 100.0% | 1 | 0.2000 |" in table
    assert "| one step off | 10.0% / 5.0% / 15.0% | 20.0% / 25.0% / 75.0% | 2 | 0.0333 |" in table
    assert "at step 0 / 2 / 10 |" in table
    panels = {panel.title: panel.lines for panel in report.panels(report.read_runs(tmp_path))}
    assert panels["train format reward"] == {"synchronous": [(0, 0.1), (1, 0.6), (2, 0.9)],
                                             "one step off": [(0, 0.0), (1, 0.2), (2, 0.7)]}
    assert panels["response length (tokens)"]["one step off"] == [
        (0, 100.0), (1, 99.0), (2, 98.0)]
    assert panels["held-out accuracy (greedy), 50 questions"] == {"synchronous": [(0, 0.1), (2, 0.2), (10, 0.3)],
                                                                  "one step off": [(0, 0.1), (2, 0.05), (10, 0.15)]}
    assert panels["held-out format rate, 50 questions"]["one step off"] == [(0, 0.2), (2, 0.25), (10, 0.75)]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_async_learning_report_averages_seeds_step_by_step(tmp_path, capsys):
    """Several folders (one per seed): each gets its own table, then the mean over the seeds at the
    steps they all have (an evaluation only one seed made is left out)."""
    report = load_script("async_learning_report")
    seeds = {"seed0": ([(0.0, 0.1), (0.2, 0.6), (0.4, 0.9)], {0: (0.1, 0.2), 10: (0.3, 1.0)}),
             "seed1": ([(0.2, 0.3), (0.4, 0.4), (0.0, 0.5)], {0: (0.3, 0.4), 10: (0.5, 0.0), 20: (0.9, 0.9)})}
    for seed, (train, evals) in seeds.items():
        for run in ("sync", "async"):
            write_run(tmp_path / seed / run, train, evals)
    report.main([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
    out = capsys.readouterr().out
    assert "| synchronous | 10.0% / 30.0% | 20.0% / 100.0% | 1 | 0.2000 |" in out  # seed 0's own table
    mean = out.split("mean of 2:")[1]
    # accuracy (0.1+0.3)/2, (0.3+0.5)/2; format (0.2+0.4)/2, (1+0)/2; train format 0.2, 0.5, 0.7 -> step 1;
    # answer reward 0.1, 0.3, 0.2 -> 0.2
    assert "| synchronous | 20.0% / 40.0% | 30.0% / 50.0% | 1 | 0.2000 |" in mean
    assert "at step 0 / 10 |" in mean


def test_async_learning_report_pairs_each_seeds_runs(tmp_path, capsys):
    """The paired differences: one step off minus synchronous per seed, then mean and standard error
    over the seeds, for held-out accuracy and for the train rewards' ten-step windows."""
    report = load_script("async_learning_report")
    runs = {("seed0", "sync"): ([(0.0, 0.1), (0.2, 0.6), (0.4, 0.9)], {10: (0.3, 1.0)}),
            ("seed0", "async"): ([(0.0, 0.0), (0.0, 0.2), (0.1, 0.7)], {10: (0.1, 1.0)}),
            ("seed1", "sync"): ([(0.2, 0.3), (0.4, 0.4), (0.0, 0.5)], {10: (0.5, 1.0)}),
            ("seed1", "async"): ([(0.1, 0.3), (0.1, 0.3), (0.1, 0.3)], {10: (0.2, 1.0)})}
    for (seed, run), (train, evals) in runs.items():
        write_run(tmp_path / seed / run, train, evals)
    report.main([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
    table = capsys.readouterr().out.split("paired differences:")[1]
    # accuracy: -20 and -30 points -> -25 +/- 5 (sd 7.07 / sqrt 2)
    assert "| held-out accuracy, step 10 | 40.0 | 15.0 | -25.0 ± 5.0 pts |" in table
    # answer reward over steps 0-2: sync 0.2 and 0.2, one step off 0.0333 and 0.1 -> -0.1333 +/- 0.0333
    assert "| train answer reward, steps 0–2 | 0.2000 | 0.0667 | -0.1333 ± 0.0333 |" in table
    # format: sync 1.6/3 and 1.2/3, one step off 0.9/3 and 0.9/3: -0.2333 and -0.1 -> -0.1667 +/- 0.0667
    assert "| train format reward, steps 0–2 | 0.4667 | 0.3000 | -0.1667 ± 0.0667 |" in table
    # --lagged: another one-step-off folder in each seed folder takes async/'s place
    for seed in ("seed0", "seed1"):
        write_run(tmp_path / seed / "async_other", [(0.0, 0.5)] * 3, {10: (0.4, 1.0)})
    report.main([str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--lagged", "async_other", "other"])
    table = capsys.readouterr().out.split("paired differences:")[1]
    assert "| quantity | synchronous | other |" in table
    # +10 and -10 points: mean 0, standard deviation 14.14, standard error 10
    assert "| held-out accuracy, step 10 | 40.0 | 40.0 | +0.0 ± 10.0 pts |" in table


def test_grpo_step_layout_options_derive_the_config(tmp_path):
    """--layout / --devices / --strategy / --rollout-batch-size become the fit's config: colocated
    FSDP2 on 2 ranks, and split 1+1."""
    grpo_step = load_script("grpo_step")
    args = grpo_step.parse_args(["--layout", "colocated", "--devices", "2", "--strategy", "fsdp2",
                                 "--rollout-batch-size", "128", "--model", "qwen7b-shape"])
    config = grpo_step.derived_config(args, tmp_path / "model", tmp_path / "gsm8k.jsonl", tmp_path)
    trainer, init = config["trainer"], config["model"]["init_args"]
    assert trainer["devices"] == 2 and trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert trainer["strategy"]["init_args"] == {"data_parallel_size": 2, "tensor_parallel_size": 1}
    assert init["engine"]["init_args"] | {"colocate": True, "process": "in_process", "device": "auto",
                                          "gpu_memory_utilization": 0.35} == init["engine"]["init_args"]
    # 128 rollouts = 16 questions x group 8 per rank, one update of 128 in microbatches of 2
    batching = init["batching"]
    assert (batching["rollout_batch_size"], batching["train_batch_size"], batching["gradient_accumulation_steps"],
            batching["group_size"]) == (128, 128, 64, 8)
    assert "batch_size" not in config["data"]["init_args"]  # GRPOModule sets it: 128 / 8 = 16 questions
    split = grpo_step.derived_config(grpo_step.parse_args(["--layout", "split", "--engine-process", "separate"]),
                                     tmp_path / "model", tmp_path / "gsm8k.jsonl", tmp_path)
    assert split["trainer"]["devices"] == 1 and "strategy" not in split["trainer"]
    engine = split["model"]["init_args"]["engine"]["init_args"]
    assert (engine["colocate"], engine["device"], engine["process"]) == (False, "auto", "separate")
    # split 2+2 (run.sh layouts on 4 GPUs): 2 DDP ranks, each with an engine process of its own
    split = grpo_step.derived_config(grpo_step.parse_args(["--layout", "split", "--devices", "2", "--engine-process",
                                                           "separate"]), tmp_path / "model", tmp_path / "g.jsonl", tmp_path)
    assert (split["trainer"]["devices"], split["trainer"]["strategy"]) == (2, "ddp")
    engine = split["model"]["init_args"]["engine"]["init_args"]
    assert (engine["colocate"], engine["device"], engine["process"]) == (False, "auto", "separate")


def test_qwen7b_shape_has_the_7b_parameter_count(scripts):
    """Qwen2.5-Math-7B: 7.62B parameters (untied head) from the config's numbers, on the meta device."""
    common = scripts[2]
    hidden, layers, inter, vocab, kv = 3584, 28, 18944, 152064, 4 * 128
    per_layer = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden + 3 * hidden * inter + 2 * hidden
    assert common.shape_parameters(common.QWEN_7B_SHAPE) == 2 * vocab * hidden + layers * per_layer + hidden


def test_policy_update_ddp_tiny_reports_rank_zero_once(scripts, tmp_path):
    """--devices 2: the r1 update under DDP on 2 CPU ranks (Lightning starts rank 1 by running the
    script again), each rank the full batch; one JSON, rank 0's."""
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "policy_update.py"), "--variant", "r1-packed", "--phase",
                           "grpo", *TINY, "--devices", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=240, check=False, env={**os.environ, "R1L_BENCH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["devices"] == 2 and result["steps_timed"] == 2
    assert all(8 * 8 <= t <= 8 * 36 for t in result["tokens_per_step"])  # one rank's 8 sequences per step
    assert "GLOBAL_RANK: 1" in proc.stderr + proc.stdout
    assert json.loads(proc.stdout)["devices"] == 2  # stdout: one JSON object


def test_a_fit_stopped_early_leaves_its_log_and_each_threads_stack(scripts, tmp_path):
    """grpo_step.run_fit: the fit's output goes to the log as it comes; stopped at its timeout, the
    fit first prints where it waits (SIGUSR2, which the CLI hands to faulthandler), then its process
    group is killed, children included."""
    grpo_step = load_script("grpo_step")
    child_pid = tmp_path / "child.pid"
    hang = f"""
import faulthandler, pathlib, signal, subprocess, sys, time
faulthandler.register(signal.SIGUSR2, all_threads=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path({str(child_pid)!r}).write_text(str(child.pid))
print("step 0 done", flush=True)
def waiting_for_a_collective():
    time.sleep(600)
waiting_for_a_collective()
"""
    log = tmp_path / "fit.log"
    start = time.monotonic()
    code, cut = grpo_step.run_fit([sys.executable, "-c", hang], dict(os.environ), log, timeout=8)
    assert cut and code != 0 and time.monotonic() - start < 60
    text = log.read_text()
    assert "step 0 done" in text and "in waiting_for_a_collective" in text
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child_pid.read_text()}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # killed with the group; reaped by init
    assert not Path(f"/proc/{child_pid.read_text()}").exists() or \
        "Z" in Path(f"/proc/{child_pid.read_text()}/stat").read_text().split()[2]
