"""The streaming datamodule: coverage across ranks x workers, training splits, batching, bad input."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules import SpeechDataModule
from entropy_asr.data.audio import encode_flac
from entropy_asr.data.augment import AugmentConfig
from entropy_asr.data.pipeline import BatchConfig
from entropy_asr.data.shards import read_index
from entropy_asr.text import PHONES
from tests.conftest import tone


def keys_in(data_dir: Path) -> dict[str, str]:
    """key -> shard name for every utterance of a shard dir."""
    out = {}
    for s in read_index(data_dir)["shards"]:
        with tarfile.open(data_dir / s["name"]) as tar:
            for m in tar.getmembers():
                out[m.name.split(".")[0]] = s["name"]
    return out


def dm_for(corpus: Path, **kw) -> SpeechDataModule:
    kw.setdefault("batch", BatchConfig(max_batch_seconds=40.0, max_batch_size=16, max_duration=20.0))
    return SpeechDataModule(train_dir=str(corpus / "train"), val_dir=str(corpus / "train"), **kw)


def val_keys(dm: SpeechDataModule) -> list[str]:
    return [k for b in dm.val_dataloader() for k in dm.account(b)["keys"]]


def test_validation_covers_every_utterance_once_across_2_ranks_x_2_workers(tiny_corpus):
    expected = keys_in(tiny_corpus / "train")
    assert len(set(expected.values())) >= 4  # enough shards that every (rank, worker) gets some
    per_rank = [val_keys(dm_for(tiny_corpus, rank=r, world_size=2, num_workers=2)) for r in (0, 1)]
    assert all(per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint across ranks
    merged = per_rank[0] + per_rank[1]
    assert len(merged) == len(set(merged))  # nothing twice
    assert set(merged) == set(expected)  # nothing missing
    again = val_keys(dm_for(tiny_corpus, rank=0, world_size=2, num_workers=2))
    assert again == per_rank[0]  # fixed order


def test_an_eval_set_with_fewer_shards_than_ranks_is_an_error_not_a_hang(tiny_corpus):
    dm = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"), rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"1 evaluation shard\(s\) \(dev\) for 2 ranks.*smaller --shard-size"):
        dm.val_dataloader()


def test_training_ranks_read_disjoint_shards(tiny_corpus):
    shard_of = keys_in(tiny_corpus / "train")
    seen = []
    for r in (0, 1):
        dm = dm_for(tiny_corpus, rank=r, world_size=2, num_workers=0, batches_per_epoch=6, shuffle_buffer=20)
        keys = [k for b in dm.train_dataloader() for k in b["keys"]]
        seen.append({shard_of[k] for k in keys})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_training_epoch_length_and_batch_contents(tiny_corpus):
    cfg = BatchConfig(max_batch_seconds=30.0, max_batch_size=8, max_duration=20.0)
    dm = dm_for(tiny_corpus, batch=cfg, num_workers=2, batches_per_epoch=6, shuffle_buffer=20)
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    for b in batches:
        B, T, F = b["feats"].shape
        assert F == 80 and B == len(b["keys"]) == len(b["text"]) == len(b["language"]) <= 8
        assert int(b["feat_lens"].max()) == T
        assert B * T * 0.01 <= 30.0 + 1e-6  # padded seconds under the cap
        assert b["phones"].shape[0] == B and (b["phone_lens"] > 0).all()
        assert int(b["phones"].min()) >= 0 and int(b["phones"].max()) < len(PHONES)
        for i in range(B):  # padding is zero beyond each length
            assert float(b["feats"][i, b["feat_lens"][i]:].abs().sum()) == 0.0
        assert set(b["language"]) <= {"zh", "en", "mix"}


def test_eval_features_are_cmvn_normalized(tiny_corpus):
    dm = dm_for(tiny_corpus, num_workers=0)
    frames = torch.cat([b["feats"][i, : b["feat_lens"][i]] for b in dm.val_dataloader() for i in range(len(b["keys"]))])
    # The corpus' own CMVN statistics applied to the same data: mean 0, std 1 per bin.
    np.testing.assert_allclose(frames.mean(0).numpy(), 0.0, atol=1e-3)
    np.testing.assert_allclose(frames.std(0).numpy(), 1.0, atol=1e-2)


def write_bad_shard(d: Path) -> None:
    """A shard with one good utterance and one of each bad kind."""
    d.mkdir()
    good = {"text": "hello", "norm_text": "hello", "language": "en", "phones": ["HH", "AH0", "L", "OW1"],
            "duration": 1.0, "speaker": "s", "source": "t"}
    members = {
        "good.flac": encode_flac(tone(1.0)), "good.json": json.dumps(good).encode(),
        "corrupt.flac": b"fLaC\x00\x00broken", "corrupt.json": json.dumps(good).encode(),
        "nojson.flac": encode_flac(tone(1.0)),
        "empty.flac": encode_flac(tone(1.0)), "empty.json": json.dumps({**good, "text": " "}).encode(),
        "long.flac": encode_flac(tone(25.0)), "long.json": json.dumps(good).encode(),
        "rate8k.json": json.dumps(good).encode(),
    }
    buf = io.BytesIO()
    sf.write(buf, tone(1.0, sr=8000), 8000, format="FLAC")
    members["rate8k.flac"] = buf.getvalue()
    with tarfile.open(d / "shard-000000.tar", "w") as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    from entropy_asr.text import INVENTORY_VERSION, inventory_fingerprint

    (d / "index.json").write_text(json.dumps({
        "shards": [{"name": "shard-000000.tar", "count": 6, "seconds": 0}],
        "phone_inventory": {"version": INVENTORY_VERSION, "fingerprint": inventory_fingerprint()}}))


def test_bad_input_is_skipped_counted_and_warned_once(tiny_corpus, tmp_path, caplog):
    bad = tmp_path / "bad"
    write_bad_shard(bad)
    dm = SpeechDataModule(val_dir=str(bad), cmvn=str(tiny_corpus / "train" / "cmvn.json"), num_workers=0,
                          batch=BatchConfig(max_batch_seconds=40.0, max_duration=20.0))
    with caplog.at_level(logging.WARNING):
        keys = val_keys(dm) + val_keys(dm)  # twice: counts add up, warnings do not repeat
    assert sorted(keys) == ["good", "good", "rate8k", "rate8k"]
    assert dm.data_counts == Counter({"corrupt_audio": 2, "missing_json": 2, "empty_text": 2,
                                      "too_long": 2, "resampled": 2})
    warned = [r.getMessage() for r in caplog.records if r.name == "datamodules.speech"]
    assert len(warned) == 5 and any("nojson" in w for w in warned)


def test_inventory_mismatch_is_an_error(tiny_corpus, tmp_path):
    import shutil

    d = tmp_path / "old"
    shutil.copytree(tiny_corpus / "dev", d)
    index = json.loads((d / "index.json").read_text())
    index["phone_inventory"]["fingerprint"] = "0000"
    (d / "index.json").write_text(json.dumps(index))
    dm = SpeechDataModule(val_dir=str(d), num_workers=0)
    with pytest.raises(ValueError, match="rebuild the shards"):
        dm.val_dataloader()


def test_missing_dir_and_bad_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a shard dir"):
        SpeechDataModule(val_dir=str(tmp_path), num_workers=0)._loader(str(tmp_path), "val_dir", False)
    with pytest.raises(ValueError, match="max_duration"):
        BatchConfig(max_batch_seconds=10.0, max_duration=20.0)
    with pytest.raises(ValueError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="data.train_dir is not set"):
        SpeechDataModule(cmvn=str(tmp_path / "x"))._loader(None, "train_dir", True)


def test_lightning_trainer_fits_from_the_datamodule(tiny_corpus, tmp_path):
    import lightning as L

    class Probe(L.LightningModule):
        """Smallest module that consumes real batches: a linear map of the mean frame."""

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(80, 1)
            self.seen: list[str] = []

        def training_step(self, batch, _):
            assert "data_counts" not in batch  # popped by the datamodule's hook
            return self.lin(batch["feats"].mean(1)).pow(2).mean()

        def validation_step(self, batch, _):
            self.seen += batch["keys"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "dev"), num_workers=1,
                          batches_per_epoch=3, shuffle_buffer=10,
                          batch=BatchConfig(max_batch_seconds=40.0, max_duration=20.0))
    model = Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    assert sorted(model.seen) == sorted(keys_in(tiny_corpus / "dev"))


def test_each_training_epoch_draws_a_new_stream(tiny_corpus):
    # Augmentation off: only the shard sampling and the shuffle buffer may change the stream.
    dm = dm_for(tiny_corpus, num_workers=1, batches_per_epoch=3, shuffle_buffer=20, augment=AugmentConfig.off())
    loader = dm.train_dataloader()
    epochs = [[k for b in loader for k in b["keys"]] for _ in range(2)]  # the same loader, as Lightning reuses it
    assert epochs[0] and epochs[1] and epochs[0] != epochs[1]


def test_test_loaders_one_per_dir(tiny_corpus):
    dm = SpeechDataModule(synthetic={"root": str(tiny_corpus), "utterances": 60, "seed": 7}, num_workers=0)
    loaders = dm.test_dataloader()
    assert len(loaders) == 3  # test, test_unseen_voice, nonspeech
    nonspeech = [b for b in loaders[2]]
    assert nonspeech and all(lang == "none" and text == ""
                             for b in nonspeech for lang, text in zip(b["language"], b["text"]))
    assert all(int(b["phone_lens"].max()) == 0 for b in nonspeech)
    with pytest.raises(ValueError, match="data.test_dirs is not set"):
        SpeechDataModule(val_dir=str(tiny_corpus / "dev"), num_workers=0).test_dataloader()


# Non-speech mixing. One bucket and small batches keep the emitted stream in mixer order: at most
# max_batch_size - 1 drawn utterances wait in the bucket when the epoch is cut, so the measured
# share is the mixer's own up to that many utterances.
MIX_BATCH = BatchConfig(max_batch_seconds=40.0, max_batch_size=4, max_duration=20.0, bucket_boundaries=[])


def mixed_stream(corpus: Path, share: float, seed: int = 123, **kw) -> list[tuple[str, str, str, int]]:
    """(key, language, text, phone_len) of every training utterance of one epoch, torch seeded with `seed`."""
    kw.setdefault("batches_per_epoch", 100)
    dm = dm_for(corpus, batch=MIX_BATCH, num_workers=0, shuffle_buffer=20, augment=AugmentConfig.off(),
                nonspeech_dirs=[str(corpus / "train_nonspeech")], nonspeech_share=share, **kw)
    torch.manual_seed(seed)  # the streams are seeded from torch's initial seed (Lightning's seed_everything)
    out = []
    for b in dm.train_dataloader():
        dm.account(b)
        out += zip(b["keys"], b["language"], b["text"], b["phone_lens"].tolist(), strict=True)
    assert not dm.data_counts  # nothing skipped: every drawn utterance is in a batch (or the last bucket)
    return out


def test_mixed_samples_draws_the_share_from_the_secondary_stream():
    from itertools import repeat

    from entropy_asr.data.pipeline import MixedSamples

    share, n = 0.3, 20000
    torch.manual_seed(5)
    draws = [x for x, _ in zip(MixedSamples(repeat("a"), repeat("b"), share, "s"), range(n), strict=False)]
    assert abs(draws.count("b") / n - share) < 4 * (share * (1 - share) / n) ** 0.5  # 4 binomial sd: 0.013
    torch.manual_seed(5)
    assert [x for x, _ in zip(MixedSamples(repeat("a"), repeat("b"), share, "s"), range(n), strict=False)] == draws
    torch.manual_seed(5)
    assert all(x == "a" for x, _ in zip(MixedSamples(repeat("a"), repeat("b"), 0.0, "s"), range(1000), strict=False))
    with pytest.raises(ValueError, match=r"share of mixed-in samples must be in \[0, 1\)"):
        MixedSamples(repeat("a"), repeat("b"), 1.0, "s")


def test_nonspeech_share_of_training_utterances(tiny_corpus):
    share = 0.3
    stream = mixed_stream(tiny_corpus, share, batches_per_epoch=50)
    n = len(stream)
    assert n >= 150
    none = [u for u in stream if u[1] == "none"]
    nonspeech_keys = set(keys_in(tiny_corpus / "train_nonspeech"))
    assert {u[0] for u in none} == nonspeech_keys  # every non-speech utterance comes from the mixed-in dir
    assert all(text == "" and phones == 0 for _, _, text, phones in none)
    assert {u[0] for u in stream if u[1] != "none"} <= set(keys_in(tiny_corpus / "train"))
    # Bernoulli(share) per utterance: 4 binomial standard deviations (~0.13 at n = 200), plus the <= 3
    # drawn utterances still held in the bucket when the epoch is cut.
    tol = 4 * (share * (1 - share) / n) ** 0.5 + (MIX_BATCH.max_batch_size - 1) / n
    assert abs(len(none) / n - share) < tol, (len(none), n, tol)
    again = mixed_stream(tiny_corpus, share, batches_per_epoch=8)  # same torch seed: the same stream
    assert again and again == stream[:len(again)]


def test_nonspeech_share_zero_mixes_nothing(tiny_corpus):
    stream = mixed_stream(tiny_corpus, 0.0, batches_per_epoch=10)
    assert stream and all(lang != "none" for _, lang, _, _ in stream)


def test_nonspeech_shards_are_shared_by_all_ranks(tiny_corpus):
    # train_nonspeech has a single shard: with two ranks each still reads it (TrainShards(shared=True)).
    assert len(read_index(tiny_corpus / "train_nonspeech")["shards"]) < 2
    for r in (0, 1):
        stream = mixed_stream(tiny_corpus, 0.5, rank=r, world_size=2, batches_per_epoch=5)
        assert any(lang == "none" for _, lang, _, _ in stream), r


def test_nonspeech_is_never_mixed_into_evaluation(tiny_corpus):
    dm = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "train"),
                          test_dirs=[str(tiny_corpus / "test")], num_workers=0, batch=MIX_BATCH,
                          nonspeech_dirs=[str(tiny_corpus / "train_nonspeech")], nonspeech_share=0.5)
    val = [(k, lang) for b in dm.val_dataloader() for k, lang in zip(b["keys"], b["language"], strict=True)]
    assert sorted(k for k, _ in val) == sorted(keys_in(tiny_corpus / "train"))  # each once, nothing added
    assert all(lang != "none" for _, lang in val)
    test = [k for loader in dm.test_dataloader() for b in loader for k in b["keys"]]
    assert sorted(test) == sorted(keys_in(tiny_corpus / "test"))


def test_nonspeech_dirs_must_hold_only_nonspeech(tiny_corpus):
    from entropy_asr.data.pipeline import nonspeech_shard_urls

    assert nonspeech_shard_urls(tiny_corpus / "train_nonspeech")
    for split in ("train", "dev"):
        with pytest.raises(ValueError, match=rf"{split}: data.nonspeech_dirs must hold only clips without speech"):
            nonspeech_shard_urls(tiny_corpus / split)
        dm = dm_for(tiny_corpus, num_workers=0, nonspeech_dirs=[str(tiny_corpus / split)], nonspeech_share=0.2)
        with pytest.raises(ValueError, match="--nonspeech"):
            dm.train_dataloader()


def test_nonspeech_config_errors_name_the_key(tiny_corpus):
    ns = [str(tiny_corpus / "train_nonspeech")]
    for share in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"data.init_args.nonspeech_share must be in \[0, 1\)"):
            dm_for(tiny_corpus, nonspeech_dirs=ns, nonspeech_share=share)
    with pytest.raises(ValueError, match="nonspeech_share > 0 needs data.init_args.nonspeech_dirs"):
        dm_for(tiny_corpus, nonspeech_share=0.1)
    with pytest.raises(ValueError, match="nonspeech_dirs"):
        dm_for(tiny_corpus, nonspeech_dirs=[], nonspeech_share=0.1)


def test_synthetic_defaults_nonspeech_dirs_to_train_nonspeech(tiny_corpus):
    syn = {"root": str(tiny_corpus), "utterances": 60, "seed": 7}
    dm = SpeechDataModule(synthetic=syn, num_workers=0)
    assert dm.nonspeech_dirs == [str(tiny_corpus / "train_nonspeech")] and dm.nonspeech_share == 0.0
    assert SpeechDataModule(synthetic=syn, nonspeech_share=0.2).nonspeech_dirs == [str(tiny_corpus / "train_nonspeech")]
    assert SpeechDataModule(synthetic=syn, nonspeech_dirs=[]).nonspeech_dirs == []  # explicitly none


def test_context_hotword_lists_are_a_function_of_seed_key_and_epoch(tiny_corpus):
    """Context SFT's lists: the same for an utterance in an epoch (a resumed or re-sharded run draws what an
    uninterrupted one would), drawn anew each epoch, the present ones said and the absent ones not."""
    from entropy_asr.data.context import ContextConfig, hotword_contained

    dm = dm_for(tiny_corpus, context=ContextConfig(share_none=0.0, share_distractors_only=0.0))
    batch = dm.account(next(iter(dm.val_dataloader())))
    first = dm.add_hotwords(batch, epoch=0)
    again = dm_for(tiny_corpus, context=ContextConfig(share_none=0.0, share_distractors_only=0.0)).add_hotwords(
        batch, epoch=0)
    assert first["hotwords"] == again["hotwords"] and first["keys"] == batch["keys"]
    later = dm.add_hotwords(batch, epoch=1)
    assert later["hotwords"] != first["hotwords"]
    assert any(first["hotwords_present"])  # the corpus' transcripts have words to take
    for text, language, words, present, absent in zip(first["text"], first["language"], first["hotwords"],
                                                      first["hotwords_present"], first["hotwords_absent"]):
        assert sorted(words) == sorted(present + absent)
        assert all(hotword_contained(text, w, language) for w in present)
        assert not any(hotword_contained(text, w, language) for w in absent)
    other_seed = SpeechDataModule(train_dir=str(tiny_corpus / "train"), val_dir=str(tiny_corpus / "train"), seed=1,
                                  context=ContextConfig(share_none=0.0, share_distractors_only=0.0))
    assert other_seed.add_hotwords(batch, epoch=0)["hotwords"] != first["hotwords"]


# Second bucketing axis: the transcript's bytes (batch.text_bucket_boundaries).
def _samples(spec: list[tuple[float, str]]) -> list[dict]:
    """Featurized-sample stand-ins: (seconds, text) -> feats of that many 10 ms frames, the text, empty phones."""
    return [{"key": f"u{i}", "feats": torch.zeros(round(sec * 100), 2), "phones": torch.zeros(0, dtype=torch.long),
             "text": text, "norm_text": text, "language": "en", "duration": sec} for i, (sec, text) in enumerate(spec)]


def test_text_buckets_keep_short_and_long_transcripts_of_one_duration_apart():
    from entropy_asr.data.benchmark import padding
    from entropy_asr.data.pipeline import DataCounts, bucket_batches

    # 5 s clips, alternately a 10-byte and a 200-byte transcript, in one duration bucket
    spec = [(5.0, "a" * 10) if i % 2 else (5.0, "b" * 200) for i in range(16)]

    def batches(**kw) -> list[list[int]]:
        cfg = BatchConfig(max_batch_seconds=20.0, max_batch_size=4, max_duration=10.0, **kw)
        return [[len(t.encode()) for t in b["text"]] for b in bucket_batches(_samples(spec), cfg, DataCounts())]

    one_d, two_d = batches(), batches(text_bucket_boundaries=[100])
    assert any(len(set(b)) == 2 for b in one_d)  # duration alone mixes them: half of those batches is padding
    assert all(len(set(b)) == 1 for b in two_d)
    assert sorted(n for b in two_d for n in b) == sorted(n for b in one_d for n in b)  # the same utterances
    assert padding(two_d) == 0.0 < padding(one_d)
    assert padding(one_d) == pytest.approx(1 - (8 * 10 + 8 * 200) / (16 * 200))


def test_padding_share_known_answers():
    from entropy_asr.data.benchmark import padding

    assert padding([[2, 4], [3]]) == pytest.approx(1 - 9 / 11)  # (2 + 4 + 3) real of 2 * 4 + 3 laid out
    assert padding([[5, 5, 5]]) == 0.0 and padding([]) == 0.0


@pytest.mark.parametrize("key", ["bucket_boundaries", "text_bucket_boundaries"])
def test_bucket_boundaries_must_increase(key):
    from entropy_asr.errors import UserError

    with pytest.raises(UserError, match=f"batch.{key} must be strictly increasing"):
        BatchConfig(**{key: [100, 60]})
    with pytest.raises(UserError, match=f"batch.{key}"):
        BatchConfig(**{key: [60, 60]})


def test_llm_speech_token_count_is_the_models(tiny_corpus):
    """The data benchmark counts a clip's LLM speech tokens as the model makes them (4x subsampling, k stacked)."""
    from entropy_asr.data.benchmark import speech_tokens
    from entropy_asr.model.encoder import ConformerEncoder, EncoderConfig
    from entropy_asr.model.heads import Adapter
    from tests.stage_helpers import ENC

    enc, adapter = ConformerEncoder(EncoderConfig(**ENC)).eval(), Adapter(ENC["d_model"], 16, 4)
    lens = torch.tensor([7, 11, 115, 116, 232, 233, 300, 301, 999])
    with torch.no_grad():
        frames, frame_lens = enc(torch.randn(len(lens), int(lens.max()), 80), lens)
        _, token_lens = adapter(frames, frame_lens)
    assert token_lens.tolist() == [speech_tokens(int(n), 4) for n in lens]


def test_evaluation_batches_ignore_text_buckets(tiny_corpus):
    """Text buckets are a training lever: evaluation, which flushes every partial bucket, batches as without them."""
    from entropy_asr.data.audio import load_cmvn
    from entropy_asr.data.pipeline import build_pipeline, shard_urls

    dev = tiny_corpus / "dev"

    def batches(train: bool, **kw) -> list[dict]:
        cfg = BatchConfig(**{"max_batch_seconds": 40.0, "max_batch_size": 16, "max_duration": 20.0, **kw})
        pipe = build_pipeline(shard_urls(dev), train=train, cmvn=load_cmvn(dev / "cmvn.json"), batch=cfg,
                              batches_per_epoch=1)
        return list(pipe)

    plain = batches(False)
    sizes = sorted(len(t.encode()) for b in plain for t in b["text"])
    assert sizes[0] < sizes[-1]  # an edge between them splits the shortest from the longest transcript
    split = {"text_bucket_boundaries": [sizes[0]]}
    assert [b["keys"] for b in batches(False, **split)] == [b["keys"] for b in plain]
    # in training the same edge does split them: no batch holds transcripts from both sides of it
    trained = batches(True, max_batch_size=len(sizes), **split)
    assert all(len({len(t.encode()) <= sizes[0] for t in b["text"]}) == 1 for b in trained)


def _sine(freq: float, seconds: float, amp: float, sr: int = 16000) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _flac_samples(n: int, seconds: float = 1.0) -> list[dict]:
    """Raw shard samples of n tones (distinct pitches, 16 kHz FLAC) with a transcript each."""
    out = []
    for i in range(n):
        x = _sine(200.0 + 37 * i, seconds, amp=0.1 + 0.02 * i)
        meta = {"text": f"u{i}", "norm_text": f"u{i}", "language": "en", "phones": ["AH0"]}
        out.append({"__key__": f"k{i}", "__url__": "mem", "flac": encode_flac(x), "json": json.dumps(meta).encode()})
    return out


def test_babble_samples_replace_the_share_with_wordless_overlaps():
    from entropy_asr.data.pipeline import BabbleSamples

    share, n = 0.2, 4000
    src = _flac_samples(40, seconds=0.5)
    stream = [s for s, _ in zip(BabbleSamples(iter(src * 200), share, "s"), range(n), strict=False)]
    babble = [s for s in stream if s["__url__"] == "babble"]
    speech = [s for s in stream if s["__url__"] != "babble"]
    assert [s["__key__"] for s in speech] == [s["__key__"] for s in (src * 200)[:len(speech)]]  # order kept, none lost
    # no babble before 8 utterances are in the pool; then Bernoulli(share) per emitted sample: 4 binomial sd
    assert all(s["__url__"] != "babble" for s in stream[:8])
    assert abs(len(babble) / (n - 8) - share) < 4 * (share * (1 - share) / n) ** 0.5
    for s in babble[:20]:
        meta = json.loads(s["json"])
        assert meta == {"text": "", "norm_text": "", "language": "none", "phones": []}
        x, sr = s["wav"]
        assert sr == 16000 and len(x) == 8000 and x.dtype == np.float32  # as long as its (0.5 s) talkers
        assert 0.1 * 10 ** (-10 / 20) * 0.9 < float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < 0.9  # talkers' level
    again = [s["__key__"] for s, _ in zip(BabbleSamples(iter(src * 200), share, "s"), range(n), strict=False)]
    assert again == [s["__key__"] for s in stream]  # seeded: the same stream
    other = [s["__key__"] for s, _ in zip(BabbleSamples(iter(src * 200), share, "t"), range(n), strict=False)]
    assert other != again
    assert [s["__key__"] for s in BabbleSamples(iter(src), 0.0, "s")] == [s["__key__"] for s in src]
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"data.init_args.babble_share must be in \[0, 1\)"):
            BabbleSamples(iter(src), bad, "s")


def test_babble_clip_overlaps_its_talkers_at_their_level():
    import random

    from entropy_asr.data.pipeline import babble_clip

    a, b = _sine(300.0, 1.0, amp=0.2), _sine(500.0, 0.3, amp=0.05)
    x, sr = babble_clip([(a, 16000), (b, 16000)], random.Random(0))
    assert sr == 16000 and len(x) == len(a)  # the first talker's length; the short one is looped
    spec = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    peaks = {round(float(f[i])) for i in np.argsort(spec)[-2:]}
    assert peaks == {300, 500}  # both talkers are in it, at comparable levels (+-3 dB after level matching)
    mean_rms = (0.2 + 0.05) / 2 / 2 ** 0.5
    assert mean_rms * 10 ** (-10 / 20) * 0.99 < np.sqrt(np.mean(x.astype(np.float64) ** 2)) < mean_rms * 1.01
    y, sr = babble_clip([(_sine(300.0, 1.0, amp=0.2, sr=8000), 8000)], random.Random(0))
    assert sr == 16000 and abs(len(y) - 16000) <= 1  # another rate is resampled first
    z, _ = babble_clip([(np.zeros(0, np.float32), 16000)], random.Random(0))
    assert not z.any()  # nothing to overlap: silence, still with its empty transcript


def test_babble_share_of_training_utterances(tiny_corpus):
    dm = dm_for(tiny_corpus, batch=MIX_BATCH, num_workers=0, shuffle_buffer=20, augment=AugmentConfig.off(),
                babble_share=0.3, batches_per_epoch=60)
    torch.manual_seed(3)
    stream = []
    for b in dm.train_dataloader():
        dm.account(b)
        stream += zip(b["keys"], b["language"], b["text"], b["phone_lens"].tolist(), b["feat_lens"].tolist(),
                      strict=True)
    assert not dm.data_counts
    babble = [u for u in stream if u[0].startswith("babble")]
    assert babble and all(lang == "none" and text == "" and phones == 0 and frames > 0
                          for _, lang, text, phones, frames in babble)
    assert {u[0] for u in stream if not u[0].startswith("babble")} <= set(keys_in(tiny_corpus / "train"))
    n = len(stream)
    assert abs(len(babble) / n - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5 + (8 + MIX_BATCH.max_batch_size) / n
    val = [lang for b in dm.val_dataloader() for lang in b["language"]]
    assert "none" not in val  # evaluation never gets babble
    with pytest.raises(ValueError, match=r"data.init_args.babble_share must be in \[0, 1\)"):
        dm_for(tiny_corpus, babble_share=1.0)
