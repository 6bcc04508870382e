"""Spell digit strings as words: Chinese numerals for Mandarin, English words (via inflect) for English."""

from __future__ import annotations

import functools
import re

_ZH_DIGITS = "零一二三四五六七八九"
_DECIMAL = re.compile(r"(\d+)\.(\d+)")


def zh_digits(s: str) -> str:
    """Read a digit string one digit at a time: "2024" -> "二零二四"."""
    return "".join(_ZH_DIGITS[int(c)] for c in s)


def _zh_section(n: int) -> str:
    """Chinese reading of 0 < n < 10000, with 零 for inner zero runs: 1005 -> 一千零五."""
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _ZH_DIGITS[d] + unit
    return out


def zh_int(n: int) -> str:
    """Chinese reading of a non-negative integer below 10^16: 15 -> 十五, 2024 -> 两千零二十四."""
    if n == 0:
        return "零"
    if n >= 10**16:
        return zh_digits(str(n))
    groups = []
    while n:
        n, g = divmod(n, 10000)
        groups.append(g)
    out = ""
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            continue
        # A gap (a zero group, or a group below 1000 after a higher one) is read as one 零.
        if out and (g < 1000 or groups[i + 1] == 0):
            out += "零"
        out += _zh_section(g) + ("", "万", "亿", "万亿")[i]
    if out.startswith("一十"):  # 15 is 十五, not 一十五
        out = out[1:]
    if len(out) > 1 and out[0] == "二" and out[1] in "千万亿":  # 2000 is 两千
        out = "两" + out[1:]
    return out


def zh_number(s: str, *, next_char: str = "") -> str:
    """Chinese numerals for a digit string ("3", "2024", "0.5"), as a Mandarin speaker reads it.

    Leading zeros, long strings (> 12 digits: phone/ID numbers) and a 4-digit year before 年 are
    read digit by digit; decimals are 整数 + 点 + digits.
    """
    m = _DECIMAL.fullmatch(s)
    if m:
        return zh_number(m.group(1)) + "点" + zh_digits(m.group(2))
    if (len(s) > 1 and s[0] == "0") or len(s) > 12 or (len(s) == 4 and next_char == "年"):
        return zh_digits(s)
    return zh_int(int(s))


@functools.lru_cache(maxsize=1)
def _inflect():
    import inflect  # imported lazily: it is slow to import and only needed for English numbers

    return inflect.engine()


_EN_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def en_number_words(s: str, *, ordinal: bool = False) -> list[str]:
    """English words for a digit string: "2024" -> two thousand twenty four; years 1100-1999 in pairs."""
    m = _DECIMAL.fullmatch(s)
    if m:
        return en_number_words(m.group(1)) + ["point"] + [_EN_DIGITS[int(c)] for c in m.group(2)]
    if (len(s) > 1 and s[0] == "0") or len(s) > 15:
        return [_EN_DIGITS[int(c)] for c in s]
    n = int(s)
    eng = _inflect()
    if ordinal:
        text = eng.number_to_words(eng.ordinal(n), andword="")
    elif len(s) == 4 and 1100 <= n <= 1999:  # "1984": nineteen eighty-four, as years are read
        hi, lo = divmod(n, 100)
        tail = "hundred" if lo == 0 else ("oh " + _EN_DIGITS[lo] if lo < 10 else eng.number_to_words(lo))
        text = eng.number_to_words(hi) + " " + tail
    else:
        text = eng.number_to_words(n, andword="")
    return [w for w in re.split(r"[\s,\-]+", text) if w]
