"""Accessible information: how much of a label a linear readout of frozen features recovers.

PAI, phonetic accessible information (this project's reconstruction of the paper's metric; see
METHOD.md), is a V-information estimate (Xu et al. 2020, "A Theory of Usable Information under
Computational Constraints") with V = linear softmax probes, in bits per frame:

    PAI = CE_test(best constant) - CE_test(linear probe on the features)

- Labels: one phone class per encoder frame (the blank/silence class included), from a CTC
  forced alignment of the transcript with the model's own phone head (`frame_phone_labels`).
- Best constant: the training frames' label frequencies (add-one smoothed); its held-out
  cross-entropy estimates H(phone).
- Probe: multinomial logistic regression on the training frames' features, standardized with
  the training mean/std, L2 penalty `l2` on the weights, fit to convergence with L-BFGS
  (deterministic); its cross-entropy is measured on held-out frames.
Both cross-entropies are held-out, in bits (nats / ln 2), so PAI ~ H(phone) when the features
determine the label and ~ 0 when they carry nothing about it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropy_asr.model.pseudo_speech import aligned_layout


def frame_phone_labels(log_probs: Tensor, lens: Tensor, phones: Tensor, phone_lens: Tensor,
                       max_frames_per_phone: int = 5) -> Tensor:
    """(B, T') phone id per encoder frame (0 = blank/silence) from a CTC forced alignment (see aligned_layout)."""
    return aligned_layout(log_probs, lens, phones, phone_lens, max_frames_per_phone)


def _cross_entropy_bits(logp: Tensor, y: Tensor) -> float:
    return float(-logp.gather(1, y[:, None]).mean() / math.log(2))


def linear_probe_cross_entropy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                               l2: float = 1e-3, max_iter: int = 200) -> float:
    """Held-out cross-entropy (bits) of a softmax regression fit on (train_x (n, d), train_y (n,))."""
    x, xt = train_x.detach().double(), test_x.detach().double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    x, xt = (x - mean) / std, (xt - mean) / std
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return _cross_entropy_bits(torch.log_softmax(xt @ w + b, dim=1), test_y)


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
