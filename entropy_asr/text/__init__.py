"""Text front end: the shared phone inventory, the phonemizer (CTC labels) and transcript normalization."""

from entropy_asr.text.inventory import (
    INVENTORY_VERSION,
    PHONE_TO_ID,
    PHONES,
    inventory_fingerprint,
    phones_to_ids,
)
from entropy_asr.text.normalize import normalize_text, tokenize_for_scoring
from entropy_asr.text.phonemizer import Phonemizer
from entropy_asr.text.script import detect_language, split_by_script

__all__ = [
    "INVENTORY_VERSION",
    "PHONES",
    "PHONE_TO_ID",
    "Phonemizer",
    "detect_language",
    "inventory_fingerprint",
    "normalize_text",
    "phones_to_ids",
    "split_by_script",
    "tokenize_for_scoring",
]
