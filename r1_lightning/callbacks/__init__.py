"""Callbacks: engine weight sync, periodic evaluation, generation tables, checkpoints + HF export.

`MathEvalCallback` lives with the rest of evaluation in `r1_lightning.evaluation`; it is exported
here too, where configs name it (`r1_lightning.callbacks.MathEvalCallback`).
"""

from r1_lightning.callbacks.checkpoint import HFExportCheckpoint
from r1_lightning.callbacks.generations import GenerationLogger
from r1_lightning.callbacks.progress import StepProgressBar
from r1_lightning.callbacks.weight_sync import RolloutWeightSync
from r1_lightning.evaluation import MathEvalCallback

__all__ = ["GenerationLogger", "HFExportCheckpoint", "MathEvalCallback", "RolloutWeightSync", "StepProgressBar"]
