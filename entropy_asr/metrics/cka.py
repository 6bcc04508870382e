"""Linear CKA: how similar two sets of representations of the same frames are (the drift monitor).

Biased (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", eq. 4
with a linear kernel), on column-centered features X (n, d1), Y (n, d2):

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

Unbiased: the same ratio with HSIC replaced by Song et al. 2012's unbiased estimator on the
linear Gram matrices K = X X^T, L = Y Y^T with zeroed diagonals (K~, L~), n >= 4:

    HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))
    CKA_u = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))

Minibatch CKA (Nguyen et al. 2021, "Do Wide and Deep Networks Learn the Same Things?", eq. 3):
the three HSIC_1 terms are averaged over minibatches before the ratio, so they accumulate as
three sums (and all-reduce across ranks as sums). Everything is computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from entropy_asr.errors import UserError


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs two (n, d) tensors over the same n frames, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x.detach().double(), y.detach().double()


def hsic_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Song et al. 2012's unbiased HSIC with linear kernels, for x (n, d1), y (n, d2), n >= 4."""
    x, y = _pair(x, y)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 frames, got {n}")
    gk = x @ x.T  # (n, n): K
    gl = y @ y.T  # (n, n): L
    gk.fill_diagonal_(0)  # K~
    gl.fill_diagonal_(0)  # L~
    trace = (gk * gl).sum()  # tr(K~ L~), both symmetric
    ones_term = gk.sum() * gl.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (gk @ gl.sum(1)).sum()  # 2/(n-2) 1'K~L~1
    return (trace + ones_term - cross) / (n * (n - 3))


def _biased_from_moments(n, sx, sy, sxy, sxx, syy) -> float:
    """Biased CKA from streamed sums: sx = sum x, sxy = sum x y^T, ... (float64)."""
    cxy = sxy - torch.outer(sx, sy) / n  # (d1, d2): Xc^T Yc
    cxx = sxx - torch.outer(sx, sx) / n
    cyy = syy - torch.outer(sy, sy) / n
    return float(cxy.pow(2).sum() / (torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)))


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA of x (n, d1) and y (n, d2): biased (feature space, O(n d^2)) or unbiased (Gram, O(n^2 d))."""
    x, y = _pair(x, y)
    if debiased:
        return float(hsic_unbiased(x, y) / (hsic_unbiased(x, x) * hsic_unbiased(y, y)).sqrt())
    return _biased_from_moments(x.shape[0], x.sum(0), y.sum(0), x.T @ y, x.T @ x, y.T @ y)


def valid_frames(x: Tensor, mask: Tensor | None = None, stride: int = 1) -> Tensor:
    """(B, T, D) with a (B, T) validity mask, or (N, D) -> (n, D) float64 rows.

    Padding is dropped and every stride-th remaining frame kept.
    """
    if x.dim() == 3:
        x = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
    elif mask is not None:
        x = x[mask]
    if x.dim() != 2:
        raise ValueError(f"expected frames (B, T, D) or (N, D), got {tuple(x.shape)}")
    return x[::stride].detach().double()


class LinearCKA(Metric):
    """Streaming linear CKA between two representations of the same frames, all states sums.

    debiased=False: exact biased CKA of all frames seen (feature-space sums: n, sum x, sum y,
    X^T Y, X^T X, Y^T Y). debiased=True: minibatch CKA, each update() one minibatch of >= 4
    frames (three sums of HSIC_1). Either way a multi-process value equals the one-process value
    on the same updates. update(x, y, mask=None): x (B, T, D1) or (N, D1), y likewise.

    Args:
        stride: keep every stride-th valid frame (neighbouring frames are near duplicates).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, dim_x: int, dim_y: int, debiased: bool = False, stride: int = 1, **kw):
        super().__init__(**kw)
        if stride < 1:
            raise UserError(f"stride must be >= 1, got {stride}")
        self.debiased, self.stride = debiased, stride
        f64 = torch.float64
        if debiased:
            for name in ("hsic_xy", "hsic_xx", "hsic_yy"):
                self.add_state(name, torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        else:
            self.add_state("n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
            self.add_state("sx", torch.zeros(dim_x, dtype=f64), dist_reduce_fx="sum")
            self.add_state("sy", torch.zeros(dim_y, dtype=f64), dist_reduce_fx="sum")
            self.add_state("sxy", torch.zeros(dim_x, dim_y, dtype=f64), dist_reduce_fx="sum")
            self.add_state("sxx", torch.zeros(dim_x, dim_x, dtype=f64), dist_reduce_fx="sum")
            self.add_state("syy", torch.zeros(dim_y, dim_y, dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> None:
        x, y = _pair(valid_frames(x, mask, self.stride), valid_frames(y, mask, self.stride))
        if self.debiased:
            self.hsic_xy += hsic_unbiased(x, y)
            self.hsic_xx += hsic_unbiased(x, x)
            self.hsic_yy += hsic_unbiased(y, y)
            return
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxy += x.T @ y
        self.sxx += x.T @ x
        self.syy += y.T @ y

    def compute(self) -> Tensor:
        if self.debiased:
            return self.hsic_xy / (self.hsic_xx * self.hsic_yy).sqrt()
        return torch.tensor(_biased_from_moments(self.n, self.sx, self.sy, self.sxy, self.sxx, self.syy),
                            dtype=torch.float64)
