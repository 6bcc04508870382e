"""The model sizes, each defined once: experiments/models/<size>/<component>.yaml.

Stage configs name these files for a component (`encoder: models/paper/encoder.yaml`, resolved by
jsonargparse relative to the config that names it) and may override single fields on the command
line (`--model.init_args.encoder.dropout 0.2`). The Python entry points (experiments/benchmark.py)
and the tests read the same files through this module, so a size never has two definitions.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from entropy_asr.errors import UserError
from entropy_asr.model.encoder import EncoderConfig

MODELS = Path(__file__).resolve().parent / "models"


def sizes() -> list[str]:
    """The defined sizes: the dirs under experiments/models."""
    return sorted(p.name for p in MODELS.iterdir() if p.is_dir())


def component(value: dict | str | None, config_dir: Path) -> dict:
    """A component's fields as a stage config gives them: inline ({d_model: ...}) or a size file's path,
    relative to the config's dir (as jsonargparse reads it)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    path = (config_dir / value) if not Path(value).is_absolute() else Path(value)
    if not path.is_file():
        raise UserError(f"{path}: no such size file (named from a config in {config_dir}); "
                        f"the sizes are {sizes()} under {MODELS}")
    return yaml.safe_load(path.read_text()) or {}


def encoder_config(size: str, **overrides) -> EncoderConfig:
    """The encoder of a size (experiments/models/<size>/encoder.yaml), with field overrides."""
    if size not in sizes():
        raise UserError(f"unknown model size {size!r}; choose one of {sizes()} (experiments/models/<size>/)")
    fields = component("encoder.yaml", MODELS / size)
    unknown = sorted(set(overrides) - set(EncoderConfig.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown encoder option(s) {unknown}; "
                        f"valid ones: {sorted(EncoderConfig.__dataclass_fields__)}")
    return EncoderConfig(**{**fields, **overrides})
