"""Linear CKA and spectral entropy against known answers, streamed, and across 2 processes (gloo)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from entropy_asr.metrics import (
    LinearCKA,
    SpectralEntropy,
    TranscriptInformation,
    accessible_information,
    hsic_unbiased,
    linear_cka,
    normalized_spectral_entropy,
    semantic_accessible_information,
    unit_rows,
)
from entropy_asr.metrics.probe import constant_cross_entropy, linear_probe_cross_entropy


def data(n=200, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 8, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 8, generator=g,
                                                                                    dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_itself_is_one_and_symmetric(debiased):
    x, y = data()
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, y, debiased) == pytest.approx(linear_cka(y, x, debiased), abs=1e-12)
    assert 0 < linear_cka(x, y, debiased) < 1


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances_and_a_general_linear_map_changes_it(debiased):
    x, y = data()
    base = linear_cka(x, y, debiased)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x @ q, y, debiased) == pytest.approx(base, abs=1e-10)  # orthogonal map
    assert linear_cka(3.7 * x, y, debiased) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 5.0, y - 2.0, debiased) == pytest.approx(base, abs=1e-9)  # translation
    stretch = torch.diag(torch.logspace(0, 2, 12, dtype=torch.float64))  # an invertible, non-orthogonal map
    assert abs(linear_cka(x @ stretch, y, debiased) - base) > 0.05


def test_unbiased_cka_of_independent_data_is_near_zero_where_biased_is_not():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 200, generator=g), torch.randn(64, 200, generator=g)  # d >> n: biased CKA inflates
    assert linear_cka(x, y) > 0.5
    assert abs(linear_cka(x, y, debiased=True)) < 0.05


def test_biased_cka_known_value_from_its_definition():
    x, y = data(n=50)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (yc.T @ xc).pow(2).sum() / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-12)


def test_hsic_unbiased_matches_u_centering():
    """Song et al.'s closed form equals <K_U, L_U>/(n(n-3)) with Kornblith's U-centered Grams."""
    x, y = data(n=30)

    def u_center(g):
        n = g.shape[0]
        g = g.clone()
        g.fill_diagonal_(0)
        means = g.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        g.fill_diagonal_(0)
        return g

    n = 30
    ku, lu = u_center(x @ x.T), u_center(y @ y.T)
    assert float(hsic_unbiased(x, y)) == pytest.approx(float((ku * lu).sum() / (n * (n - 3))), rel=1e-10)
    with pytest.raises(ValueError, match="at least 4 frames"):
        hsic_unbiased(x[:3], y[:3])


def test_streaming_metrics_equal_the_one_shot_values():
    x, y = data(n=300)
    biased = LinearCKA(12, 8)
    for i in range(0, 300, 70):  # uneven batches
        biased.update(x[i:i + 70], y[i:i + 70])
    assert float(biased.compute()) == pytest.approx(linear_cka(x, y), rel=1e-10)
    one = LinearCKA(12, 8, debiased=True)
    one.update(x, y)  # one minibatch: minibatch CKA is the full unbiased CKA
    assert float(one.compute()) == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-10)
    mini = LinearCKA(12, 8, debiased=True)
    for i in range(0, 300, 100):
        mini.update(x[i:i + 100], y[i:i + 100])
    expected = sum(hsic_unbiased(x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)) / math.sqrt(
        sum(hsic_unbiased(x[i:i + 100], x[i:i + 100]) for i in range(0, 300, 100))
        * sum(hsic_unbiased(y[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)))
    assert float(mini.compute()) == pytest.approx(float(expected), rel=1e-10)


def test_padding_is_masked_and_stride_subsamples():
    x, y = data(n=40)
    xb, yb = torch.zeros(2, 25, 12, dtype=torch.float64), torch.zeros(2, 25, 8, dtype=torch.float64)
    xb[0, :20], yb[0, :20], xb[1, :20], yb[1, :20] = x[:20], y[:20], x[20:], y[20:]
    xb[:, 20:], yb[:, 20:] = 99.0, -99.0  # padding that must not count
    mask = torch.zeros(2, 25, dtype=torch.bool)
    mask[:, :20] = True
    m = LinearCKA(12, 8)
    m.update(xb, yb, mask)
    assert float(m.compute()) == pytest.approx(linear_cka(x, y), rel=1e-10)
    s = SpectralEntropy(12, stride=2)
    s.update(xb, mask)
    assert float(s.compute()["nse"]) == pytest.approx(normalized_spectral_entropy(x[::2]), rel=1e-10)


def test_nse_isotropic_is_one_rank_one_is_zero():
    g = torch.Generator().manual_seed(3)
    iso = torch.randn(20000, 16, generator=g, dtype=torch.float64)
    assert normalized_spectral_entropy(iso) > 0.995
    rank1 = torch.randn(500, 1, generator=g, dtype=torch.float64) * torch.randn(1, 16, generator=g,
                                                                               dtype=torch.float64)
    assert normalized_spectral_entropy(rank1) < 1e-6
    m = SpectralEntropy(16)
    m.update(iso)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["effective_rank"] == pytest.approx(16, rel=0.01) and out["rankme"] == pytest.approx(16, rel=0.02)
    two = torch.cat([torch.randn(1000, 2, generator=g, dtype=torch.float64), torch.zeros(1000, 14,
                                                                                         dtype=torch.float64)], 1)
    m2 = SpectralEntropy(16)
    m2.update(two)
    assert float(m2.compute()["effective_rank"]) == pytest.approx(2, rel=0.02)  # two equal directions


def _rank_worker(rank: int, init: str, out: dict):
    # a file rendezvous: a free TCP port picked here could be taken before the ranks bind it
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    x, y = data(n=300)
    part = slice(rank * 150, (rank + 1) * 150)
    biased, mini, spec = LinearCKA(12, 8), LinearCKA(12, 8, debiased=True), SpectralEntropy(12)
    for i in range(part.start, part.stop, 50):
        biased.update(x[i:i + 50], y[i:i + 50])
        mini.update(x[i:i + 50], y[i:i + 50])
        spec.update(x[i:i + 50])
    values = {"biased": float(biased.compute()), "mini": float(mini.compute()), "nse": float(spec.compute()["nse"])}
    if rank == 0:
        out.update(values)
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_values(tmp_path):
    x, y = data(n=300)
    biased, mini, spec = LinearCKA(12, 8), LinearCKA(12, 8, debiased=True), SpectralEntropy(12)
    for i in range(0, 300, 50):  # the same minibatches as the two ranks together
        biased.update(x[i:i + 50], y[i:i + 50])
        mini.update(x[i:i + 50], y[i:i + 50])
        spec.update(x[i:i + 50])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_worker, args=(f"file://{tmp_path}/rendezvous", out), nprocs=2, join=True)
        got = dict(out)
    assert got["biased"] == pytest.approx(float(biased.compute()), rel=1e-10)
    assert got["mini"] == pytest.approx(float(mini.compute()), rel=1e-10)
    assert got["nse"] == pytest.approx(float(spec.compute()["nse"]), rel=1e-10)


# ---- accessible information -------------------------------------------------------------------

def labelled(n, classes=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=g)


def test_constant_cross_entropy_is_the_label_entropy():
    y = torch.arange(8).repeat(500)  # uniform over 8 classes: 3 bits
    assert constant_cross_entropy(y, y, 8) == pytest.approx(3.0, abs=1e-3)


def test_pai_of_features_that_encode_the_label_is_h_and_of_random_features_zero():
    g = torch.Generator().manual_seed(4)
    ytr, yte = labelled(4000, seed=1), labelled(2000, seed=2)
    h = math.log2(8)
    encode = torch.randn(8, 16, generator=g, dtype=torch.float64)  # a code per class
    xtr = encode[ytr] + 0.05 * torch.randn(4000, 16, generator=g, dtype=torch.float64)
    xte = encode[yte] + 0.05 * torch.randn(2000, 16, generator=g, dtype=torch.float64)
    full = accessible_information(xtr, ytr, xte, yte, 8)
    assert full["h_bits"] == pytest.approx(h, abs=0.02)
    assert full["ai_bits"] == pytest.approx(h, abs=0.1) and full["probe_ce_bits"] < 0.1
    noise = accessible_information(torch.randn(4000, 16, generator=g), ytr, torch.randn(2000, 16, generator=g), yte, 8)
    assert abs(noise["ai_bits"]) < 0.05
    half = accessible_information(encode[ytr // 2 * 2], ytr, encode[yte // 2 * 2], yte, 8)
    assert half["ai_bits"] == pytest.approx(h - 1, abs=0.1)  # features that only tell pairs apart: 2 of 3 bits


def test_transcript_information_known_answer():
    m = TranscriptInformation()
    ln2 = math.log(2)
    m.update(torch.tensor([4 * ln2, 6 * ln2]), torch.tensor([1 * ln2, 2 * ln2]), ["ab cd", "你好世界"],
             torch.tensor([2 * ln2, 4 * ln2]), torch.tensor([2, 4]))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["h0_bits_per_char"] == pytest.approx(10 / 8) and out["h1_bits_per_char"] == pytest.approx(3 / 8)
    assert out["info_bits_per_char"] == pytest.approx(7 / 8) and out["share_resolved"] == pytest.approx(0.7)
    assert out["token_entropy_bits"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no transcript characters"):
        TranscriptInformation().compute()


# ---- CSAI --------------------------------------------------------------------------------------

def homophones(n, seed):
    """n unit occurrences over 8 units: 4 pronunciations with 2 equally likely homophones each."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.randint(0, 8, (n,), generator=g)
    return [f"u{u}" for u in unit.tolist()], [(f"p{u // 2}",) for u in unit.tolist()], unit, g


def test_csai_is_what_features_tell_beyond_the_pronunciation():
    utr, ptr, ktr, g = homophones(3000, 1)
    ute, pte, kte, _ = homophones(1500, 2)
    code = torch.randn(8, 6, generator=g, dtype=torch.float64)

    def feats(k, which):
        return which[k] + 0.05 * torch.randn(len(k), 6, generator=g, dtype=torch.float64)

    knows_unit = semantic_accessible_information(feats(ktr, code), utr, ptr, feats(kte, code), ute, pte)
    assert knows_unit["h_bits"] == pytest.approx(3.0, abs=0.03)  # 8 equally likely units
    assert knows_unit["phone_ce_bits"] == pytest.approx(1.0, abs=0.05)  # the homophone pair is left open
    assert knows_unit["csai_bits"] == pytest.approx(1.0, abs=0.1)
    assert knows_unit["csai_bits"] == pytest.approx(knows_unit["phone_ce_bits"] - knows_unit["phone_feat_ce_bits"])
    # The standard error of the paired per-unit differences: the 1 bit is hundreds of SE above 0.
    assert 0 < knows_unit["csai_se_bits"] < 0.01 and knows_unit["csai_bits"] > 50 * knows_unit["csai_se_bits"]
    pron_code = code[torch.arange(8) // 2 * 2]  # features that only repeat the pronunciation
    knows_pron = semantic_accessible_information(feats(ktr, pron_code), utr, ptr, feats(kte, pron_code), ute, pte)
    # ~0, but a few SE above it: the SE covers the held-out sampling only, not the probes' fit (measured
    # +0.006..0.010 bits, 3-18 SE, over 4 seeds: the redundant copy of the pronunciation lets the
    # regularized probe commit to the homophone pair a little more)
    assert abs(knows_pron["csai_bits"]) < 0.05 and knows_pron["csai_se_bits"] < 0.01
    noise = semantic_accessible_information(torch.randn(3000, 6, generator=g), utr, ptr,
                                            torch.randn(1500, 6, generator=g), ute, pte)
    assert abs(noise["csai_bits"]) < 0.05
    # Features independent of everything: csai within 3 SE of 0 (measured |csai| / SE <= 1.3 over 4 seeds).
    assert noise["csai_se_bits"] > 0 and abs(noise["csai_bits"]) < 3 * noise["csai_se_bits"]


def test_csai_rare_units_share_the_other_class_and_bad_input_is_refused():
    utr, ptr, _, _ = homophones(400, 3)
    x = torch.randn(400, 4, dtype=torch.float64)
    out = semantic_accessible_information(x, utr, ptr, x[:100], utr[:100], ptr[:100], max_classes=3)
    assert out["classes"] == 4
    assert math.isfinite(out["csai_se_bits"]) and out["csai_se_bits"] >= 0
    one = semantic_accessible_information(x, utr, ptr, x[:1], utr[:1], ptr[:1])
    assert math.isnan(one["csai_se_bits"]) and math.isfinite(one["csai_bits"])  # no spread from one unit
    with pytest.raises(ValueError, match="differ in length"):
        semantic_accessible_information(x, utr[:-1], ptr, x, utr, ptr)
    with pytest.raises(ValueError, match="no aligned units"):
        semantic_accessible_information(x[:0], [], [], x, utr, ptr)


def test_probe_per_sample_cross_entropy_averages_to_the_mean():
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) + y[:, None].double()
    mean = linear_probe_cross_entropy(x[:200], y[:200], x[200:], y[200:], 3)
    each = linear_probe_cross_entropy(x[:200], y[:200], x[200:], y[200:], 3, per_sample=True)
    assert each.shape == (100,) and each.dtype == torch.float64 and bool((each >= 0).all())
    assert float(each.mean()) == pytest.approx(mean, rel=1e-9)


def test_unit_rows_average_each_units_aligned_frames():
    frames = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)  # (B, T', D)
    # utterance 0: units "ab" (phones 0, 1) and "c" (phone 2); utterance 1: "d" (phones 0, 1), "e" unaligned
    positions = torch.tensor([[-1, 0, 1, 1, 2, -1], [0, 1, -1, -1, -1, -1]])
    units = [[("ab", ("a", "b")), ("c", ("c",))], [("d", ("d1", "d2")), ("e", ("e",))]]
    x, labels, prons = unit_rows(frames, positions, units)
    assert labels == ["ab", "c", "d"] and prons == [("a", "b"), ("c",), ("d1", "d2")]
    assert torch.equal(x, torch.tensor([[4.0, 5.0], [8.0, 9.0], [13.0, 14.0]], dtype=torch.float64))


def test_plot_series_draws_error_bars_and_the_below_zero_note(tmp_path, monkeypatch):
    from entropy_asr import plots

    drawn = {}
    save = plots._save

    def spy(fig, out):
        ax = fig.axes[0]
        drawn[Path(out).name] = {"texts": [t.get_text() for a in fig.axes for t in a.texts],
                                 "zero_line": any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.get_lines()),
                                 "bars": len(ax.containers)}
        return save(fig, out)

    monkeypatch.setattr(plots, "_save", spy)
    rows = [{"step": 10, "csai_bits": 0.2, "csai_se_bits": 0.05, "pai_bits": 1.0},
            {"step": 20, "csai_bits": -0.1, "csai_se_bits": 0.04, "pai_bits": 1.1},
            {"step": 30, "csai_bits": 0.05, "csai_se_bits": float("nan")},  # one held-out unit: no SE
            {"step": 40, "pai_bits": 1.2}]
    note = "< 0: the probe overfit; read as 0"
    out = plots.plot_series(rows, ["csai_bits", "pai_bits", "absent"], tmp_path / "ai.png", "t",
                            errors={"csai_bits": "csai_se_bits"}, below_zero={"csai_bits": note})
    assert out == tmp_path / "ai.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert drawn["ai.png"] == {"texts": [note], "zero_line": True, "bars": 1}
    positive = [dict(r, csai_bits=abs(r["csai_bits"])) for r in rows if "csai_bits" in r]
    plots.plot_series(positive, ["csai_bits"], tmp_path / "pos.png", below_zero={"csai_bits": note})
    assert drawn["pos.png"] == {"texts": [], "zero_line": False, "bars": 0}  # nothing negative: no note
    assert not list(tmp_path.glob(".*.png"))  # atomic: no temp files left
