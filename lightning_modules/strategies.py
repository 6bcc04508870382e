"""Sharded training: FSDP that shards each Conformer block and each LLM decoder layer, and the
context under which a sharded model's exports hold full weights.

`--trainer.strategy '{"class_path": "lightning_modules.SpeechFSDP"}'` (any FSDPStrategy argument as
init_args, e.g. sharding_strategy, cpu_offload, activation_checkpointing_policy; a bare class path is
read as one of Lightning's strategy names and refused). Frozen parts (IA-SFT's encoder,
alignment's LLM) need use_orig_params, on by default here.
"""

from __future__ import annotations

import contextlib
import functools

import torch
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

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """As FSDPStrategy's, and on CPUs too (gloo: tests, CPU-only nodes): FSDP needs the CPU named as its
        device there, which FSDPStrategy cannot pass (it gives the device's index, None on a CPU)."""
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                         mixed_precision=self.mixed_precision_config,
                                         sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                         **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def _fsdp_root(module: nn.Module) -> nn.Module | None:
    """The FSDP unit to gather `module`'s weights from: the trainer's root wrapper (it holds the weights outside
    the sharded blocks, and wraps the LightningModule from outside), or `module` if it holds FSDP units itself."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = getattr(getattr(getattr(module, "_trainer", None), "strategy", None), "model", None)
    if isinstance(root, FSDP):
        return root
    return module if any(isinstance(m, FSDP) for m in module.modules()) else None


@contextlib.contextmanager
def full_weights(module: nn.Module):
    """Inside, rank 0 sees the full weights of an FSDP-sharded `module` (enter on every rank); else a no-op."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = _fsdp_root(module)
    if root is None:
        yield
        return
    with FSDP.summon_full_params(root, writeback=False, rank0_only=True, offload_to_cpu=True):
        yield


@contextlib.contextmanager
def gathered(trainer, writeback: bool = False):
    """Inside, every rank's LightningModule holds its full weights (enter on every rank; a no-op unless the
    trainer shards with FSDP). For work outside the training step that runs the model's parts directly
    (metric callbacks' probes) and, with `writeback`, for changing weights in place (a hot-swap's load)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = getattr(getattr(trainer, "strategy", None), "model", None)
    if not isinstance(root, FSDP):
        yield
        return
    with FSDP.summon_full_params(root, writeback=writeback):  # (not nestable: export outside it, full_weights)
        yield
