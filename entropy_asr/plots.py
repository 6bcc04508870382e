"""PNG plots of the logged series (matplotlib Figures drawn by Agg, without pyplot: no display needed, and the
process's matplotlib backend is left alone). Written atomically.

- plot_drift: CKA to the reference over pretraining steps, with the snapshots exported and the ones
  IA-SFT swapped in marked, and the encoder's NSE over the same steps (from drift.jsonl).
- plot_series: any numeric keys of a JSONL log (entropy.jsonl, accessible_information.jsonl) over steps.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from entropy_asr.io import atomic_write_via


def _figure(figsize: tuple[float, float]) -> Figure:
    """A figure drawn by Agg, outside pyplot (no global backend or figure registry involved)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the temp name ends in .png: savefig picks the format from it
    atomic_write_via(out, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), suffix=".png")
    return out


def plot_drift(drift: list[dict], out: str | Path, swapped_steps: list[int] | None = None,
               threshold: float | None = None, title: str = "encoder drift during pretraining") -> Path:
    """Two panels over pretraining steps: CKA to the reference (snapshots ▲, IA-SFT swaps ○) and NSE."""
    checks = [d for d in drift if "cka" in d]
    steps = [d["step"] for d in checks]
    fig = _figure((8.5, 5.5))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(steps, [d["cka"] for d in checks], ".-", color="tab:blue", label="CKA to reference")
    snaps = [d for d in checks if d.get("snapshot")]
    ax1.plot([d["step"] for d in snaps], [d["cka"] for d in snaps], "^", color="tab:red", ms=8,
             label="snapshot exported")
    if threshold is not None:
        ax1.axhline(threshold, ls="--", color="gray", lw=1, label=f"threshold {threshold:g}")
    for i, s in enumerate(sorted(set(swapped_steps or []))):
        ax1.axvline(s, color="tab:green", lw=1, alpha=0.7, label="swapped into IA-SFT" if i == 0 else None)
        ax2.axvline(s, color="tab:green", lw=1, alpha=0.7)
    ax1.set_ylabel("linear CKA")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curve stays visible
    ax1.set_title(title)
    ax2.plot(steps, [d["nse"] for d in checks], ".-", color="tab:purple")
    ax2.set_ylabel("NSE (encoder)")
    ax2.set_xlabel("pretraining step")
    return _save(fig, out)


def plot_series(rows: list[dict], keys: list[str], out: str | Path, title: str = "",
                errors: dict[str, str] | None = None, below_zero: dict[str, str] | None = None) -> Path:
    """One panel per key present in `rows` (dicts with "step"; nested dicts flattened as a/b).

    errors: {key: standard-error key}: +-2 SE bars on that key's points. below_zero: {key: note}:
    when a value of key is negative, a zero line and the note (what a negative value means).
    """
    flat = [_flatten(r) for r in rows]
    keys = [k for k in keys if any(k in r for r in flat)]
    if not keys:
        raise ValueError(f"plot_series: none of {keys} in the rows; nothing to plot for {out}")
    fig = _figure((7, 1.9 * len(keys) + 0.6))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in flat if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-")
        se_key = (errors or {}).get(key)
        if se_key:
            bars = [(r["step"], r[key], 2 * r[se_key]) for r in flat if key in r and se_key in r]
            ax.errorbar([b[0] for b in bars], [b[1] for b in bars], [b[2] for b in bars], fmt="none", capsize=3,
                        color="tab:blue", alpha=0.6)
        if key in (below_zero or {}) and any(p[1] < 0 for p in pts):
            ax.axhline(0.0, color="gray", lw=1, ls="--")
            ax.text(0.01, 0.05, below_zero[key], transform=ax.transAxes, fontsize=7, color="dimgray")
        ax.set_ylabel(key, fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    return _save(fig, out)


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out
