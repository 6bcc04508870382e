"""Which parameters train: patterns over parameter names, applied explicitly and reported."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from entropy_asr.errors import UserError


def set_trainable(model: nn.Module, patterns: list[str], *, where: str = "trainable") -> None:
    """Freeze every parameter, then unfreeze those whose name matches a glob in `patterns`.

    A pattern that matches no parameter is an error (a typo must not silently freeze a module).
    """
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unmatched:
        tops = sorted({n.split(".")[0] for n in names})
        raise UserError(f"{where}: pattern(s) {unmatched} match no parameter; parameter names start with "
                        f"{tops} (e.g. {names[0]!r}); fix the pattern or drop it")
    for n, p in model.named_parameters():
        p.requires_grad_(any(fnmatchcase(n, pat) for pat in patterns))


def count_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{top-level submodule: (trainable, total)} parameter counts, plus "all"."""
    out: dict[str, list[int]] = {}
    seen: set[int] = set()  # tied weights (e.g. LLM embeddings / lm_head) count once
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        for key in (n.split(".")[0], "all"):
            c = out.setdefault(key, [0, 0])
            c[0] += p.numel() if p.requires_grad else 0
            c[1] += p.numel()
    out["all"] = out.pop("all", [0, 0])  # the total goes last
    return {k: (v[0], v[1]) for k, v in out.items()}


def format_parameter_report(counts: dict[str, tuple[int, int]]) -> str:
    """One line per submodule: `encoder  trainable=1,234 / total=5,678`."""
    width = max(len(k) for k in counts)
    return "\n".join(f"{k:<{width}}  trainable={t:,} / total={n:,}" for k, (t, n) in counts.items())


def fully_frozen(module: nn.Module) -> bool:
    """True when the module has parameters and none of them trains."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)
