"""Metrics: error rates, and the entropy-allocation metrics (linear CKA, spectral entropy); PAI/CSAI join here."""

from entropy_asr.metrics.cka import LinearCKA, hsic_unbiased, linear_cka
from entropy_asr.metrics.spectral import (
           SpectralEntropy,
           normalized_spectral_entropy,
           spectral_stats,
)

__all__ = ["LinearCKA", "SpectralEntropy", "hsic_unbiased", "linear_cka", "normalized_spectral_entropy",
           "spectral_stats"]
