"""A fresh clone works: every config's data ships in `data/` (as documented there), nothing a user
runs depends on a folder outside the repository, a model that is not there fails at once in one
line (tests/test_readme.py: the README's set-up commands are the ones CI runs)."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
import yaml

from r1_lightning.data.readers import load_gsm8k, load_math, load_sft

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def data_paths(config: Path) -> dict[str, str]:
    """The file options of a config's data module (`*_path`, and `template` when it is a file)."""
    init_args = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args") or {}
    def is_file_option(key: str, value) -> bool:
        return isinstance(value, str) and (key.endswith("_path") or value.endswith(".prompt"))

    return {key: value for key, value in init_args.items() if is_file_option(key, value)}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_reads_data_inside_the_repository(config):
    for key, value in data_paths(config).items():
        path = (ROOT / value).resolve()
        assert path.is_relative_to(ROOT), f"{config.name}: {key}: {value} is outside the repository"
        assert path.is_file(), f"{config.name}: {key}: {value} is not in the clone"


def test_the_full_configs_name_their_data():
    # The overlays in configs/ablations may leave data alone; every full config names its data.
    for config in CONFIGS:
        if config.parent.name != "ablations":
            assert "train_path" in data_paths(config), config


def test_nothing_a_user_runs_points_outside_the_repository():
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / ".ci" / "run", *DATA.glob("**/*.md"),
             *(ROOT / "configs").rglob("*.*"), *(ROOT / "r1_lightning").rglob("*.py")]
    offenders = [str(f.relative_to(ROOT)) for f in files if "../shared" in f.read_text(errors="replace")]
    assert not offenders


def readme_table() -> list[tuple[str, int, int, str]]:
    """(file, lines, examples read, sha256) from data/README.md's table."""
    row = re.compile(r"^\| `([^`]+)` \| ([\d,]+) \| ([\d,]+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)
    return [(name, int(lines.replace(",", "")), int(read.replace(",", "")), sha)
            for name, lines, read, sha in row.findall((DATA / "README.md").read_text())]


def test_every_shipped_file_is_documented_and_parses(recwarn):
    table = readme_table()
    assert {name for name, *_ in table} == {str(p.relative_to(DATA)) for p in DATA.rglob("*.jsonl")}
    # MATH train, validation and MATH-500, GSM8K train and test, as upstream publishes them
    expected_lines = {"math/train.jsonl": 7500, "math/validation.jsonl": 5000, "math/math500.jsonl": 500,
                      "gsm8k/train.jsonl": 7473, "gsm8k/test.jsonl": 1319}
    for name, lines, read, sha in table:
        path = DATA / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, name
        assert path.read_bytes().count(b"\n") == lines == expected_lines.get(name, lines), name
        reader = load_sft if path.name.startswith("sft") else load_gsm8k if name.startswith("gsm8k") else load_math
        assert len(reader(path)) == read, name
    for folder in ("math", "gsm8k"):  # the MIT notices travel with the data
        assert "MIT License" in (DATA / folder / "LICENSE").read_text()


def test_the_quickstart_data_is_what_the_quickstart_writes(tmp_path):
    from r1_lightning.quickstart.run import TASK_SIZES
    from r1_lightning.quickstart.task import PROMPT_TEMPLATE, write_task_files

    written = write_task_files(tmp_path, **TASK_SIZES)
    for name in ("train", "val", "sft"):
        assert written[name].read_bytes() == (DATA / "quickstart" / f"{name}.jsonl").read_bytes(), name
    assert written["template"].read_text() == Path(PROMPT_TEMPLATE).read_text()


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["./models/qwen-typo", "/abs/missing/model", "~/no-such-r1l-model",
                                  "runs/x/checkpoints/last_hf"])
def test_a_missing_local_model_fails_at_once_naming_it(name):
    from r1_lightning.models import load_causal_lm, load_tokenizer

    for load in (load_tokenizer, load_causal_lm):
        start = time.perf_counter()
        with pytest.raises(OSError) as error:
            load(name)
        assert time.perf_counter() - start < 1.0
        assert str(error.value) == str(error.value).strip().split("\n")[0]
        assert f"model path {name!r} does not exist" in str(error.value)


def test_an_uncached_hub_model_fails_at_once_when_the_hub_is_out_of_reach(monkeypatch):
    """Not offline by setting, but no network: one look at the hub, then the same one-line advice."""
    import huggingface_hub

    from r1_lightning import models

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    cause = r"r1-lightning-tests/no-such-model' is not in the Hugging Face cache and \S+ cannot be reached: "
    with pytest.raises(OSError, match=cause + r".*--model.init_args.model_name_or_path /path/to/folder"):
        models.load_tokenizer("r1-lightning-tests/no-such-model")


def test_a_cached_hub_model_loads_without_the_network(monkeypatch, tmp_path, tiny_model_dir):
    """A hub id already in the Hugging Face cache loads from it, with the hub out of reach."""
    import shutil

    import huggingface_hub

    from r1_lightning import models

    snapshot = tmp_path / "hub" / "models--r1l--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(models, "_hub_reachable", lambda: pytest.fail("looked for the hub"))
    assert models.load_causal_lm("r1l/tiny", dtype="float32").config.num_hidden_layers == 2
