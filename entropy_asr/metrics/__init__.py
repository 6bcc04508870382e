"""Metrics: error rates, and the entropy-allocation metrics (linear CKA, spectral entropy, accessible
information: PAI and CSAI on the encoder side, H0/H1 on the LLM side)."""

from entropy_asr.metrics.alignment import frame_phone_positions
from entropy_asr.metrics.cka import LinearCKA, hsic_unbiased, linear_cka
from entropy_asr.metrics.llm_info import TranscriptInformation
from entropy_asr.metrics.probe import (
           accessible_information,
           semantic_accessible_information,
           unit_rows,
)
from entropy_asr.metrics.spectral import (
           SpectralEntropy,
           normalized_spectral_entropy,
           spectral_stats,
           spectral_summary,
)

__all__ = [
           "LinearCKA",
           "SpectralEntropy",
           "TranscriptInformation",
           "accessible_information",
           "frame_phone_positions",
           "hsic_unbiased",
           "linear_cka",
           "normalized_spectral_entropy",
           "semantic_accessible_information",
           "spectral_stats", "spectral_summary",
           "unit_rows",
]
