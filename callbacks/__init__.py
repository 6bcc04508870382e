"""Lightning callbacks: non-essential logic beside the stages (drift monitoring, hot-swap, probes)."""

from callbacks.cka_drift import CKADriftMonitor
from callbacks.hot_swap import EncoderHotSwap, complete_snapshots

__all__ = ["CKADriftMonitor", "EncoderHotSwap", "complete_snapshots"]
