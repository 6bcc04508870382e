"""One base LightningModule and one thin subclass per training stage."""

from lightning_modules.base import OptimConfig, SpeechLLMModule
from lightning_modules.pretrain_ctc import PretrainCTC
from lightning_modules.pretrain_lm import PretrainLM
from lightning_modules.sft import (
           IASFT,
           Align,
           DistillConfig,
           JointSFT,
           Snapshot,
           SpeechSFT,
)
from lightning_modules.strategies import SpeechFSDP, full_weights

__all__ = ["IASFT", "Align", "DistillConfig", "JointSFT", "OptimConfig", "PretrainCTC", "PretrainLM", "Snapshot",
           "SpeechFSDP", "SpeechLLMModule", "SpeechSFT", "full_weights"]
