"""LightningDataModule of transcript text for the tiny LLM's text pretraining step.

A real run starts from a pretrained LLM. Offline there is none, so the tiny pipeline first
trains its LLM (and its BPE tokenizer) on text: the training transcripts plus more sentences
from the same generator, never a sentence of an evaluation split.
"""

from __future__ import annotations

import logging
import random

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from entropy_asr.data.sentences import SentenceGenerator
from entropy_asr.data.shards import read_transcripts
from entropy_asr.data.synthetic import LANGUAGE_SHARE
from entropy_asr.errors import UserError
from entropy_asr.text import Phonemizer, normalize_text, phones_to_ids

log = logging.getLogger(__name__)


def _collate(items: list[tuple[str, str, list[int]]]) -> dict:
    return {"text": [t for t, _, _ in items], "language": [lang for _, lang, _ in items],
            "phones": [p for _, _, p in items]}


class LengthBucketBatches(Sampler[list[int]]):
    """Shuffled batches of items of similar length (so little of each batch is padding).

    Each epoch, a shuffle seeded by (seed, epoch) is cut into pools of `pool` batches; each pool
    is sorted by length and cut into full batches, and all batches are shuffled. Every rank
    computes the same list and takes every world-th batch, so ranks get equally many.
    """

    def __init__(self, lengths: list[int], batch_size: int, pool: int = 50, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if batch_size < 1 or pool < 1:
            raise UserError(f"batch_size and bucket pool must be >= 1, got {batch_size}, {pool}")
        if len(lengths) < batch_size * world:
            raise UserError(f"{len(lengths)} training items cannot fill one batch of {batch_size} per rank "
                            f"({world} ranks); lower data.batch_size or add text")
        self.lengths, self.batch_size, self.pool = list(lengths), batch_size, pool
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size // self.world

    def __iter__(self):
        rng = random.Random(f"entropy-asr-text-batches/{self.seed}/{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        step = self.batch_size * self.pool
        batches = []
        for i in range(0, len(order), step):
            pool = sorted(order[i:i + step], key=self.lengths.__getitem__)
            batches += [pool[j:j + self.batch_size] for j in range(0, len(pool) - self.batch_size + 1, self.batch_size)]
        rng.shuffle(batches)
        return iter(batches[self.rank:len(self) * self.world:self.world])


class TextDataModule(L.LightningDataModule):
    """Batches {"text": [...], "language": [...], "phones": [[id, ...], ...]} of training transcripts plus
    generated sentences; phones are the transcripts' own (CTC targets) or the phonemizer's.

    Args:
        train_dir: shard dir whose transcripts are training text.
        val_dir: shard dir whose transcripts are the held-out text (never trained on).
        exclude_dirs: more shard dirs whose sentences must never be trained on (test splits).
        synthetic: as in SpeechDataModule: unset dirs default to the synthetic corpus' splits.
        extra_sentences: generated sentences added to the training text (0: transcripts only).
        language_share: mix of generated sentences, e.g. {"zh": 0.4, "en": 0.4, "mix": 0.2}.
        vocab_size: content words per language of the sentence generator (None: its default).
        nonspeech_share: empty transcripts (language "none") added per training item, so a reader
            learns that silence reads as nothing; validation keeps the dev split's non-speech clips.

    Training batches are length-bucketed (LengthBucketBatches): with random batches about 60%
    of the tiny LLM's compute went to padding.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        exclude_dirs: list[str] | None = None,
        synthetic: dict | None = None,
        extra_sentences: int = 20000,
        language_share: dict[str, float] | None = None,
        vocab_size: int | None = None,
        nonspeech_share: float = 0.0,
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
            raise UserError("data.train_dir is not set; point it at a shard dir, or set data.synthetic")
        if extra_sentences < 0:
            raise UserError(f"data.extra_sentences must be >= 0, got {extra_sentences}")
        if not 0 <= nonspeech_share < 1:
            raise UserError(f"data.nonspeech_share must be in [0, 1), got {nonspeech_share}")
        self.train_dir, self.val_dir, self.exclude_dirs = train_dir, val_dir, list(exclude_dirs or [])
        self.synthetic, self.extra_sentences, self.vocab_size = synthetic, extra_sentences, vocab_size
        self.nonspeech_share = nonspeech_share
        self.language_share = language_share or dict(LANGUAGE_SHARE)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_items: list[tuple[str, str, list[int]]] | None = None
        self.val_items: list[tuple[str, str, list[int]]] = []

    def prepare_data(self) -> None:
        """Build the synthetic corpus once when configured and missing."""
        if self.synthetic:
            from entropy_asr.data.synthetic import ensure_corpus

            ensure_corpus(**self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Read the transcripts and generate the extra sentences (deterministic in `seed`)."""
        if self.train_items is not None:
            return
        def speech(d, nonspeech: bool = False):
            return [(m["text"], m["language"], phones_to_ids(m["phones"]))
                    for m in read_transcripts(d) if nonspeech or m["language"] != "none"]

        train = speech(self.train_dir)
        self.val_items = speech(self.val_dir, nonspeech=self.nonspeech_share > 0) if self.val_dir else []
        held_out = {normalize_text(t, lang) for d in [self.val_dir, *self.exclude_dirs] if d
                    for t, lang, _ in speech(d)}
        leaked = sum(normalize_text(t, lang) in held_out for t, lang, _ in train)
        if leaked:
            raise UserError(f"{self.train_dir}: {leaked} training transcripts also occur in the held-out dirs "
                            f"{[self.val_dir, *self.exclude_dirs]}; the LLM would see evaluation sentences")
        rng = random.Random(f"entropy-asr-text/{self.seed}")
        gen = SentenceGenerator(self.vocab_size) if self.vocab_size else SentenceGenerator()
        phonemize = Phonemizer()
        langs, weights = list(self.language_share), list(self.language_share.values())
        extra = []
        log_every = max(10_000, self.extra_sentences // 10)
        while len(extra) < self.extra_sentences:
            lang = rng.choices(langs, weights)[0]
            text = gen.sentence(rng, lang)
            if normalize_text(text, lang) not in held_out:  # never a sentence of an evaluation split
                extra.append((text, lang, phones_to_ids(phonemize(text, lang))))
                if len(extra) % log_every == 0:
                    log.info("text: %d / %d generated sentences phonemized", len(extra), self.extra_sentences)
        items = train + extra
        n_empty = round(len(items) * self.nonspeech_share / (1 - self.nonspeech_share))
        self.train_items = items + [("", "none", [])] * n_empty

    def texts(self) -> list[str]:
        """All training text (for the tokenizer)."""
        self.setup()
        return [t for t, _, _ in self.train_items if t]

    def _sampler(self, items, shuffle: bool):
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return None
        rank = self.trainer.global_rank
        return DistributedSampler(items, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-bucketed batches of training text; each rank takes its own batches."""
        self.setup()
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # sort key ~ the LLM sequence: ~1 speech slot per phone (4 frames of ~3.9 per phone) + the text
        lengths = [len(phones) + len(text) for text, _, phones in self.train_items]
        batches = LengthBucketBatches(lengths, self.batch_size, seed=self.seed, rank=rank, world=world)
        return DataLoader(self.train_items, batch_sampler=batches, collate_fn=_collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Held-out transcripts (the dev split), in order."""
        self.setup()
        return DataLoader(self.val_items, batch_size=self.batch_size, sampler=self._sampler(self.val_items, False),
                          collate_fn=_collate, num_workers=self.num_workers)
