"""LightningDataModule of transcript text for the tiny LLM's text pretraining step.

A real run starts from a pretrained LLM. Offline there is none, so the tiny pipeline first
trains its LLM (and its BPE tokenizer) on text: the training transcripts plus more sentences
from the same generator, never a sentence of an evaluation split.
"""

from __future__ import annotations

import random

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from entropy_asr.data.sentences import SentenceGenerator
from entropy_asr.data.shards import read_transcripts
from entropy_asr.data.synthetic import LANGUAGE_SHARE
from entropy_asr.text import normalize_text


def _collate(items: list[tuple[str, str]]) -> dict:
    return {"text": [t for t, _ in items], "language": [lang for _, lang in items]}


class TextDataModule(L.LightningDataModule):
    """Batches {"text": [...], "language": [...]} of training transcripts plus generated sentences.

    Args:
        train_dir: shard dir whose transcripts are training text.
        val_dir: shard dir whose transcripts are the held-out text (never trained on).
        exclude_dirs: more shard dirs whose sentences must never be trained on (test splits).
        synthetic: as in SpeechDataModule: unset dirs default to the synthetic corpus' splits.
        extra_sentences: generated sentences added to the training text (0: transcripts only).
        language_share: mix of generated sentences, e.g. {"zh": 0.4, "en": 0.4, "mix": 0.2}.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        exclude_dirs: list[str] | None = None,
        synthetic: dict | None = None,
        extra_sentences: int = 20000,
        language_share: dict[str, float] | None = None,
        vocab_size: int = 2000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if synthetic is not None:
            from entropy_asr.data.synthetic import corpus_dir

            root = corpus_dir(**synthetic)
            train_dir = train_dir or str(root / "train")
            val_dir = val_dir or str(root / "dev")
            exclude_dirs = exclude_dirs or [str(root / s) for s in ("test", "test_unseen_voice")]
        if not train_dir:
            raise ValueError("data.train_dir is not set; point it at a shard dir, or set data.synthetic")
        if extra_sentences < 0:
            raise ValueError(f"data.extra_sentences must be >= 0, got {extra_sentences}")
        self.train_dir, self.val_dir, self.exclude_dirs = train_dir, val_dir, list(exclude_dirs or [])
        self.synthetic, self.extra_sentences, self.vocab_size = synthetic, extra_sentences, vocab_size
        self.language_share = language_share or dict(LANGUAGE_SHARE)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_items: list[tuple[str, str]] | None = None
        self.val_items: list[tuple[str, str]] = []

    def prepare_data(self) -> None:
        """Build the synthetic corpus once when configured and missing."""
        if self.synthetic:
            from entropy_asr.data.synthetic import ensure_corpus

            ensure_corpus(**self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Read the transcripts and generate the extra sentences (deterministic in `seed`)."""
        if self.train_items is not None:
            return
        def speech(d):
            return [(m["text"], m["language"]) for m in read_transcripts(d) if m["language"] != "none"]

        train = speech(self.train_dir)
        self.val_items = speech(self.val_dir) if self.val_dir else []
        held_out = {normalize_text(t, lang) for d in [self.val_dir, *self.exclude_dirs] if d for t, lang in speech(d)}
        leaked = sum(normalize_text(t, lang) in held_out for t, lang in train)
        if leaked:
            raise ValueError(f"{self.train_dir}: {leaked} training transcripts also occur in the held-out dirs "
                             f"{[self.val_dir, *self.exclude_dirs]}; the LLM would see evaluation sentences")
        rng = random.Random(f"entropy-asr-text/{self.seed}")
        gen = SentenceGenerator(self.vocab_size)
        langs, weights = list(self.language_share), list(self.language_share.values())
        extra = []
        while len(extra) < self.extra_sentences:
            lang = rng.choices(langs, weights)[0]
            text = gen.sentence(rng, lang)
            if normalize_text(text, lang) not in held_out:  # never a sentence of an evaluation split
                extra.append((text, lang))
        self.train_items = train + extra

    def texts(self) -> list[str]:
        """All training text (for the tokenizer)."""
        self.setup()
        return [t for t, _ in self.train_items]

    def _sampler(self, items, shuffle: bool):
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return None
        rank = self.trainer.global_rank
        return DistributedSampler(items, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training text; each rank takes its own part."""
        self.setup()
        sampler = self._sampler(self.train_items, True)
        return DataLoader(self.train_items, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
                          collate_fn=_collate, num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out transcripts (the dev split), in order."""
        self.setup()
        return DataLoader(self.val_items, batch_size=self.batch_size, sampler=self._sampler(self.val_items, False),
                          collate_fn=_collate, num_workers=self.num_workers)
