"""The shared, versioned Mandarin + English phone inventory used as CTC labels.

Mandarin phones are lowercase pinyin pieces (initials; finals with tone digits 1-5, 5 = neutral;
the erhua suffix "rr"); English phones are uppercase ARPAbet as in CMUdict (vowels carry stress
0/1/2). Case alone keeps the two sets apart, so a name can never mean two different sounds.
Bump INVENTORY_VERSION whenever PHONES changes: label ids in existing shards would shift.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

INVENTORY_VERSION = "1"

BLANK = "<blank>"
UNK = "<unk>"

# The 21 initials of the Hanyu Pinyin scheme; y/w are spelling devices, not initials (strict analysis).
MANDARIN_INITIALS = (
    "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h",
    "j", "q", "x", "zh", "ch", "sh", "r", "z", "c", "s",
)

# Every final pypinyin 0.55's strict analysis produces (checked against all 1559 syllables in its
# single-character and phrase dictionaries), ü written v as in pypinyin's TONE3 style, plus the
# syllabic nasals m/n/ng (嗯 n2, 呣 m2, 哼 hng5 -> h + ng5) that strict analysis leaves without a final.
MANDARIN_FINALS = (
    "a", "o", "e", "ê", "ai", "ei", "ao", "ou", "an", "en", "ang", "eng", "ong", "er",
    "i", "ia", "ie", "iao", "iou", "ian", "in", "iang", "ing", "iong",
    "u", "ua", "uo", "uai", "uei", "uan", "uen", "uang", "ueng",
    "v", "ve", "van", "vn",
    "m", "n", "ng",
)
MANDARIN_TONES = ("1", "2", "3", "4", "5")
ERHUA = "rr"

# The 39 CMUdict phones; the 15 vowels take a stress digit, the 24 consonants do not.
ENGLISH_VOWELS = (
    "AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW",
)
ENGLISH_CONSONANTS = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
    "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH",
)


def _build() -> tuple[str, ...]:
    """Assemble the inventory in its fixed order (blank first, as CTC losses expect id 0)."""
    phones = [BLANK, UNK]
    phones += MANDARIN_INITIALS
    phones += [f + t for f in MANDARIN_FINALS for t in MANDARIN_TONES]
    phones.append(ERHUA)
    phones += [v + s for v in ENGLISH_VOWELS for s in "012"]
    phones += ENGLISH_CONSONANTS
    return tuple(phones)


PHONES: tuple[str, ...] = _build()
PHONE_TO_ID: dict[str, int] = {p: i for i, p in enumerate(PHONES)}
BLANK_ID = PHONE_TO_ID[BLANK]
UNK_ID = PHONE_TO_ID[UNK]

assert len(PHONE_TO_ID) == len(PHONES), "duplicate phone names in the inventory"


def phones_to_ids(phones: Iterable[str]) -> list[int]:
    """Map phone symbols to label ids; a symbol outside the inventory becomes the <unk> id."""
    return [PHONE_TO_ID.get(p, UNK_ID) for p in phones]


def inventory_fingerprint() -> str:
    """Short sha256 of the version and the ordered phone list, recorded in shards next to their labels."""
    joined = INVENTORY_VERSION + "\n" + "\n".join(PHONES)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]
