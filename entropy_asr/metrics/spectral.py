"""Spectral entropy of a representation: how evenly its variance spreads over its dimensions.

This project's reconstruction of the paper's NSE (docs/method.md; the paper's estimator is not
public). Over the (padding-masked) frames x_i in R^d, from streamed sums:

    C = (sum x x^T - (sum x)(sum x)^T / n) / (n - 1)      the covariance
    p_k = lambda_k(C) / sum_j lambda_j(C)                  eigenvalues as a distribution
    H = -sum_k p_k ln p_k                                  (0 ln 0 = 0)
    NSE = H / ln d                                         in [0, 1]: 1 isotropic, 0 rank one
    effective rank = exp(H)                                (Roy & Vetterli 2007, on the covariance)

RankMe (Garrido et al. 2023, "RankMe: Assessing the Downstream Performance of Pretrained
Self-Supervised Representations by Their Rank", eq. 1) beside it, from the singular values
sigma_k of the (uncentered) n x d embedding matrix, sigma_k^2 = lambda_k(sum x x^T):

    q_k = sigma_k / ||sigma||_1 + eps,   RankMe = exp(-sum_k q_k ln q_k),   eps = 1e-7
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from entropy_asr.errors import UserError
from entropy_asr.metrics.cka import valid_frames

RANKME_EPS = 1e-7


def _entropy(p: Tensor) -> Tensor:
    """-sum p ln p with 0 ln 0 = 0."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()


def spectral_stats(n: Tensor | float, s: Tensor, ss: Tensor) -> dict[str, float]:
    """NSE, effective rank and RankMe from the count n, sum x (d,) and sum x x^T (d, d), float64."""
    n = float(n)
    d = s.shape[0]
    if n < 2 or d < 2:
        raise ValueError(f"spectral entropy needs >= 2 frames of >= 2 dimensions, got n={n:g}, d={d}")
    cov = (ss - torch.outer(s, s) / n) / (n - 1)
    lam = torch.linalg.eigvalsh(cov).clamp_min(0)  # (d,) ascending; tiny negatives are round-off
    total = lam.sum()
    h = _entropy(lam / total) if total > 0 else torch.zeros((), dtype=lam.dtype)
    sigma = torch.linalg.eigvalsh(ss).clamp_min(0).sqrt()  # singular values of the n x d matrix
    q = sigma / sigma.sum().clamp_min(1e-300) + RANKME_EPS
    return {"nse": float(h / math.log(d)), "effective_rank": float(h.exp()), "rankme": float(_entropy(q).exp())}


def spectral_summary(x: Tensor) -> dict[str, float]:
    """{nse, effective_rank, rankme} of the frames x (n, d) (see spectral_stats)."""
    x = valid_frames(x)
    return spectral_stats(x.shape[0], x.sum(0), x.T @ x)


def normalized_spectral_entropy(x: Tensor) -> float:
    """NSE of the frames x (n, d): entropy of the covariance spectrum over ln d (see the module doc)."""
    return spectral_summary(x)["nse"]


class SpectralEntropy(Metric):
    """Streaming NSE / effective rank / RankMe of frames; states are sums (n, sum x, sum x x^T) in float64.

    update(x, mask=None): x (B, T, D) with a (B, T) validity mask, or (N, D). compute() -> dict.
    """

    full_state_update = False

    def __init__(self, dim: int, stride: int = 1, **kw):
        super().__init__(**kw)
        if stride < 1:
            raise UserError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ss", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        x = valid_frames(x, mask, self.stride)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.ss += x.T @ x

    def compute(self) -> dict[str, Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in spectral_stats(self.n, self.s, self.ss).items()}
