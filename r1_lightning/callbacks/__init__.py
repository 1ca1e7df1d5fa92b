"""Callbacks: engine weight sync, periodic evaluation, generation tables, checkpoints + HF export."""

from r1_lightning.callbacks.checkpoint import HFExportCheckpoint
from r1_lightning.callbacks.generations import GenerationLogger
from r1_lightning.callbacks.math_eval import MathEvalCallback
from r1_lightning.callbacks.progress import StepProgressBar
from r1_lightning.callbacks.weight_sync import RolloutWeightSync

__all__ = ["GenerationLogger", "HFExportCheckpoint", "MathEvalCallback", "RolloutWeightSync", "StepProgressBar"]
