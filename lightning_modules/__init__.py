"""One base LightningModule and one thin subclass per training stage."""

from lightning_modules.base import OptimConfig, SpeechLLMModule
from lightning_modules.grpo import GRPO
from lightning_modules.pretrain_ctc import PretrainCTC
from lightning_modules.pretrain_lm import PretrainLM
from lightning_modules.sft import (
           IASFT,
           Align,
           ContextSFT,
           DistillConfig,
           JointSFT,
           SpeechSFT,
)
from lightning_modules.strategies import SpeechFSDP, full_weights

# every training stage, in pipeline order: its name (the class's `stage`, and experiments/<name>.yaml's) -> its module
STAGES: dict[str, type[SpeechLLMModule]] = {
    cls.stage: cls for cls in (PretrainLM, PretrainCTC, Align, IASFT, JointSFT, ContextSFT, GRPO)}
# the optional stages after joint SFT (context biasing, reinforcement learning): not part of the method's recipe
LATER_STAGES: tuple[str, ...] = (ContextSFT.stage, GRPO.stage)
# the method's stages that train on speech (an encoder; the text step has none)
SPEECH_STAGES: tuple[str, ...] = tuple(name for name, cls in STAGES.items()
                                       if "encoder" in cls.components and name not in LATER_STAGES)

__all__ = ["GRPO", "IASFT", "LATER_STAGES", "SPEECH_STAGES", "STAGES", "Align", "ContextSFT", "DistillConfig",
           "JointSFT", "OptimConfig", "PretrainCTC", "PretrainLM", "SpeechFSDP", "SpeechLLMModule", "SpeechSFT",
           "full_weights"]
