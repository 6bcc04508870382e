"""Split mixed Mandarin/English text into runs of one script (code-switch handling)."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ Extension A and compatibility ideographs); 〇 counts as Han.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3007"
_RUNS = re.compile(rf"(?P<han>[{_HAN}]+)|(?P<latin>[A-Za-z0-9'\u00c0-\u024f]+(?:[-.][A-Za-z0-9']+)*)"
                   rf"|(?P<other>[^{_HAN}A-Za-z0-9'\u00c0-\u024f]+)")


def split_by_script(text: str) -> list[tuple[str, str]]:
    """Return [(script, run)] with script in {"han", "latin", "other"}, covering `text` in order.

    >>> split_by_script("我们去 office 开会.")
    [('han', '我们去'), ('other', ' '), ('latin', 'office'), ('other', ' '), ('han', '开会'), ('other', '.')]
    """
    return [(m.lastgroup, m.group()) for m in _RUNS.finditer(text)]


def has_han(text: str) -> bool:
    """True if `text` contains a Han character."""
    return re.search(f"[{_HAN}]", text) is not None


def has_latin(text: str) -> bool:
    """True if `text` contains a Latin letter."""
    return re.search(r"[A-Za-z\u00c0-\u024f]", text) is not None


def detect_language(text: str) -> str:
    """Language tag of a transcript from its scripts: "zh", "en", "mix" or "none" (no letters)."""
    han, latin = has_han(text), has_latin(text)
    if han and latin:
        return "mix"
    if han:
        return "zh"
    if latin:
        return "en"
    return "none"
