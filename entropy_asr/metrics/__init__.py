"""Metrics: error rates, and the entropy-allocation metrics (linear CKA, spectral entropy, accessible
information: PAI on the encoder side, H0/H1 on the LLM side); CSAI joins here."""

from entropy_asr.metrics.cka import LinearCKA, hsic_unbiased, linear_cka
from entropy_asr.metrics.llm_info import TranscriptInformation
from entropy_asr.metrics.probe import accessible_information, frame_phone_labels
from entropy_asr.metrics.spectral import (
           SpectralEntropy,
           normalized_spectral_entropy,
           spectral_stats,
)

__all__ = ["LinearCKA", "SpectralEntropy", "TranscriptInformation", "accessible_information", "frame_phone_labels",
           "hsic_unbiased", "linear_cka", "normalized_spectral_entropy", "spectral_stats"]
