"""LightningDataModule streaming WebDataset speech shards (train / val / test) for every stage.

Use with `Trainer(use_distributed_sampler=False)`: the pipeline splits shards over ranks and
workers itself (see entropy_asr.data.pipeline).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from entropy_asr.data.audio import load_cmvn
from entropy_asr.data.augment import AugmentConfig
from entropy_asr.data.context import ContextConfig, HotwordSampler
from entropy_asr.data.pipeline import (
    BatchConfig,
    build_pipeline,
    nonspeech_shard_urls,
    shard_urls,
)
from entropy_asr.errors import UserError, UserFileNotFound

log = logging.getLogger(__name__)


class TrainLoader(DataLoader):
    """The training stream's DataLoader, resumable mid-epoch.

    Each pass (epoch) sets the pipeline's EpochClock, so its batches are a function of (data seed, rank,
    worker, epoch). Lightning keeps this loader's state_dict (the epoch and the batches the trainer has taken
    from it) in every checkpoint and hands it back on resume: the resumed pass replays that epoch and skips
    the batches already trained, so the run continues on the batches an uninterrupted run would have seen.
    The skipped batches are read and featurized again (no model compute): a resume late in a long epoch
    costs that much data loading before the first step.
    """

    def __init__(self, pipe, epoch_batches: int, taken, **kwargs):
        super().__init__(pipe, batch_size=None, **kwargs)
        self._epoch_batches, self._taken = epoch_batches, taken  # taken(): batches of this pass the trainer took
        self.epoch, self._next_epoch, self._skip = -1, 0, 0

    def __iter__(self):
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        self.dataset.clock.epoch = self.epoch
        it = super().__iter__()
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            next(it)
        return it

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": int(self._taken())}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= self._epoch_batches:  # saved at the end of a pass: the next one starts fresh
            epoch, batches = epoch + 1, 0
        self._next_epoch, self._skip = epoch, batches


class SpeechDataModule(L.LightningDataModule):
    """Batches of fbank features, phone ids and transcripts from shard dirs.

    Args:
        train_dir / val_dir / test_dirs: shard dirs (index.json + shard-*.tar); test_dirs may be
            several, e.g. test and test_unseen_voice.
        cmvn: cmvn.json to normalize with; default: the training dir's (else the val dir's).
        synthetic: if set, {"root": DIR, "utterances": N, "seed": S, ...}: build the synthetic
            corpus into DIR (default: a cache dir named by N and S) in prepare_data when it is
            missing; unset dirs default to its train / dev / [test, test_unseen_voice, nonspeech],
            and nonspeech_dirs to its train_nonspeech.
        nonspeech_dirs / nonspeech_share: shard dirs of clips without speech (language "none",
            empty transcripts; `prepare --nonspeech` writes them from your own recordings) and the
            share of training utterances drawn from them, so the model learns to say nothing on
            silence and noise. Their shards are shared by all ranks.
        babble_share: share of training utterances replaced by babble made on the fly from 5-8 recent
            training utterances overlapped (half reversed), with empty transcripts: speech-like sound with no
            words, so the model learns not to transcribe background chatter (entropy_asr.data.pipeline.BabbleSamples).
        batches_per_epoch: training batches per epoch per rank (the training stream is endless).
        context: hotword lists for context SFT (entropy_asr.data.context.ContextConfig; {} for its defaults):
            each training and validation utterance gets one (batch["hotwords"], with "hotwords_present" and
            "hotwords_absent"), drawn from its transcript and the training transcripts' vocabulary, the same
            for an utterance in a given epoch whatever the rank (validation: always the same).
        rank / world_size: override the trainer's (for tests that simulate ranks).
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dirs: list[str] | None = None,
        cmvn: str | None = None,
        batch: BatchConfig | None = None,
        augment: AugmentConfig | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        batches_per_epoch: int = 1000,
        seed: int = 0,
        synthetic: dict | None = None,
        nonspeech_dirs: list[str] | None = None,
        nonspeech_share: float = 0.0,
        babble_share: float = 0.0,
        rank: int | None = None,
        world_size: int | None = None,
        context: ContextConfig | None = None,
    ):
        super().__init__()
        if synthetic is not None:  # unset dirs default to the synthetic corpus' splits
            from entropy_asr.data.synthetic import corpus_dir

            root = corpus_dir(**synthetic)
            train_dir = train_dir or str(root / "train")
            val_dir = val_dir or str(root / "dev")
            test_dirs = test_dirs or [str(root / s) for s in ("test", "test_unseen_voice", "nonspeech")]
            nonspeech_dirs = nonspeech_dirs if nonspeech_dirs is not None else [str(root / "train_nonspeech")]
        if not 0 <= nonspeech_share < 1:
            raise UserError(f"data.init_args.nonspeech_share must be in [0, 1), got {nonspeech_share}")
        if nonspeech_share > 0 and not nonspeech_dirs:
            raise UserError("data.init_args.nonspeech_share > 0 needs data.init_args.nonspeech_dirs: shard dirs of "
                            "clips without speech (python -m entropy_asr.data.prepare jsonl ... --nonspeech)")
        self.train_dir, self.val_dir, self.test_dirs = train_dir, val_dir, list(test_dirs or [])
        if not 0 <= babble_share < 1:
            raise UserError(f"data.init_args.babble_share must be in [0, 1), got {babble_share}")
        self.nonspeech_dirs, self.nonspeech_share = list(nonspeech_dirs or []), nonspeech_share
        self.babble_share = babble_share
        self.cmvn_path = cmvn
        self.batch = batch or BatchConfig()
        self.augment = augment if augment is not None else AugmentConfig()
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.batches_per_epoch, self.seed, self.synthetic = batches_per_epoch, seed, synthetic
        self._rank, self._world_size = rank, world_size
        self.context = context
        self._hotword_sampler: HotwordSampler | None = None
        self.data_counts: Counter = Counter()  # skipped/adjusted samples seen by this process
        self._warned: set[str] = set()
        self._cmvn = None

    def prepare_data(self) -> None:
        """Build the synthetic corpus once (rank 0 of each node) when configured and missing."""
        if self.synthetic:
            from entropy_asr.data.synthetic import ensure_corpus

            ensure_corpus(**self.synthetic)

    def _position(self) -> tuple[int, int]:
        if self._rank is not None or self._world_size is not None:
            rank, world = self._rank or 0, self._world_size or 1
        elif self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world_size {world}")
        return rank, world

    def setup(self, stage: str | None = None) -> None:
        """Check the dirs the stage needs, then load CMVN statistics (read once, shared by every loader)."""
        need = {"fit": ["train_dir", "val_dir"], "validate": ["val_dir"], "test": ["test_dirs"]}.get(stage or "", [])
        for key in need:
            if not getattr(self, key):
                raise UserError(f"data.init_args.{key} is not set: point it at a shard dir (index.json + "
                                "shard-*.tar) from `python -m entropy_asr.data.prepare`, or set "
                                "data.init_args.synthetic")
        if stage == "fit":  # every dir the run will read, checked now: a typo must not surface after hours of training
            for key, dirs in (("train_dir", [self.train_dir]), ("val_dir", [self.val_dir]),
                              ("test_dirs", list(self.test_dirs or [])), ("nonspeech_dirs", list(self.nonspeech_dirs))):
                for i, d in enumerate(dirs):
                    if d and not (Path(d) / "index.json").is_file():
                        where = f"data.init_args.{key}" + (f"[{i}]" if key.endswith("dirs") else "")
                        raise UserFileNotFound(f"{where} = {d}: no index.json there; point it at a shard dir from "
                                               "`python -m entropy_asr.data.prepare` (or fix the path)")
        path = self.cmvn_file()
        if path is None:
            raise UserError("no cmvn: set data.cmvn, or data.train_dir / data.val_dir whose cmvn.json is used")
        self._cmvn = load_cmvn(path)
        if stage == "fit" and self.context is not None:
            self.hotword_sampler()  # the vocabulary (seconds of reading and phonemizing) now, not in the first step

    def cmvn_file(self) -> Path | None:
        """The cmvn.json the features are normalized with: data.cmvn, else the training dir's (else the val dir's)."""
        path = self.cmvn_path or next((str(Path(d) / "cmvn.json") for d in (self.train_dir, self.val_dir) if d), None)
        return Path(path) if path is not None else None

    def _loader(self, data_dir: str | None, name: str, train: bool, whole: bool = False) -> DataLoader:
        if not data_dir:
            raise UserError(f"data.{name} is not set; point it at a shard dir (index.json + shard-*.tar)")
        urls = shard_urls(data_dir)
        if self._cmvn is None:
            self.setup()
        rank, world = (0, 1) if whole else self._position()
        mix = [u for d in self.nonspeech_dirs for u in nonspeech_shard_urls(d)] \
            if train and self.nonspeech_share else []
        pipe = build_pipeline(
            urls, train=train, cmvn=self._cmvn, batch=self.batch, augment=self.augment,
            rank=rank, world_size=world, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
            batches_per_epoch=self.batches_per_epoch, num_workers=self.num_workers,
            mix_urls=mix, mix_share=self.nonspeech_share,
            babble_share=self.babble_share,  # training only (build_pipeline)
        )
        if train:
            workers = max(1, self.num_workers)
            return TrainLoader(pipe, -(-self.batches_per_epoch // workers) * workers, self._taken,
                               num_workers=self.num_workers, persistent_workers=False, pin_memory=False)
        return DataLoader(pipe, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=False)

    def _taken(self) -> int:
        """Batches of the current training pass the trainer has taken (0 outside a fit)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def train_dataloader(self) -> DataLoader:
        """Endless, resampled, shuffled training stream cut into epochs of batches_per_epoch."""
        return self._loader(self.train_dir, "train_dir", train=True)

    def val_dataloader(self) -> DataLoader:
        """Every validation utterance exactly once across ranks and workers, in a fixed order."""
        return self._loader(self.val_dir, "val_dir", train=False)

    def probe_dataloader(self) -> DataLoader:
        """The validation set as one process reads it, on every rank: the metric callbacks' probe set, so that a
        probe's value is the same whatever the number of ranks."""
        return self._loader(self.val_dir, "val_dir", train=False, whole=True)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test dir, each read exactly once."""
        if not self.test_dirs:
            raise UserError("data.test_dirs is not set; give a list of shard dirs (index.json + shard-*.tar)")
        return [self._loader(d, f"test_dirs[{i}]", train=False) for i, d in enumerate(self.test_dirs)]

    def account(self, batch: dict) -> dict:
        """Move the batch's skipped-sample counts into `data_counts`, warning once per kind."""
        for kind, (n, example) in batch.pop("data_counts", {}).items():
            self.data_counts[kind] += n
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("data: %s (%s); further cases are counted in data_counts", kind, example)
        return batch

    def hotword_sampler(self) -> HotwordSampler:
        """The context sampler over the training transcripts' vocabulary (built once: at setup for fit, else on first
        use)."""
        if self._hotword_sampler is None:
            if not self.train_dir:
                raise UserError("data.init_args.context draws hotwords from the training transcripts: set "
                                "data.init_args.train_dir")
            self._hotword_sampler = HotwordSampler.from_shards(self.train_dir, self.context)
        return self._hotword_sampler

    def add_hotwords(self, batch: dict, epoch: int | None) -> dict:
        """batch["hotwords"] (the prompt's list), "hotwords_present" and "hotwords_absent" for each utterance, drawn
        with a generator seeded by (seed, key, epoch): a resumed or re-sharded run draws the same (epoch None:
        validation, the same list every time)."""
        sampler = self.hotword_sampler()
        drawn = [sampler.sample(text, language, random.Random(f"{self.seed}:{key}:{epoch}"))
                 for key, text, language in zip(batch["keys"], batch["text"], batch["language"], strict=True)]
        return {**batch, "hotwords": [list(d.words) for d in drawn],
                "hotwords_present": [list(d.present) for d in drawn],
                "hotwords_absent": [list(d.absent) for d in drawn]}

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Lightning hook: account for skipped samples on every batch; with `context`, add the training and
        validation utterances' hotword lists."""
        batch = self.account(batch)
        trainer = self.trainer
        if self.context is not None and trainer is not None and (trainer.training or trainer.validating
                                                                 or trainer.sanity_checking):
            batch = self.add_hotwords(batch, trainer.current_epoch if trainer.training else None)
        return batch
