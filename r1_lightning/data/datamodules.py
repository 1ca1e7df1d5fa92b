"""LightningDataModules: SFT pairs, and prompt + ground-truth batches for GRPO, expert iteration, eval.

Batches are dicts of plain Python lists (strings mostly). Tokenization happens in the
LightningModule, which owns the tokenizer; rollouts need the prompt text anyway.

The train loader is a `ResumableDataLoader`: its order is a function of (seed, epoch) and its
position is saved in Lightning checkpoints, so `--ckpt_path last` continues with the very next
batch. Validation loaders read the file in order, without shuffling.

Order of operations for the train set: read the file -> (SFT only) keep the examples whose
response is graded correct -> keep the first `max_examples` (file order, independent of the seed)
-> shuffle per epoch in the loader.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from r1_lightning.data.loader import ResumableDataLoader
from r1_lightning.data.readers import PromptExample, SFTExample, load_prompt_dataset, load_sft
from r1_lightning.data.templates import load_template, render_prompt
from r1_lightning.seeding import seed_or_global

Example = TypeVar("Example", PromptExample, SFTExample)

# Prompts per validation batch when neither val_batch_size nor batch_size is set.
DEFAULT_VAL_BATCH_SIZE = 32


def _existing_file(path: str | os.PathLike[str] | None, option: str) -> Path | None:
    """Check a path option early (at construction) so a config typo names the option."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option}: no such file: {path}")
    return path


def _check_positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{option} must be a positive integer or None, got {value}")


def _get_reward_fn(name: str) -> Callable[[str, str], dict[str, float]]:
    # Imported here, not at the top: grading pulls in math-verify and sympy, and only
    # `filter_correct=True` needs it.
    from r1_lightning.rewards import get_reward_fn

    return get_reward_fn(name)


class _ExampleDataModule(L.LightningDataModule, Generic[Example]):
    """What both datamodules share: lazy cached example lists, a resumable train loader, a val loader.

    Subclasses say how to read a file (`_read`), how to turn examples into a batch (`_collate`) and
    may post-process the train examples before `max_examples` is applied (`_select_train`).
    """

    drop_last_train = False

    def __init__(
        self,
        train_path: str | os.PathLike[str],
        val_path: str | os.PathLike[str] | None,
        batch_size: int,
        val_batch_size: int | None,
        max_examples: int | None,
        max_val_examples: int | None,
        seed: int | None,
        shuffle: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.train_path = _existing_file(train_path, f"{name}.train_path")
        self.val_path = _existing_file(val_path, f"{name}.val_path")
        for option, value in [
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
            ("max_examples", max_examples),
            ("max_val_examples", max_val_examples),
        ]:
            _check_positive(value, f"{name}.{option}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_examples = max_examples
        self.max_val_examples = max_val_examples
        self.seed = seed_or_global(seed)
        self.shuffle = shuffle
        self._train_examples: list[Example] | None = None
        self._val_examples: list[Example] | None = None
        self._train_loader: ResumableDataLoader | None = None

    # -- to be provided by subclasses --
    def _read(self, path: Path) -> list[Example]:
        raise NotImplementedError

    def _collate(self, examples: list[Example]) -> dict[str, list[Any]]:
        raise NotImplementedError

    def _select_train(self, examples: list[Example]) -> list[Example]:
        return examples

    # -- examples --
    def train_examples(self) -> list[Example]:
        """The training examples (after any filtering and `max_examples`), read once and cached."""
        if self._train_examples is None:
            self._train_examples = self._select_train(self._read(self.train_path))[: self.max_examples]
        return self._train_examples

    def val_examples(self) -> list[Example]:
        """The validation examples in file order (first `max_val_examples`), read once and cached."""
        if self.val_path is None:
            raise ValueError(f"{type(self).__name__}.val_path is not set: there are no validation examples")
        if self._val_examples is None:
            self._val_examples = self._read(self.val_path)[: self.max_val_examples]
        return self._val_examples

    # -- Lightning hooks --
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_examples()
        if self.val_path is not None and stage in (None, "fit", "validate"):
            self.val_examples()

    def train_dataloader(self) -> ResumableDataLoader:
        # One loader for the datamodule's lifetime: if Lightning asks again (e.g.
        # reload_dataloaders_every_n_epochs), the position and epoch count carry on.
        if self._train_loader is None:
            if self.batch_size is None:
                raise ValueError(f"{type(self).__name__}.batch_size is not set (GRPOModule sets it in setup; "
                                 "other modules need data.init_args.batch_size)")
            trainer = self.trainer
            num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            try:
                self._train_loader = ResumableDataLoader(
                    self.train_examples(),
                    batch_size=self.batch_size,
                    collate_fn=self._collate,
                    shuffle=self.shuffle,
                    seed=self.seed,
                    drop_last=self.drop_last_train,
                    num_replicas=num_replicas,
                    rank=rank,
                )
            except ValueError as error:  # too few examples: say which file and which option
                raise ValueError(f"{type(self).__name__} ({self.train_path}): {error}") from error
        return self._train_loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_path is None:
            return []  # Lightning skips validation for an empty list of loaders
        # batch_size may have been set since __init__ (by GRPOModule)
        batch_size = self.val_batch_size or self.batch_size or DEFAULT_VAL_BATCH_SIZE
        return DataLoader(self.val_examples(), batch_size=batch_size, shuffle=False, collate_fn=self._collate)


class SFTDataModule(_ExampleDataModule[SFTExample]):
    """Supervised pairs from an SFT jsonl file (see `load_sft`).

    Batches: `{"prompt": list[str], "response": list[str], "ground_truth": list[str | None]}`.

    Args:
        train_path, val_path: SFT jsonl files (`prompt`/`response`/`ground_truth` or `messages`).
        batch_size: examples per batch (train and validation); the last train batch may be smaller.
        max_examples: keep only the first N training examples, counted after filtering.
        filter_correct: keep only examples whose response gets reward 1 from `reward_fn` against its
            `ground_truth` (every example then needs one). Filtering happens once, at setup.
        reward_fn: name of a reward function in `r1_lightning.rewards` (used only to filter).
        seed: seed of the per-epoch shuffle (None: `seed_everything`'s). shuffle: shuffle the training
            set each epoch.
    """

    def __init__(
        self, train_path: str | os.PathLike[str], val_path: str | os.PathLike[str] | None = None,
        batch_size: int = 8, max_examples: int | None = None, filter_correct: bool = False,
        reward_fn: str = "r1_zero", seed: int | None = None, shuffle: bool = True,
    ) -> None:
        super().__init__(train_path, val_path, batch_size=batch_size, val_batch_size=None,
                         max_examples=max_examples, max_val_examples=None, seed=seed, shuffle=shuffle)
        self.save_hyperparameters(logger=False)  # see PromptDataModule
        self.filter_correct = filter_correct
        self.reward_fn = reward_fn
        self.filter_stats: dict[str, int] | None = None  # {"total", "kept"} once filtering ran

    def _read(self, path: Path) -> list[SFTExample]:
        return load_sft(path)

    def _collate(self, examples: list[SFTExample]) -> dict[str, list[Any]]:
        return {
            "prompt": [example.prompt for example in examples],
            "response": [example.response for example in examples],
            "ground_truth": [example.ground_truth for example in examples],
        }

    def _select_train(self, examples: list[SFTExample]) -> list[SFTExample]:
        if not self.filter_correct:
            return examples
        ungraded = sum(example.ground_truth is None for example in examples)
        if ungraded:
            raise ValueError(
                f"SFTDataModule.filter_correct: {ungraded} of {len(examples)} examples in {self.train_path} "
                f"have no ground_truth to grade against"
            )
        reward_fn = _get_reward_fn(self.reward_fn)
        kept = [
            example
            for example in examples
            if reward_fn(example.response, example.ground_truth)["reward"] == 1
        ]
        self.filter_stats = {"total": len(examples), "kept": len(kept)}
        rank_zero_info(
            f"SFTDataModule: kept {len(kept)} of {len(examples)} examples of {self.train_path} "
            f"(response gets reward 1 under reward_fn={self.reward_fn!r})"
        )
        if not kept:
            raise ValueError(
                f"SFTDataModule.filter_correct: no example of {self.train_path} is graded correct"
            )
        return kept


class PromptDataModule(_ExampleDataModule[PromptExample]):
    """Questions with ground-truth answers, for GRPO, expert iteration and evaluation.

    Batches: `{"prompt": list[str] (template applied), "question": list[str], "ground_truth": list[str],
    "level": list, "subject": list, "unique_id": list}`. The last incomplete train batch is dropped
    (GRPO's group arithmetic needs a fixed number of prompts per step); validation keeps every example.

    Args:
        train_path, val_path: MATH- or GSM8K-style jsonl files.
        dataset: `"auto"` (tell by the fields), `"math"` or `"gsm8k"`.
        template: a built-in template name (`r1_zero`, `question_only`) or a `.prompt` file path.
        batch_size: prompts per train batch; None (the default): the module's, which GRPOModule sets
            to its questions per step. val_batch_size: prompts per val batch (default batch_size, or
            `DEFAULT_VAL_BATCH_SIZE` without one, as for zero-shot evaluation).
        max_examples, max_val_examples: keep only the first N examples of each file.
        seed: seed of the per-epoch shuffle (None: `seed_everything`'s). shuffle: shuffle the training
            set each epoch.
        min_pass_rate, max_pass_rate: train only on problems whose `pass_rate` (the field difficulty
            estimation writes, `PassRateModule`) lies in this band, bounds included; e.g. 0.01 and 0.99
            drop the never- and always-solved problems, whose groups have no reward variance.
        curriculum: visit the training problems easiest first (highest `pass_rate`; equal rates in the
            seeded shuffle's order), every epoch; `shuffle` is then not used.
    The predict loader (difficulty estimation) reads `train_path` whole, in file order.
    """

    drop_last_train = True

    def __init__(
        self, train_path: str | os.PathLike[str], val_path: str | os.PathLike[str] | None = None,
        dataset: Literal["auto", "math", "gsm8k"] = "auto", template: str = "r1_zero",
        batch_size: int | None = None, max_examples: int | None = None, max_val_examples: int | None = None,
        val_batch_size: int | None = None, seed: int | None = None, shuffle: bool = True,
        min_pass_rate: float | None = None, max_pass_rate: float | None = None, curriculum: bool = False,
    ) -> None:
        super().__init__(train_path, val_path, batch_size=batch_size, val_batch_size=val_batch_size,
                         max_examples=max_examples, max_val_examples=max_val_examples, seed=seed,
                         shuffle=shuffle and not curriculum)
        low, high = min_pass_rate if min_pass_rate is not None else 0.0, max_pass_rate if max_pass_rate is not None else 1.0
        if not 0 <= low <= high <= 1:
            raise ValueError(f"PromptDataModule: need 0 <= min_pass_rate <= max_pass_rate <= 1, got "
                             f"{min_pass_rate} and {max_pass_rate}")
        self.pass_rate_band = None if min_pass_rate is None and max_pass_rate is None else (low, high)
        self.curriculum = curriculum
        # In checkpoints, not in the logger's hparams: Lightning merges those with the module's and refuses a
        # key both have with different values (`seed`: the shuffle's here, the sampling's there). The run's
        # config.yaml records every data option.
        self.save_hyperparameters(logger=False)
        if dataset not in ("auto", "math", "gsm8k"):
            raise ValueError(f"PromptDataModule.dataset must be 'auto', 'math' or 'gsm8k', got {dataset!r}")
        self.dataset = dataset
        self.template = template
        self._template_text = load_template(template)  # now: a bad name or path fails at construction

    def _read(self, path: Path) -> list[PromptExample]:
        return load_prompt_dataset(path, self.dataset)

    def _select_train(self, examples: list[PromptExample]) -> list[PromptExample]:
        if self.pass_rate_band is None and not self.curriculum:
            return examples
        unannotated = sum(example.pass_rate is None for example in examples)
        if unannotated:
            raise ValueError(f"PromptDataModule min_pass_rate / max_pass_rate / curriculum: {unannotated} of "
                             f"{len(examples)} problems of {self.train_path} have no 'pass_rate'; annotate the file "
                             f"first (r1-lightning predict --config configs/difficulty.yaml)")
        if self.pass_rate_band is not None:
            low, high = self.pass_rate_band
            kept = [example for example in examples if low <= example.pass_rate <= high]
            rank_zero_info(f"PromptDataModule: kept {len(kept)} of {len(examples)} problems of {self.train_path} "
                           f"with a pass rate in [{low}, {high}]")
            examples = kept
        if self.curriculum:
            shuffled = [examples[i] for i in random.Random(self.seed).sample(range(len(examples)), len(examples))]
            examples = sorted(shuffled, key=lambda example: -example.pass_rate)  # stable: ties keep the shuffle
        return examples

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._read(self.train_path)[: self.max_examples], batch_size=self.batch_size,
                          shuffle=False, collate_fn=self._collate)

    def _collate(self, examples: list[PromptExample]) -> dict[str, list[Any]]:
        return {
            "prompt": [render_prompt(self._template_text, example.question) for example in examples],
            "question": [example.question for example in examples],
            "ground_truth": [example.ground_truth for example in examples],
            "level": [example.level for example in examples],
            "subject": [example.subject for example in examples],
            "unique_id": [example.unique_id for example in examples],
        }
