"""The streaming input pipeline (plain torch + WebDataset): shards -> samples -> features -> batches.

Training: each rank takes its own subset of the shards (explicit node split), each worker
samples shards from its part with replacement (resampled, seeded by seed/rank/worker/epoch),
a shuffle buffer mixes utterances, and the stream is cut into epochs with `with_epoch`.
Evaluation: shard i goes to global worker i % (world_size * num_workers), read once, in order:
every utterance exactly once across all ranks and workers, in a fixed order.
"""

from __future__ import annotations

import json
import logging
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from entropy_asr.data.audio import SAMPLE_RATE, decode_audio, fbank, resample
from entropy_asr.data.augment import AugmentConfig, augment_waveform, spec_augment, vtlp
from entropy_asr.data.shards import read_index
from entropy_asr.errors import UserError
from entropy_asr.text import inventory_fingerprint, phones_to_ids

log = logging.getLogger(__name__)

FRAME_SHIFT_S = 0.01


@dataclass
class BatchConfig:
    """Duration-bucketed batching and the per-utterance duration limits."""

    max_batch_seconds: float = 200.0  # cap on padded audio seconds per batch (B * longest)
    max_batch_size: int = 256
    bucket_boundaries: list[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0])
    # Second bucketing axis, in training only (empty: duration only): the transcript's length in UTF-8 bytes, a
    # tokenizer-free measure of the LLM positions it takes (a byte-level BPE makes a token of about 4 bytes in either
    # language: the tiny LLM's, 4.2 / 3.7 / 4.4 bytes in Mandarin / English / mixed sentences). Clips of one duration
    # bucket with short and long transcripts then batch apart and the LLM pads less; the costs: more partial buckets
    # held per worker, and more of them dropped unfinished at an epoch's end (docs/scale.md).
    text_bucket_boundaries: list[int] = field(default_factory=list)
    max_duration: float = 30.0  # longer clips are skipped and counted
    min_duration: float = 0.1

    def __post_init__(self):
        if self.max_duration > self.max_batch_seconds:
            raise UserError(f"batch.max_duration ({self.max_duration} s) exceeds batch.max_batch_seconds "
                            f"({self.max_batch_seconds} s): a maximal clip would not fit a batch; raise the cap")
        if self.max_batch_size < 1:
            raise UserError(f"batch.max_batch_size must be >= 1, got {self.max_batch_size}")
        for key in ("bucket_boundaries", "text_bucket_boundaries"):
            edges = list(getattr(self, key))
            if edges != sorted(set(edges)):
                raise UserError(f"batch.{key} must be strictly increasing, got {edges}")


def worker_position() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class EvalShards(IterableDataset):
    """Shard source for evaluation: shard i goes to rank i % world, and among that rank's shards
    to its workers in turn, in order. Every rank gets at least one shard (or an error): a rank
    without evaluation batches would skip the epoch-end synchronization the others wait in."""

    def __init__(self, urls: list[str], rank: int, world_size: int):
        if 0 < len(urls) < world_size:
            raise UserError(f"{len(urls)} evaluation shard(s) ({urls[0].rsplit('/', 2)[-2]}) for {world_size} ranks: "
                            f"a rank without a shard has nothing to validate and the ranks would hang at the "
                            f"epoch-end sync; write the set with a smaller --shard-size (>= {world_size} shards)")
        self.urls, self.rank, self.world_size = list(urls), rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_position()
        for url in self.urls[self.rank::self.world_size][worker::num_workers]:
            yield {"url": url}


class EpochClock:
    """The training stream's epoch: set by the loader before each pass, read by every random stage of the pipeline
    when its pass starts (a worker reads the copy it was given then). Each stage seeds itself from (seed, rank,
    worker, epoch) alone, so the stream is the same in every run with those settings and a resumed run can
    replay it to the batch (datamodules.speech.TrainLoader)."""

    def __init__(self):
        self.epoch = 0


class TrainShards(IterableDataset):
    """Endless shard source for training: the rank's own shards, sampled with replacement per worker.

    shared: every rank samples from all shards (for a small auxiliary set, e.g. non-speech clips,
    that may have fewer shards than ranks).
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, seed: int, shared: bool = False,
                 clock: EpochClock | None = None):
        if not shared and len(urls) < world_size:
            raise UserError(f"{len(urls)} training shards for {world_size} ranks: each rank needs its own shard; "
                            "re-shard with a smaller --shard-size")
        # explicit node split: ranks read disjoint shards
        self.urls = list(urls) if shared else list(urls)[rank::world_size]
        self.rank, self.seed, self.clock = rank, seed, clock or EpochClock()

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_position()
        # Per-worker split where there are enough shards, so workers do not read the same ones.
        urls = self.urls[worker::num_workers] if len(self.urls) >= num_workers else self.urls
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/{self.clock.epoch}")
        while True:
            yield {"url": rng.choice(urls)}


class DataCounts:
    """Per-worker tally of skipped/adjusted samples; deltas ride along on the next batch."""

    def __init__(self):
        self.pending: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.failed_shards_in_row = 0  # unreadable shards since the last sample (reset by the Featurizer)

    def add(self, kind: str, detail: str) -> None:
        """Count one case of `kind`, keeping the first detail to show in the warning."""
        self.pending[kind] += 1
        self.examples.setdefault(kind, detail)

    def take(self) -> dict[str, tuple[int, str]]:
        """Pop the pending counts as {kind: (count, example detail)}."""
        out = {k: (n, self.examples[k]) for k, n in self.pending.items()}
        self.pending.clear()
        return out


class MixedSamples(IterableDataset):
    """Endless training samples: from `primary`, and with probability `share` from `secondary` instead
    (e.g. non-speech clips with empty transcripts, so the model learns to say nothing)."""

    def __init__(self, primary, secondary, share: float, seed: str, clock: EpochClock | None = None):
        if not 0 <= share < 1:
            raise UserError(f"the share of mixed-in samples must be in [0, 1), got {share}")
        self.primary, self.secondary, self.share, self.seed = primary, secondary, share, seed
        self.clock = clock or EpochClock()

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_position()
        rng = random.Random(f"mix/{self.seed}/{worker}/{self.clock.epoch}")
        primary, secondary = iter(self.primary), iter(self.secondary)
        while True:
            yield next(secondary if rng.random() < self.share else primary)


class BabbleSamples(IterableDataset):
    """Endless training samples from `source`, and with probability `share` a babble clip instead: 5-8 of the
    stream's recent utterances overlapped (about half of them time-reversed), with an empty transcript
    (language "none"). Speech-like sound with no words in it, made from the training speech itself (any
    corpus), so the model learns not to transcribe background chatter. The clip is as long as its first
    talker's utterance and sits at the talkers' mean level, -10..0 dB."""

    def __init__(self, source, share: float, seed: str, clock: EpochClock | None = None,
                 talkers: tuple[int, int] = (5, 8), pool: int = 32):
        if not 0 <= share < 1:
            raise UserError(f"data.init_args.babble_share must be in [0, 1), got {share}")
        self.source, self.share, self.seed, self.talkers, self.pool = source, share, seed, talkers, pool
        self.clock = clock or EpochClock()

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_position()
        rng = random.Random(f"babble/{self.seed}/{worker}/{self.clock.epoch}")
        source, recent, made = iter(self.source), [], 0
        while True:
            if len(recent) >= self.talkers[1] and rng.random() < self.share:
                clip = babble_clip([a for b in rng.sample(recent, rng.randint(*self.talkers))
                                    if (a := _decoded_or_none(b)) is not None], rng)
                made += 1
                yield {"__key__": f"babble-{worker}-{self.clock.epoch}-{made}", "__url__": "babble",
                       "json": b'{"text": "", "norm_text": "", "language": "none", "phones": []}', "wav": clip}
                continue
            sample = next(source, None)
            if sample is None:
                return
            if isinstance(sample.get("flac"), bytes):
                recent.append(sample["flac"])
                del recent[:-self.pool]
            yield sample


def _decoded_or_none(data: bytes) -> tuple[np.ndarray, int] | None:
    """decode_audio, or None for audio that does not decode (the Featurizer counts it when its sample comes)."""
    try:
        return decode_audio(data)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None


def babble_clip(talkers: list[tuple[np.ndarray, int]], rng: random.Random) -> tuple[np.ndarray, int]:
    """Overlap decoded utterances (samples, rate) into one clip at SAMPLE_RATE: each looped to the first one's
    length from a random start, reversed with probability 1/2, within +-3 dB of the others."""
    xs = [resample(x, sr) if sr != SAMPLE_RATE else x for x, sr in talkers]
    xs = [x.astype(np.float64) for x in xs if len(x)]
    if not xs:
        return np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE
    n = len(xs[0])
    rms = [float(np.sqrt(np.mean(x ** 2))) for x in xs]
    out = np.zeros(n)
    for x, r in zip(xs, rms):
        if rng.random() < 0.5:
            x = x[::-1]
        x = np.tile(x, 1 + n // len(x))
        start = rng.randrange(len(x) - n + 1)
        out += x[start:start + n] * 10 ** (rng.uniform(-3, 3) / 20) / max(r, 1e-9)
    level = float(np.mean(rms)) * 10 ** (rng.uniform(-10, 0) / 20)
    out *= level / max(float(np.sqrt(np.mean(out ** 2))), 1e-9)
    return np.clip(out, -1, 1).astype(np.float32), SAMPLE_RATE


def _shard_handler(counts: DataCounts, endless: bool = False):
    def handler(exn: Exception) -> bool:
        counts.add("corrupt_shard", f"unreadable tar member or shard ({exn!r}); rest of shard skipped")
        counts.failed_shards_in_row += 1
        if endless and counts.failed_shards_in_row >= MAX_FAILED_SHARDS_IN_ROW:  # it would draw them forever
            raise UserError(f"training data: the last {counts.failed_shards_in_row} shards read were all unreadable "
                            f"(the first: {counts.examples['corrupt_shard']}); re-copy or re-prepare the shard dir")
        return True  # keep going with the next shard
    return handler


# a training stream that skips this many samples, or fails on this many shards, in a row has nothing usable:
# an error, not an endless loop
MAX_DROPPED_IN_ROW = 5000
MAX_FAILED_SHARDS_IN_ROW = 100


class Featurizer:
    """Decode, validate, augment and featurize one raw WebDataset sample (None => skipped, counted)."""

    def __init__(self, cmvn: tuple[torch.Tensor, torch.Tensor], batch: BatchConfig,
                 augment: AugmentConfig | None, seed: int, counts: DataCounts, clock: EpochClock | None = None):
        self.mean, self.inv_std = cmvn
        self.batch, self.augment, self.seed, self.counts = batch, augment, seed, counts
        self.clock = clock or EpochClock()
        self.rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None
        self.endless, self.dropped_in_row = False, 0  # endless: a training stream (build_pipeline sets it)

    def __call__(self, sample: dict) -> dict | None:
        self.counts.failed_shards_in_row = 0  # a sample came: its shard was readable
        out = self._featurize(sample)
        if out is not None:
            self.dropped_in_row = 0
        elif self.endless:  # training: the stream is endless, so a set where nothing survives would spin
            self.dropped_in_row += 1
            if self.dropped_in_row >= MAX_DROPPED_IN_ROW:
                raise UserError(
                    f"training data: the last {self.dropped_in_row} samples were all skipped "
                    f"({dict(self.counts.pending) or 'see the data_counts warnings'}); nothing survives loading: check "
                    f"that the shards are readable and that batch.max_duration ({self.batch.max_duration} s) / "
                    f"min_duration ({self.batch.min_duration} s) fit the clips")
        return out

    def _featurize(self, sample: dict) -> dict | None:
        key = sample.get("__key__", "?")
        where = f"{sample.get('__url__', '?')}:{key}"
        if "json" not in sample:
            self.counts.add("missing_json", f"{where}: no {key}.json member; skipped")
            return None
        if "flac" not in sample and "wav" not in sample:  # wav: decoded already (BabbleSamples)
            self.counts.add("missing_audio", f"{where}: no {key}.flac member; skipped")
            return None
        try:
            meta = json.loads(sample["json"])
            text, language, phones = meta["text"], meta["language"], meta["phones"]
        except (ValueError, KeyError) as e:
            self.counts.add("bad_json", f"{where}: unreadable metadata ({e!r}); skipped")
            return None
        try:
            x, sr = sample["wav"] if "wav" in sample else decode_audio(sample["flac"])
        except (sf.LibsndfileError, RuntimeError, ValueError) as e:
            self.counts.add("corrupt_audio", f"{where}: cannot decode audio ({e}); skipped")
            return None
        if sr != SAMPLE_RATE:
            self.counts.add("resampled", f"{where}: {sr} Hz resampled to {SAMPLE_RATE} Hz")
            x = resample(x, sr)
        duration = len(x) / SAMPLE_RATE
        if duration > self.batch.max_duration:
            self.counts.add("too_long", f"{where}: {duration:.1f} s > max_duration "
                                        f"{self.batch.max_duration} s; skipped")
            return None
        if duration < self.batch.min_duration:
            self.counts.add("too_short", f"{where}: {duration:.3f} s < min_duration "
                                         f"{self.batch.min_duration} s; skipped")
            return None
        if language != "none" and not text.strip():
            self.counts.add("empty_text", f"{where}: empty transcript with language {language!r}; skipped")
            return None
        if self.augment is not None:
            x = augment_waveform(x, self.augment, self._rng())
        feats = fbank(x)  # (T, 80)
        if self.augment is not None and self.augment.vtlp > 0:
            feats = vtlp(feats, float(self._rng().uniform(1 - self.augment.vtlp, 1 + self.augment.vtlp)))
        feats = (feats - self.mean) * self.inv_std  # global CMVN
        views = {}
        if self.augment is not None:
            if self.augment.views == 2:  # CR-CTC: same waveform, two independent SpecAugment masks
                views["feats2"] = spec_augment(feats, self.augment, self._rng())
            feats = spec_augment(feats, self.augment, self._rng())
        return {
            "key": key,
            "feats": feats,
            **views,
            "phones": torch.tensor(phones_to_ids(phones), dtype=torch.long),
            "text": text,
            "norm_text": meta.get("norm_text", ""),
            "language": language,
            "duration": duration,
        }

    def _rng(self) -> np.random.Generator:
        worker, _ = worker_position()
        key = (worker, self.clock.epoch)
        if self._rng_key != key:  # created inside the worker, anew each epoch: a stream per (seed, worker, epoch)
            self.rng, self._rng_key = np.random.default_rng([self.seed, worker, self.clock.epoch]), key
        return self.rng


def collate(samples: list[dict], counts: dict | None = None) -> dict:
    """Pad a list of featurized samples into a batch.

    feats (B, T, 80) zero-padded (and feats2, the second view, with augment.views 2), feat_lens (B,), phones (B, S)
    padded with 0 (= <blank>, never a target; use phone_lens), phone_lens (B,), and lists text / norm_text /
    language / keys.
    """
    B = len(samples)
    feat_lens = torch.tensor([s["feats"].shape[0] for s in samples], dtype=torch.long)
    phone_lens = torch.tensor([s["phones"].shape[0] for s in samples], dtype=torch.long)
    views = ["feats"] + (["feats2"] if "feats2" in samples[0] else [])
    padded = {v: torch.zeros(B, int(feat_lens.max()), samples[0]["feats"].shape[1]) for v in views}
    phones = torch.zeros(B, max(1, int(phone_lens.max())), dtype=torch.long)
    for i, s in enumerate(samples):
        for v in views:
            padded[v][i, : feat_lens[i]] = s[v]
        phones[i, : phone_lens[i]] = s["phones"]
    return {
        **padded,
        "feat_lens": feat_lens,
        "phones": phones,
        "phone_lens": phone_lens,
        "text": [s["text"] for s in samples],
        "norm_text": [s["norm_text"] for s in samples],
        "language": [s["language"] for s in samples],
        "keys": [s["key"] for s in samples],
        "durations": torch.tensor([s["duration"] for s in samples]),
        "data_counts": counts or {},
    }


def bucket_batches(samples: Iterable[dict], cfg: BatchConfig, counts: DataCounts) -> Iterator[dict]:
    """Group samples of similar length (duration, and transcript bytes with cfg.text_bucket_boundaries); a batch's
    padded seconds (B * longest) stay <= the cap."""
    bounds, text_bounds = list(cfg.bucket_boundaries), list(cfg.text_bucket_boundaries)
    buckets: list[list[dict]] = [[] for _ in range((len(bounds) + 1) * (len(text_bounds) + 1))]
    longest = [0.0] * len(buckets)
    for s in samples:
        sec = s["feats"].shape[0] * FRAME_SHIFT_S
        b = bisect_left(bounds, sec) * (len(text_bounds) + 1)  # the first bucket whose upper edge holds it
        if text_bounds:
            b += bisect_left(text_bounds, len(s["text"].encode()))
        n, new_longest = len(buckets[b]) + 1, max(longest[b], sec)
        if buckets[b] and (n * new_longest > cfg.max_batch_seconds or n > cfg.max_batch_size):
            yield collate(buckets[b], counts.take())
            buckets[b], new_longest = [], sec
        buckets[b].append(s)
        longest[b] = new_longest
    for b in buckets:  # end of stream: flush partial batches so evaluation misses nothing
        if b:
            yield collate(b, counts.take())
    leftover = counts.take()
    if leftover:  # skips after the last batch have no batch to ride on: log them here
        log.warning("data counts after the last batch of this worker: %s", {k: v[0] for k, v in leftover.items()})


def _worker_shuffle(src: Iterable[dict], bufsize: int, seed: str, clock: EpochClock) -> Iterator[dict]:
    """WebDataset's buffer shuffle with a generator seeded per rank, worker and epoch (not per pipeline)."""
    worker, _ = worker_position()
    rng = random.Random(f"{seed}/{worker}/{clock.epoch}")
    return wds.filters._shuffle(src, bufsize, min(bufsize, 100), rng=rng)


def shard_urls(data_dir: str | Path) -> list[str]:
    """The shard paths listed in DIR/index.json, after checking they are labelled with our inventory."""
    index = read_index(data_dir)
    inv = index.get("phone_inventory", {})
    if inv.get("fingerprint") != inventory_fingerprint():
        raise UserError(
            f"{data_dir}: shards were labelled with phone inventory {inv} but this code uses version "
            f"fingerprint {inventory_fingerprint()}; rebuild the shards with entropy_asr.data.prepare/synthetic"
        )
    if not index["shards"]:
        raise UserError(f"{data_dir}: index.json lists no shards (a set where nothing was usable?); prepare the set "
                        "again (entropy_asr.data.prepare) or point at another dir")
    return [str(Path(data_dir) / s["name"]) for s in index["shards"]]


def nonspeech_shard_urls(data_dir: str | Path) -> list[str]:
    """shard_urls of a dir that must hold only clips without speech (index.json: languages {"none": n})."""
    urls = shard_urls(data_dir)
    languages = read_index(data_dir).get("languages", {})
    speech = {k: v for k, v in languages.items() if k != "none"}
    if speech or not languages:
        raise UserError(f"{data_dir}: data.nonspeech_dirs must hold only clips without speech (language 'none'), "
                        f"but its index.json counts {languages or 'no languages'}; write it with "
                        f"`python -m entropy_asr.data.prepare ... --nonspeech`")
    return urls


def build_pipeline(
    urls: list[str],
    *,
    train: bool,
    cmvn: tuple[torch.Tensor, torch.Tensor],
    batch: BatchConfig,
    augment: AugmentConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    batches_per_epoch: int | None = None,
    num_workers: int = 0,
    mix_urls: list[str] | None = None,
    mix_share: float = 0.0,
    babble_share: float = 0.0,
) -> wds.DataPipeline:
    """A WebDataset pipeline yielding padded batches; iterate it through DataLoader(batch_size=None).

    Training with `mix_urls` and `mix_share` > 0 draws that share of the utterances from those
    shards (every rank from all of them) instead of `urls`; with `babble_share` > 0 that share of the
    speech stream's utterances are babble made from its own recent utterances (BabbleSamples).
    """
    counts = DataCounts()
    clock = EpochClock()
    featurize = Featurizer(cmvn, batch, augment if train else None, seed, counts, clock)
    featurize.endless = train
    if train:
        def samples(shards: TrainShards, tag: str) -> wds.DataPipeline:
            return wds.DataPipeline(shards, wds.tarfile_to_samples(handler=_shard_handler(counts, endless=True)),
                                    lambda src: _worker_shuffle(src, shuffle_buffer, f"{seed}/{rank}{tag}", clock))

        speech = samples(TrainShards(urls, rank, world_size, seed, clock=clock), "")
        if babble_share > 0:
            speech = BabbleSamples(speech, babble_share, f"{seed}/{rank}", clock)
        if mix_urls and mix_share > 0:
            other = samples(TrainShards(mix_urls, rank, world_size, seed + 1, shared=True, clock=clock), "/mix")
            stages = [MixedSamples(speech, other, mix_share, f"{seed}/{rank}", clock)]
        else:
            stages = [speech]
    else:
        stages = [EvalShards(urls, rank, world_size), wds.tarfile_to_samples(handler=_shard_handler(counts))]
    # evaluation buckets by duration only: it flushes every partial bucket at the end, and text buckets would split
    # its few utterances into many small decoding batches
    buckets = batch if train else replace(batch, text_bucket_boundaries=[])
    stages += [wds.map(featurize), lambda src: bucket_batches(src, buckets, counts)]  # map drops None
    pipe = wds.DataPipeline(*stages)
    if train:
        if not batches_per_epoch:
            raise UserError("batches_per_epoch must be set for training (the shard stream is endless)")
        pipe = pipe.with_epoch(-(-batches_per_epoch // max(1, num_workers)))  # per worker, rounded up
    pipe.clock = clock  # the loader sets the epoch before each pass
    return pipe
