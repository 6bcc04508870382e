"""Sharded training: FSDP that shards each Conformer block and each LLM decoder layer, and the
context under which a sharded model's exports hold full weights.

`--trainer.strategy lightning_modules.SpeechFSDP` (any FSDPStrategy argument as init_args, e.g.
sharding_strategy, cpu_offload, activation_checkpointing_policy). Frozen parts (IA-SFT's encoder,
alignment's LLM) need use_orig_params, on by default here.
"""

from __future__ import annotations

import contextlib
import functools

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from entropy_asr.errors import UserError

# the repeated blocks of this project's encoder and of the Qwen2/Qwen3 LLM families
DEFAULT_WRAP = ("ConformerBlock", "Qwen3DecoderLayer", "Qwen2DecoderLayer")


def _by_class_name(module: nn.Module, recurse: bool, nonwrapped_numel: int, names: frozenset) -> bool:
    return True if recurse else type(module).__name__ in names


class SpeechFSDP(FSDPStrategy):
    """FSDPStrategy wrapping every module whose class is named in `wrap` as its own FSDP unit.

    Args:
        wrap: class names of the blocks to shard one by one (default: Conformer blocks and
            Qwen2/Qwen3 decoder layers; add your LLM's decoder-layer class for another family).
        **kwargs: FSDPStrategy's (auto_wrap_policy, if given, replaces `wrap`).
    """

    def __init__(self, wrap: list[str] | tuple[str, ...] = DEFAULT_WRAP, **kwargs):
        if not wrap:
            raise UserError("SpeechFSDP.wrap: name at least one block class to shard (e.g. ConformerBlock)")
        kwargs.setdefault("auto_wrap_policy", functools.partial(_by_class_name, names=frozenset(wrap)))
        kwargs.setdefault("use_orig_params", True)
        super().__init__(**kwargs)
        self.wrap = tuple(wrap)


@contextlib.contextmanager
def full_weights(module: nn.Module):
    """Inside, rank 0 sees the full weights of an FSDP-sharded `module` (enter on every rank); else a no-op."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not any(isinstance(m, FSDP) for m in module.modules()):
        yield
        return
    with FSDP.summon_full_params(module, writeback=False, rank0_only=True, offload_to_cpu=True):
        yield
