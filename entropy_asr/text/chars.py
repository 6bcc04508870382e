"""Character CTC targets, for the character-level pretraining ablation (experiments/reproduce.py, recipe d).

One unit per Mandarin character, per English letter (or digit, apostrophe), and one word-boundary
unit for each run of spaces, read from the normalized transcript (`norm_text`), so the same
normalization that scores the LLM defines the units. The inventory is built from the training
transcripts and saved as JSON; id 0 is the CTC blank, id 1 stands for any unit not in it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from entropy_asr.errors import UserError, UserFileNotFound

BLANK, UNK, SPACE = "<blank>", "<unk>", "▁"


def char_units(norm_text: str) -> list[str]:
    """'这个 coffee 好' -> ['这', '个', '▁', 'c', 'o', 'f', 'f', 'e', 'e', '▁', '好']."""
    out: list[str] = []
    for ch in norm_text.strip():
        if ch.isspace():
            if out[-1] != SPACE:  # strip() leaves no leading space, so out is not empty here
                out.append(SPACE)
        else:
            out.append(ch)
    return out


class CharInventory:
    """The character CTC vocabulary: (<blank>, <unk>, units...) and the text -> ids map."""

    def __init__(self, units: Iterable[str]):
        units = [u for u in units if u not in (BLANK, UNK)]
        if len(set(units)) != len(units):
            raise ValueError("CharInventory: duplicate units")
        self.symbols: tuple[str, ...] = (BLANK, UNK, *units)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def ids(self, norm_text: str) -> list[int]:
        """Label ids of a normalized transcript; a unit outside the inventory becomes <unk> (1)."""
        return [self.index.get(u, 1) for u in char_units(norm_text)]

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1) -> CharInventory:
        """Units seen at least `min_count` times, most frequent first (ties by code point)."""
        counts = Counter(u for t in texts for u in char_units(t))
        return cls(sorted((u for u, n in counts.items() if n >= min_count), key=lambda u: (-counts[u], u)))

    @classmethod
    def load(cls, path: str | Path) -> CharInventory:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            symbols = data["symbols"]
        except FileNotFoundError:
            raise UserFileNotFound(f"character inventory {path} not found; build it with "
                                   f"`python -m entropy_asr.text.chars TRAIN_SHARD_DIR {path}`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a character inventory (JSON with a `symbols` list): {e}") from None
        if symbols[:2] != [BLANK, UNK]:
            raise UserError(f"{path}: symbols must start with {BLANK!r}, {UNK!r}; got {symbols[:2]}")
        return cls(symbols)

    def save(self, path: str | Path) -> Path:
        from entropy_asr.io import atomic_write_json

        atomic_write_json(Path(path), {"kind": "ctc_chars", "symbols": list(self.symbols)})
        return Path(path)


def build_char_inventory(train_dir: str | Path, out: str | Path, min_count: int = 1) -> CharInventory:
    """The inventory of a shard dir's transcripts (norm_text), saved to `out`."""
    from entropy_asr.data.shards import read_transcripts

    texts = [m.get("norm_text", "") for m in read_transcripts(train_dir) if m.get("language") != "none"]
    if not any(texts):
        raise UserError(f"{train_dir}: no normalized transcripts (norm_text) to build a character inventory from")
    inv = CharInventory.from_texts(texts, min_count)
    inv.save(out)
    return inv


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Build the character CTC inventory of a training shard dir")
    p.add_argument("train_dir")
    p.add_argument("out")
    p.add_argument("--min-count", type=int, default=1)
    a = p.parse_args(argv)
    inv = build_char_inventory(a.train_dir, a.out, a.min_count)
    print(f"{a.out}: {len(inv)} symbols")


if __name__ == "__main__":
    from entropy_asr.errors import run_main

    run_main(main)
