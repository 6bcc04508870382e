"""Per-component exports (safetensors) that later stages and other runs read, strictly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from entropy_asr.errors import UserError, UserFileNotFound
from entropy_asr.io import atomic_write_via

# an export dir: <component>.safetensors for these, the LLM as a Hugging Face dir (llm/), and beside them what decoding
# needs besides the weights: model.json (the stage's configs, lightning_modules.base: SpeechLLMModule.describe) and
# cmvn.json (the statistics the run normalized its features with)
FILE_COMPONENTS = ("encoder", "ctc_head", "adapter", "phone_frames")
MODEL_FILE, CMVN_FILE = "model.json", "cmvn.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_component(module: nn.Module, path: str | Path, component: str, meta: dict | None = None) -> Path:
    """Write a module's state dict as safetensors (temp file + rename), tagged with its component name."""
    return save_tensors(module.state_dict(), path, component, meta)


def save_tensors(tensors: dict, path: str | Path, component: str, meta: dict | None = None) -> Path:
    """Write a component's state dict (e.g. cut out of a checkpoint's) as save_component does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"component": component, "meta": json.dumps(meta or {})}
    return atomic_write_via(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _unreadable(path: Path, component: str | None, e: Exception) -> UserError:
    what = f"{component}: " if component else ""
    fix = f"; re-export it or point `init.{component}` at another export" if component else "; re-export it"
    return UserError(f"{what}{path} is not a readable safetensors file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'damaged'}){fix}")


def read_component_meta(path: str | Path, component: str | None = None) -> dict:
    """The metadata stored with an export: {"component": ..., "meta": {...}}; a damaged file is a UserError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        return {"component": md.get("component"), "meta": json.loads(md.get("meta", "{}"))}
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise _unreadable(Path(path), component, e) from e


def load_component(module: nn.Module, path: str | Path, component: str) -> None:
    """Load an export into `module`, strictly: same component, same keys, same shapes, or an error saying which."""
    module.load_state_dict(read_component(module, path, component), strict=True)


def read_component(module: nn.Module, path: str | Path, component: str) -> dict[str, torch.Tensor]:
    """An export's tensors after checking they fit `module` (component, keys, shapes); nothing is loaded yet."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFound(f"{component}: export {path} not found; point the stage's `init.{component}` at "
                               f"the {component}.safetensors an earlier stage wrote (its export dir)")
    stored = read_component_meta(path, component)["component"]
    if stored not in (None, component):
        raise UserError(f"{path} holds component {stored!r}, not {component!r}; check `init.{component}`")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError) as e:  # cut short or overwritten after its header was read
        raise _unreadable(path, component, e) from e
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:5]))
        if missing:
            parts.append(f"{len(missing)} missing key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
        raise UserError(f"{component}: {path} does not fit the configured {component} ("
                        + "; ".join(parts) + f"); the {component} config must match the run that exported it")
    return tensors
