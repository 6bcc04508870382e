"""Lightning callbacks: non-essential logic beside the stages (drift monitoring, hot-swap, probes)."""

from callbacks.accessible_info import AccessibleInformationProbe
from callbacks.cka_drift import CKADriftMonitor
from callbacks.hot_swap import EncoderHotSwap, complete_snapshots
from callbacks.spectral_logger import SpectralEntropyLogger, representation_spectra

__all__ = ["AccessibleInformationProbe", "CKADriftMonitor", "EncoderHotSwap", "SpectralEntropyLogger",
           "complete_snapshots", "representation_spectra"]
