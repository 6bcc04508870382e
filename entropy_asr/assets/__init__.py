"""Small models this project trained itself and ships in the package, each with a card (card.json).

`tiny_llm`: the tiny pipeline's pretrained LLM (a 4-layer Qwen3 of 4.7M parameters with its BPE
tokenizer) and its pseudo-speech reader (phone frames + adapter), what the tiny pipeline starts from
as the paper starts from a pretrained Qwen3. docs/tiny_llm.md is its model card and says how to
remake it; entropy_asr.assets.tiny_llm measures and packages it.

An asset is refused (one line naming the asset, what differs and the fix) when the code it is used
with labels or writes its data differently from the data it was trained for: another corpus or
grammar version (its vocabulary and sentences), or another phone inventory (its reader's phones).
"""

from __future__ import annotations

import json
from pathlib import Path

from entropy_asr.errors import UserError

ROOT = Path(__file__).resolve().parent
CARD = "card.json"


class AssetError(UserError):
    """An asset is missing, damaged or was made for other data; the message says which and the fix."""


def card(path: str | Path) -> dict:
    """An asset dir's card.json."""
    file = Path(path) / CARD
    if not file.is_file():
        raise AssetError(f"{path}: no {CARD}; not an entropy-asr asset (see docs/tiny_llm.md to make one)")
    return json.loads(file.read_text())


def expected_data() -> dict:
    """What this code's data looks like, in the terms a card records."""
    from entropy_asr.data.sentences import GRAMMAR_VERSION
    from entropy_asr.data.synthetic import CORPUS_VERSION
    from entropy_asr.text import inventory_fingerprint

    return {"corpus_version": CORPUS_VERSION, "grammar_version": GRAMMAR_VERSION,
            "phone_inventory": inventory_fingerprint()}


def check_asset(path: str | Path) -> Path:
    """`path` if its card matches this code's data and its files their checksums; else AssetError."""
    from entropy_asr.model.export import sha256_file

    path = Path(path)
    info = card(path)
    trained_for, here = info.get("data", {}), expected_data()
    differ = {k: (trained_for.get(k), v) for k, v in here.items() if trained_for.get(k) != v}
    if differ:
        what = ", ".join(f"{k} {a!r} (this code: {b!r})" for k, (a, b) in differ.items())
        raise AssetError(f"{path} was trained for other data: {what}; its vocabulary and reader do not match this "
                         f"corpus. Retrain it: python experiments/pipeline.py --config experiments/tiny/pipeline.yaml "
                         f"--retrain-llm (docs/tiny_llm.md)")
    for rel, digest in info.get("files", {}).items():
        file = path / rel
        if not file.is_file():
            raise AssetError(f"{path}: {rel} is missing; reinstall the package or remake the asset (docs/tiny_llm.md)")
        if sha256_file(file) != digest:
            raise AssetError(f"{path}: {rel} does not match the checksum in {CARD}; the file is damaged or was "
                             f"replaced: reinstall the package or remake the asset (docs/tiny_llm.md)")
    return path


def asset_path(name: str) -> Path:
    """The dir of the shipped asset `name` (e.g. "tiny_llm"), unchecked: what ${asset:NAME} in a config
    stands for (a config may name it and the command line replace it; it is checked when it is used)."""
    path = ROOT / name
    if not path.is_dir():
        known = sorted(p.name for p in ROOT.iterdir() if (p / CARD).is_file())
        raise AssetError(f"no asset {name!r} in {ROOT}; shipped: {known}")
    return path


def asset_dir(name: str) -> Path:
    """The checked dir of the shipped asset `name` (e.g. "tiny_llm")."""
    return check_asset(asset_path(name))


def check_if_asset(path: str | Path | None) -> None:
    """If `path` (a model dir or file a stage loads) lies in a shipped asset, check that asset (AssetError)."""
    if not path:
        return
    p = Path(path).resolve()
    if ROOT in p.parents:
        check_asset(ROOT / p.relative_to(ROOT).parts[0])
