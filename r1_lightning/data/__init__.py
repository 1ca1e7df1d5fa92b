"""Data: prompt templates, jsonl readers, a resumable train loader and the LightningDataModules."""

from r1_lightning.data.datamodules import PromptDataModule, SFTDataModule
from r1_lightning.data.loader import ResumableDataLoader
from r1_lightning.data.readers import (
    DataFormatError,
    PromptExample,
    SFTExample,
    load_gsm8k,
    load_math,
    load_prompt_dataset,
    load_sft,
    read_jsonl,
)
from r1_lightning.data.templates import BUILTIN_TEMPLATES, load_template, render_prompt

__all__ = [
    "BUILTIN_TEMPLATES",
    "DataFormatError",
    "PromptDataModule",
    "PromptExample",
    "ResumableDataLoader",
    "SFTDataModule",
    "SFTExample",
    "load_gsm8k",
    "load_math",
    "load_prompt_dataset",
    "load_sft",
    "load_template",
    "read_jsonl",
    "render_prompt",
]
