"""Lightning callbacks: non-essential logic beside the stages (drift monitoring, hot-swap, probes)."""

from callbacks.cka_drift import CKADriftMonitor

__all__ = ["CKADriftMonitor"]
