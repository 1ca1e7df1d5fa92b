"""Every command and config snippet in the README works as written: each `r1-lightning` line of its
code blocks parses (`fit`/`validate` with `--print_config`, `sweep` with `--dry_run`, `quickstart`'s
options), each YAML block overlays `configs/grpo.yaml`, the set-up commands are the ones `.ci/run`
runs, and the notebook command runs the notebook on a run folder."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from r1_lightning.__main__ import main as command
from r1_lightning.quickstart.run import build_parser as quickstart_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PLACEHOLDERS = {"N": "2", "M": "1", "N×M": "2", "$NODE_RANK": "0", "HOST": "127.0.0.1"}


def code_blocks(language: str = "") -> list[str]:
    return [b for lang, b in re.findall(r"^ *```(\w*)\n(.*?)^ *```", README, re.MULTILINE | re.DOTALL)
            if lang == language]


def command_lines() -> list[str]:
    """The README's shell lines (continuations joined, comments dropped)."""
    lines = []
    for block in code_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def r1_lightning_commands() -> list[list[str]]:
    """Each `r1-lightning ...` command (also after `srun`, and torchrun's `-m r1_lightning.cli`), as
    arguments, placeholders filled in and globs expanded from the repository's root."""
    commands = []
    for line in command_lines():
        if not line.startswith(("r1-lightning ", "pip ", "srun ", "torchrun ")):  # output shown, not a command
            continue
        for part in line.split("&&"):
            words = shlex.split(part)
            if "r1-lightning" in words:
                args = words[words.index("r1-lightning") + 1:]
            elif "r1_lightning.cli" in words:
                args = words[words.index("r1_lightning.cli") + 1:]
            else:
                continue
            args = [PLACEHOLDERS.get(a, a) for a in args]
            commands.append([m for a in args for m in (sorted(glob.glob(a, root_dir=ROOT)) if "*" in a else [a])])
    return commands


COMMANDS = r1_lightning_commands()


def test_the_readme_has_commands_of_every_subcommand():
    assert {args[0] for args in COMMANDS if args} >= {"fit", "validate", "quickstart", "sweep"}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:80] for a in COMMANDS])
def test_every_readme_command_parses(args, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    if args[0] == "quickstart":
        quickstart_parser().parse_args(args[1:])
        return
    if args[0] == "sweep":
        command([*args, "--dry_run", "--output", str(tmp_path)])
        return
    with pytest.raises(SystemExit) as exit_info:
        command([*args, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert "class_path: r1_lightning." in capsys.readouterr().out


@pytest.mark.parametrize("snippet", code_blocks("yaml"))
def test_every_readme_config_snippet_overlays_grpo(snippet, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    overlay = tmp_path / "snippet.yaml"
    overlay.write_text(snippet)
    with pytest.raises(SystemExit) as exit_info:
        command(["fit", "--config", "configs/grpo.yaml", "--config", str(overlay), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]


INLINE_OPTIONS = sorted(set(re.findall(r"`(--(?:model|data|trainer)\.[^`\s]+ [^`]+)`", README)))
INLINE_SETTINGS = sorted(set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)*): [^`]+`", README)))


@pytest.mark.parametrize("option", INLINE_OPTIONS)
def test_every_option_the_readme_names_in_its_text_parses(option, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        command(["fit", "--config", "configs/grpo.yaml", *[PLACEHOLDERS.get(a, a) for a in shlex.split(option)],
                 "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]


def test_every_setting_the_readme_names_in_its_text_is_an_option(capsys, monkeypatch):
    """`async_rollouts: true`, `process: separate`, ...: each key is an option of the GRPO config
    (with the vLLM engine or the HF engine), so a renamed option cannot leave the README behind."""
    monkeypatch.chdir(ROOT)
    keys = set()
    for engine in ([], ["--model.init_args.engine", "r1_lightning.rollout.HFEngine"]):
        with pytest.raises(SystemExit):
            command(["fit", "--config", "configs/grpo.yaml", *engine, "--print_config"])
        keys |= set(re.findall(r"^ *([a-z_]+):", capsys.readouterr().out, re.MULTILINE))
    assert INLINE_SETTINGS
    assert [s for s in INLINE_SETTINGS if s.split(".")[-1] not in keys] == []


def test_the_setup_commands_are_the_ones_ci_runs():
    """`.ci/run` runs the README's install (the CPU build of torch in the same `pip install`) and its
    test command, each verbatim, in a fresh virtualenv."""
    setup = [line for line in command_lines() if line.startswith("pip install -e")]
    install = next(line.split(" && ")[0] for line in setup if "r1-lightning quickstart" in line)
    tests = next(line for line in setup if line.endswith("python -m pytest"))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci
    assert ci.index(install) < ci.index(tests)
    assert "python3 -m venv" in "\n".join(ci[:ci.index(install)])


def small_run_folder(root: Path) -> Path:
    """A run folder as the CSV logger writes it, with two versions (a resumed run)."""
    header = "step,train/reward_mean,train/response_length,train/entropy,val/answer_accuracy\n"
    for version, rows in ((0, ["0,0.1,30,2.0,0.2", "1,0.2,28,1.9,"]), (1, ["2,0.4,25,1.7,", "3,0.5,24,1.6,0.6"])):
        folder = root / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(header + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("how", ["readme_from_root", "readme_from_notebooks", "nbconvert_from_notebooks"])
def test_the_readme_notebook_command_runs_the_notebook(tmp_path, how):
    """As the README says, from the root; the same from `notebooks/` (where Jupyter starts its
    kernel), and with `jupyter nbconvert --execute`: a run folder relative to the repository is
    found either way."""
    line = next(line for line in command_lines() if line.startswith("jupyter "))
    run = small_run_folder(ROOT / "runs" / f"test_readme_notebook_{tmp_path.name}")
    args, cwd = shlex.split(line), ROOT
    if how != "readme_from_root":
        args, cwd = [a.removeprefix("notebooks/") for a in args], ROOT / "notebooks"
    if how == "nbconvert_from_notebooks":
        args = ["jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(tmp_path), args[-1]]
    try:
        env = {**os.environ, "R1_RUN_DIR": str(run.relative_to(ROOT))}
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (run / "curves_from_notebook.png").stat().st_size > 10_000
    finally:
        shutil.rmtree(run)
    if how == "nbconvert_from_notebooks":
        executed = (tmp_path / "training_curves.ipynb").read_text()
        assert "held-out accuracy: 0.200 at step 0 -> 0.600 at step 3" in executed
