"""Accessible information: how much of a label a linear readout of frozen features recovers.

PAI, phonetic accessible information (this project's reconstruction of the paper's metric; see
docs/method.md), is a V-information estimate (Xu et al. 2020, "A Theory of Usable Information under
Computational Constraints") with V = linear softmax probes, in bits per frame:

    PAI = CE_test(best constant) - CE_test(linear probe on the features)

- Labels: one phone class per encoder frame (the blank/silence class included), from a CTC
  forced alignment of the transcript with the model's own phone head
  (entropy_asr.metrics.alignment.frame_phone_positions).
- Best constant: the training frames' label frequencies (add-one smoothed); its held-out
  cross-entropy estimates H(phone).
- Probe: multinomial logistic regression on the training frames' features, standardized with
  the training mean/std, L2 penalty `l2` on the weights, fit with L-BFGS (`max_iter` iterations,
  deterministic, in float32); its cross-entropy is measured on held-out frames, in float64.
Both cross-entropies are held-out, in bits (nats / ln 2), so PAI ~ H(phone) when the features
determine the label and ~ 0 when they carry nothing about it.

CSAI, conditional semantic accessible information (also this project's reconstruction): how much
the encoder output tells about *which word or character* was said beyond what its phones tell, in
bits per unit (a unit: a Mandarin character or an English word, `Phonemizer.units`):

    CSAI = CE_test(unit | pronunciation) - CE_test(unit | pronunciation, encoder features)

- Rows: one per unit occurrence, its features the mean of the encoder frames aligned to its phones
  (`frame_phone_positions`, the same forced alignment as PAI); units without an aligned frame drop.
- Unit classes: the `max_classes` most frequent training units (ties by text), the rest one shared
  "other" class. Pronunciation: one-hot of the unit's phone string (a tonal syllable, a word's
  phones) among the `max_prons` most frequent training ones, divided by the training std (not
  centered), the rest all-zero (the probe falls back on its bias, the unit prior); features
  standardized as in PAI.
- Both probes are the same L2 softmax regression as PAI, the second on [pronunciation one-hot,
  features]; both cross-entropies are held-out. Homophones (Mandarin syllables share ~5 common
  characters) are where the phones leave entropy for the features to resolve; CSAI ~ 0 for
  features that carry only phones, and can dip below 0 when the added features only overfit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def unit_rows(frames: Tensor, positions: Tensor, units: list[list[tuple[str, tuple[str, ...]]]]
              ) -> tuple[Tensor, list[str], list[tuple[str, ...]]]:
    """Per unit occurrence: mean encoder frame (n, D), unit text, pronunciation (phone string).

    frames (B, T', D), positions (B, T') from frame_phone_positions, units[b] the utterance's
    (unit, phones) list whose phones, in order, are the aligned transcript phones.
    """
    feats, labels, prons = [], [], []
    for b, utt in enumerate(units):
        unit_of_phone = torch.tensor([u for u, (_, ph) in enumerate(utt) for _ in ph] or [0], dtype=torch.long)
        pos = positions[b]
        valid = pos >= 0
        if not valid.any():
            continue
        unit = unit_of_phone[pos[valid]]  # (t,) unit index of each aligned frame
        x = frames[b, : pos.shape[0]][valid.to(frames.device)].double().cpu()  # (t, D)
        sums = torch.zeros(len(utt), x.shape[1], dtype=torch.float64).index_add_(0, unit, x)
        counts = torch.bincount(unit, minlength=len(utt))
        for u in counts.nonzero()[:, 0].tolist():
            feats.append(sums[u] / counts[u])
            labels.append(utt[u][0])
            prons.append(utt[u][1])
    d = frames.shape[-1]
    return (torch.stack(feats) if feats else torch.zeros(0, d, dtype=torch.float64)), labels, prons


def _vocabulary(items: list, size: int) -> dict:
    counts: dict = {}
    for it in items:
        counts[it] = counts.get(it, 0) + 1
    ranked = sorted(counts, key=lambda k: (-counts[k], str(k)))
    return {k: i for i, k in enumerate(ranked[:size])}


def semantic_accessible_information(train_x: Tensor, train_units: list[str], train_prons: list,
                                    test_x: Tensor, test_units: list[str], test_prons: list,
                                    max_classes: int = 128, max_prons: int = 256, **probe) -> dict[str, float]:
    """CSAI (see the module docstring): {"h_bits", "phone_ce_bits", "phone_feat_ce_bits", "csai_bits", "csai_se_bits",
    "classes"}; csai_se_bits is the standard error of csai_bits over the held-out units (paired differences)."""
    if not (len(train_x) == len(train_units) == len(train_prons) and len(test_x) == len(test_units) == len(test_prons)):
        raise ValueError("semantic_accessible_information: features, units and pronunciations differ in length")
    if len(train_units) == 0 or len(test_units) == 0:
        raise ValueError("semantic_accessible_information: no aligned units to probe (train "
                         f"{len(train_units)}, test {len(test_units)})")
    vocab, pvocab = _vocabulary(train_units, max_classes), _vocabulary(train_prons, max_prons)
    classes = len(vocab) + 1  # + "other"

    def encode(units, prons):
        y = torch.tensor([vocab.get(u, len(vocab)) for u in units], dtype=torch.long)
        onehot = torch.zeros(len(prons), len(pvocab) + 1, dtype=torch.float64)
        onehot[torch.arange(len(prons)), torch.tensor([pvocab.get(p, len(pvocab)) for p in prons])] = 1.0
        return y.to(train_x.device), onehot[:, :-1].to(train_x.device)  # an unknown pronunciation: all-zero

    ytr, ptr = encode(train_units, train_prons)
    yte, pte = encode(test_units, test_prons)
    xtr, xte = _standardized(train_x.double(), test_x.double())
    scale = ptr.std(0).clamp_min(1e-8)  # one-hot scaled like the features but not centered: all-zero = unknown
    ptr, pte = ptr / scale, pte / scale
    h = constant_cross_entropy(ytr, yte, classes)
    ce_p = linear_probe_cross_entropy(ptr, ytr, pte, yte, classes, standardize=False, per_sample=True, **probe)
    ce_pf = linear_probe_cross_entropy(torch.cat([ptr, xtr], 1), ytr, torch.cat([pte, xte], 1), yte, classes,
                                       standardize=False, per_sample=True, **probe)
    gain = ce_p - ce_pf  # (n,) per held-out unit: the paired difference, so its spread gives the standard error
    se = float(gain.std() / math.sqrt(len(gain))) if len(gain) > 1 else float("nan")
    return {"h_bits": h, "phone_ce_bits": float(ce_p.mean()), "phone_feat_ce_bits": float(ce_pf.mean()),
            "csai_bits": float(gain.mean()), "csai_se_bits": se, "classes": classes}


def _cross_entropy_bits(logp: Tensor, y: Tensor) -> float:
    return float(-logp.gather(1, y[:, None]).mean() / math.log(2))


def _standardized(x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of train x and test xt scaled by x's mean and std."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    return (x - mean) / std, (xt - mean) / std


def linear_probe_cross_entropy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                               l2: float = 1e-3, max_iter: int = 200, standardize: bool = True,
                               fit_dtype: torch.dtype = torch.float32, per_sample: bool = False) -> float | Tensor:
    """Held-out cross-entropy (bits) of a softmax regression fit on (train_x (n, d), train_y (n,)).

    Runs on the inputs' device (a GPU makes paper-size probes quick). Inputs are standardized in
    float64; the fit runs in `fit_dtype` (float32: 4x faster on a CPU than float64, the same held-out
    cross-entropy to 1e-4 bits, measured); the held-out cross-entropy is computed in float64.

    standardize: scale each column by the training mean/std first (off for inputs already scaled).
    per_sample: return each held-out sample's cross-entropy (bits, float64 tensor) instead of the mean.
    """
    x, xt = train_x.detach().double(), test_x.detach().double()
    if standardize:
        x, xt = _standardized(x, xt)
    xf = x.to(fit_dtype)
    w = torch.zeros(x.shape[1], num_classes, dtype=fit_dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=fit_dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xf @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        logp = torch.log_softmax(xt @ w.double() + b.double(), dim=1)
        if per_sample:
            return -logp.gather(1, test_y[:, None])[:, 0] / math.log(2)
        return _cross_entropy_bits(logp, test_y)


def constant_cross_entropy(train_y: Tensor, test_y: Tensor, num_classes: int) -> float:
    """Held-out cross-entropy (bits) of the training label frequencies (add-one smoothed): an H(label) estimate."""
    counts = torch.bincount(train_y, minlength=num_classes).double() + 1.0
    logp = (counts / counts.sum()).log()
    return _cross_entropy_bits(logp.expand(len(test_y), -1), test_y)


def accessible_information(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                           **probe) -> dict[str, float]:
    """{"h_bits", "probe_ce_bits", "ai_bits"}: held-out H(label), the probe's cross-entropy, and their difference.

    With frame phone labels this is PAI (bits per frame).
    """
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels differ in length")
    h = constant_cross_entropy(train_y, test_y, num_classes)
    ce = linear_probe_cross_entropy(train_x, train_y, test_x, test_y, num_classes, **probe)
    return {"h_bits": h, "probe_ce_bits": ce, "ai_bits": h - ce}
