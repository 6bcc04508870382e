"""eSpeak NG speech synthesis through ctypes, for the offline synthetic bilingual corpus.

Uses only the library and data shipped in the `espeakng-loader` wheel (no system espeak), so
the corpus is the same on every machine. The C API is declared in espeak-ng's
`src/include/espeak-ng/speak_lib.h` (API revision 12); the constants below are copied from it.
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from entropy_asr.errors import UserError
from entropy_asr.text.script import split_by_script

# speak_lib.h: espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, espeak_PARAMETER, flags, espeak_ERROR.
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4
espeakCHARS_UTF8 = 1
EE_OK = 0
espeakINITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
# Callback buffer length in ms: longer buffers mean fewer Python callbacks per utterance.
_BUFFER_MS = 1000


class _Event(ctypes.Structure):
    """speak_lib.h `espeak_EVENT`; only passed through, but declared so the pointer type is right."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union { int number; const char *name; char string[8]; }
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


# eSpeak keeps synthesis state in C statics that neither espeak_Terminate nor espeak_Initialize
# resets (pitch flutter index, waveform phase, echo buffer, Klatt filters), so a persistent
# library makes each utterance depend on the ones before it. Every call therefore runs on a
# freshly loaded private copy of the library (dlopen + init + voice + synth + dlclose, ~1 ms
# of overhead), which makes output a pure function of (text, voice, parameters).
_lock = threading.Lock()
_chunks: list[bytes] = []


def _collect(wav, numsamples, events) -> int:
    """Synth callback: copy each buffer of 16-bit samples out of eSpeak's memory."""
    if wav and numsamples > 0:
        _chunks.append(ctypes.string_at(wav, numsamples * 2))
    return 0  # 0 = continue synthesis


# Module-level so ctypes keeps the trampoline alive as long as C may call it.
_callback = _SynthCallback(_collect)


def _reset_lock_in_child() -> None:
    """A forked child must not inherit a lock some other parent thread held at fork time."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _declare(lib: ctypes.CDLL) -> None:
    """Give the speak_lib.h signatures to the functions we call (ctypes defaults to int args)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]


def _language_files(data_path: str) -> list[str]:
    """Paths of the language voice files under data_path/lang, e.g. "gmw/en-US", sorted."""
    lang = os.path.join(data_path, "lang")
    return sorted(os.path.relpath(os.path.join(folder, name), lang)
                  for folder, _, files in os.walk(lang) for name in files)


def _check_private(path: str) -> None:
    """`path` must belong to this user and be writable by no one else (a library is loaded from under it)."""
    st = os.lstat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to you ({os.getuid()}); eSpeak's library is "
                              f"loaded from there: remove it, or set ENTROPY_ASR_CACHE to a directory of your own")
    if st.st_mode & 0o022 or os.path.islink(path):
        raise PermissionError(f"{path} is writable by others (mode {oct(st.st_mode & 0o777)}) or a link; eSpeak's "
                              f"library is loaded from there: chmod 700 it, or set ENTROPY_ASR_CACHE elsewhere")


def _private_copy(library: str, data_path: str) -> str:
    """Directory with a private copy of `library` and a symlinked espeak-ng-data, made once per user and wheel.

    A private file name, because dlopen of a path that other code in this process also loaded
    would return that (stateful) instance. The directory lives in this user's cache
    ($ENTROPY_ASR_CACHE or ~/.cache/entropy_asr, under espeak/, mode 700 and owned by the user: not
    a predictable name in the shared temp dir, where another user could plant a library), is keyed
    by the library's content and the data path, is published with an atomic rename, and is used
    only if its library's checksum is the wheel library's.
    """
    from entropy_asr.data.synthetic import default_cache_dir
    from entropy_asr.model.export import sha256_file

    want = sha256_file(library)
    key = hashlib.sha256((want + data_path).encode()).hexdigest()[:16]
    base = os.path.join(str(default_cache_dir()), "espeak")
    os.makedirs(base, mode=0o700, exist_ok=True)
    _check_private(base)
    root = os.path.join(base, key)
    name = "libespeak-ng-private" + os.path.splitext(library)[1]

    def complete() -> bool:
        lib = os.path.join(root, name)
        if not (os.path.isfile(lib) and os.path.exists(os.path.join(root, "espeak-ng-data", "phontab"))):
            return False
        _check_private(root)
        return sha256_file(lib) == want  # what is loaded is the wheel's library, byte for byte

    if complete():
        return root
    # Re-checked right before removal: another process may have published it since the first
    # check, and a complete copy that others are loading must never be deleted.
    if os.path.exists(root) and not complete():  # partly removed, or not the wheel's library: rebuild
        shutil.rmtree(root, ignore_errors=True)
    build = tempfile.mkdtemp(prefix=".build-", dir=base)  # mode 700, same filesystem as root
    shutil.copyfile(library, os.path.join(build, name))
    data = os.path.join(build, "espeak-ng-data")
    os.makedirs(data)
    for entry in sorted(os.listdir(data_path)):
        if entry != "lang":
            os.symlink(os.path.join(data_path, entry), os.path.join(data, entry))
    for rel in _language_files(data_path):
        os.makedirs(os.path.dirname(os.path.join(data, "lang", rel.lower())), exist_ok=True)
        os.symlink(os.path.join(data_path, "lang", rel), os.path.join(data, "lang", rel.lower()))
    try:
        os.rename(build, root)
    except OSError:  # another process published it first; theirs is identical
        shutil.rmtree(build, ignore_errors=True)
    if not complete():
        raise RuntimeError(f"{root}: the private copy of eSpeak's library does not match {library}; remove {root}")
    return root


class _Runtime:
    """This process's handle on a private copy of libespeak-ng and a view of the wheel's data."""

    def __init__(self) -> None:
        """Find (or build, once per machine and wheel) the private copy; read the voice names."""
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self.pid = os.getpid()
        library = espeakng_loader.get_library_path()
        self.root = _private_copy(library, self.data_path)
        self.library = os.path.join(self.root, "libespeak-ng-private" + os.path.splitext(library)[1])
        # eSpeak lowercases a voice name and tries the file lang/<name>; on a miss it reads all
        # ~280 voice files (3-4 ms, on every call here). The private view's lang/ tree has
        # lowercase names, and `paths` maps "en-us" to "gmw/en-us", "cmn" to "sit/cmn".
        self.paths: dict[str, str] = {}
        for rel in _language_files(self.data_path):
            self.paths.setdefault(os.path.basename(rel).lower(), rel.lower())
        self.variants = frozenset(os.listdir(os.path.join(self.data_path, "voices", "!v")))
        self.sample_rate = self.run(None)

    def run(self, body: Callable[[ctypes.CDLL], None] | None) -> int:
        """Load a fresh library, initialize it, call `body(lib)`, unload it; returns the sample rate."""
        lib = ctypes.CDLL(self.library)
        try:
            _declare(lib)
            # speak_lib.h: `path` is the directory that contains espeak-ng-data.
            rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, self.root.encode(),
                                         espeakINITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed on {self.root!r} (returned {rate})")
            try:
                lib.espeak_SetSynthCallback(_callback)
                if body is not None:
                    body(lib)
            finally:
                lib.espeak_Terminate()
            return rate
        finally:
            _ctypes.dlclose(lib._handle)


_runtime: _Runtime | None = None


def _get_runtime() -> _Runtime:
    """The process's runtime, made on first use (a forked child makes its own handle)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = _Runtime()
    return _runtime


class ESpeak:
    """eSpeak NG for this process: `ESpeak.instance().synthesize(text, voice)`.

    libespeak-ng keeps global state, so all ESpeak objects of a process share one private
    runtime and calls are serialized by a lock; constructing several is safe, and so is using
    it from forked or spawned workers (each makes its own runtime).
    """

    _instance: ESpeak | None = None

    @classmethod
    def instance(cls) -> ESpeak:
        """Return this process's engine, setting up the library on first use."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        """Bind to this process's eSpeak runtime (made on first use); prefer `ESpeak.instance()`."""
        with _lock:
            runtime = _get_runtime()
        self.data_path = runtime.data_path
        self.sample_rate: int = runtime.sample_rate

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> np.ndarray:
        """Speak `text` with eSpeak `voice` (e.g. "cmn", "en-us+f2"): float32 mono in [-1, 1] at `sample_rate`."""
        language, plus, variant = voice.partition("+")
        with _lock:
            runtime = _get_runtime()
            # eSpeak silently ignores an unknown variant, so check the variant folder ourselves.
            if plus and variant not in runtime.variants:
                raise UserError(f"eSpeak voice {voice!r}: no variant {variant!r} in {self.data_path}/voices/!v")
            data = text.encode("utf-8") + b"\0"
            # A known language file is named by its path (fast); anything else goes to eSpeak's search.
            name = (runtime.paths.get(language.lower(), language) + plus + variant).encode()

            def body(lib: ctypes.CDLL) -> None:
                status = lib.espeak_SetVoiceByName(name)
                if status != EE_OK:
                    raise UserError(f"eSpeak rejected voice {voice!r} (status {status})")
                for param, value in ((espeakRATE, rate), (espeakPITCH, pitch), (espeakRANGE, pitch_range)):
                    if lib.espeak_SetParameter(param, int(value), 0) != EE_OK:
                        raise UserError(f"eSpeak rejected parameter {param}={value} for voice {voice!r}")
                # Breath and Klatt noise use eSpeak's PRNG; a seed from the input keeps it fixed.
                lib.espeak_ng_SetRandSeed(zlib.crc32(f"{voice}|{text}".encode()))
                status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
                lib.espeak_Synchronize()
                if status != EE_OK:
                    raise RuntimeError(f"espeak_Synth failed with status {status} for voice {voice!r}")

            _chunks.clear()
            try:
                runtime.run(body)
                pcm = np.frombuffer(b"".join(_chunks), dtype=np.int16)
            finally:
                _chunks.clear()
        return pcm.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak variant, an English accent, rate (wpm), pitch and pitch range (0-100)."""

    name: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int
    english: str = "en-us"  # the eSpeak language file English runs are spoken with

    def voice(self, language: str) -> str:
        """eSpeak voice name for `language` ("zh" or "en") spoken by this speaker."""
        return f"{self.english if language == 'en' else 'cmn'}+{self.variant}"


# Fixed, not sampled: a small table of ordinary voices for tests and examples. Variants come from
# the wheel's voices/!v folder (m1-m8 and f1-f5 are formant variants; klatt* use the Klatt synthesizer).
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("m1", "m1", rate=165, pitch=45, pitch_range=50),
    Speaker("f1", "f1", rate=175, pitch=60, pitch_range=55),
    Speaker("m2", "m2", rate=180, pitch=40, pitch_range=60),
    Speaker("f2", "f2", rate=155, pitch=65, pitch_range=70),
    Speaker("klatt", "klatt", rate=170, pitch=52, pitch_range=50),
    Speaker("m3", "m3", rate=150, pitch=50, pitch_range=45),
    Speaker("f3", "f3", rate=190, pitch=55, pitch_range=50),
    Speaker("m4", "m4", rate=195, pitch=35, pitch_range=55),
    Speaker("klatt4", "klatt4", rate=205, pitch=75, pitch_range=65),
    Speaker("m5", "m5", rate=170, pitch=55, pitch_range=40),
    Speaker("f4", "f4", rate=165, pitch=70, pitch_range=60),
    Speaker("m6", "m6", rate=145, pitch=42, pitch_range=65),
    Speaker("m7", "m7", rate=185, pitch=48, pitch_range=50),
    Speaker("m8", "m8", rate=160, pitch=38, pitch_range=35),
    Speaker("f5", "f5", rate=200, pitch=62, pitch_range=45),
    Speaker("klatt3", "klatt3", rate=150, pitch=30, pitch_range=55),
)

# The corpus draws a new speaker per utterance (draw_speaker): any variant of the wheel's voices/!v
# folder, an English accent, and rate, pitch and pitch range from wide ranges. These variants (one
# or two of each family: formant, Klatt, named) are held out of training for the unseen-voice test.
UNSEEN_VARIANTS = ("m7", "f4", "klatt5", "Annie", "Michael", "belinda", "edward", "norbert")
# English accents, with their share: labels stay CMUdict's (General American), so the others teach
# the encoder that an accent's vowels are still the same phones.
ENGLISH_ACCENTS = (("en-us", 0.7), ("en-gb-x-rp", 0.1), ("en", 0.05), ("en-us-nyc", 0.05), ("en-029", 0.05),
                   ("en-gb-scotland", 0.05))
RATE_RANGE = (115, 250)  # words per minute; eSpeak's default is 175
PITCH_RANGE = (15, 90)
PITCH_RANGE_RANGE = (15, 90)
# libespeak-ng crashes (SIGSEGV) on some variant/text pairs when the pitch range is far above the
# pitch, e.g. "两个" with cmn+rob at pitch 34, range 86. A scan of every variant at rates 115 and 250
# and pitches 15-90 on short Mandarin and English texts found no crash with range <= pitch + 35.
MAX_RANGE_ABOVE_PITCH = 35


def variants(data_path: str | None = None) -> tuple[str, ...]:
    """Every voice variant the wheel ships (voices/!v), sorted."""
    if data_path is None:
        import espeakng_loader

        data_path = espeakng_loader.get_data_path()
    return tuple(sorted(os.listdir(os.path.join(data_path, "voices", "!v"))))


def draw_speaker(rng, pool: tuple[str, ...]) -> Speaker:
    """A random speaker (a `random.Random` draw) with a variant from `pool`; its name spells its settings."""
    variant = rng.choice(pool)
    english = rng.choices([a for a, _ in ENGLISH_ACCENTS], [w for _, w in ENGLISH_ACCENTS])[0]
    rate, pitch = rng.randint(*RATE_RANGE), rng.randint(*PITCH_RANGE)
    prange = rng.randint(PITCH_RANGE_RANGE[0], min(PITCH_RANGE_RANGE[1], pitch + MAX_RANGE_ABOVE_PITCH))
    return Speaker(f"{variant}/{english}/r{rate}p{pitch}g{prange}", variant, rate, pitch, prange, english)


# Full-width punctuation that the cmn voice reads as pauses but an English voice might name.
_ASCII_PUNCT = str.maketrans({"，": ", ", "。": ". ", "？": "? ", "！": "! ", "；": "; ", "：": ": ", "、": ", ",
                              "（": " (", "）": ") ", "“": '"', "”": '"', "‘": "'", "’": "'"})


def split_languages(text: str) -> list[tuple[str, str]]:
    """Cut code-switched text into [(language, segment)] with language "zh" or "en", in order.

    Digits go with an adjacent Han run (so "3个" is read in Mandarin), punctuation with the run
    before it (so it shapes that run's intonation); spaces at a language boundary are dropped.
    """
    tokens = split_by_script(text)
    langs: list[str | None] = []
    for script, run in tokens:
        if script == "han":
            langs.append("zh")
        elif script == "latin" and any(c.isalpha() for c in run):
            langs.append("en")
        else:
            langs.append(None)
    spoken = [i for i, lang in enumerate(langs) if lang is not None]
    for i, (script, _) in enumerate(tokens):
        if script == "latin" and langs[i] is None:  # a number: Mandarin if next to any Han run
            before = [langs[j] for j in spoken if j < i][-1:]
            after = [langs[j] for j in spoken if j > i][:1]
            langs[i] = "zh" if "zh" in before + after else "en"
    for i in range(len(tokens)):  # punctuation/space joins the run before it (or after, at the start)
        if langs[i] is None:
            langs[i] = next((langs[j] for j in range(i - 1, -1, -1) if langs[j] is not None), None)
    if langs and langs[0] is None:
        first = next((lang for lang in langs if lang is not None), "en")
        langs = [lang or first for lang in langs]
    segments: list[tuple[str, str]] = []
    for lang, (_, run) in zip(langs, tokens):
        if segments and segments[-1][0] == lang:
            segments[-1] = (lang, segments[-1][1] + run)
        else:
            segments.append((lang, run))
    return [(lang, seg.strip()) for lang, seg in segments if any(c.isalnum() for c in seg)]


def _trim_silence(audio: np.ndarray, start: bool, end: bool, threshold: float = 1e-3) -> np.ndarray:
    """Drop near-silent samples from the chosen ends, so the inserted gap sets the pause length."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    lo = loud[0] if start else 0
    hi = loud[-1] + 1 if end else audio.size
    return audio[lo:hi]


def synthesize_text(engine: ESpeak, text: str, speaker: Speaker) -> np.ndarray:
    """Speak Mandarin, English or code-switched `text` as `speaker`: float32 mono at `engine.sample_rate`.

    Han runs use `cmn+<variant>`, Latin runs `en-us+<variant>` with the same rate and pitch, so
    both languages come from one "speaker"; runs are joined by a 60-120 ms gap chosen from the
    text (deterministic). Pure-language text is one eSpeak call, keeping its natural prosody.
    """
    segments = split_languages(text)
    if not segments:
        return np.zeros(0, dtype=np.float32)
    parts = []
    for i, (lang, segment) in enumerate(segments):
        seg_text = segment.translate(_ASCII_PUNCT).strip() if lang == "en" else segment
        audio = engine.synthesize(seg_text, speaker.voice(lang), speaker.rate, speaker.pitch, speaker.pitch_range)
        if len(segments) > 1:  # keep the outer silences as eSpeak made them; the caller trims those
            audio = _trim_silence(audio, start=i > 0, end=i < len(segments) - 1)
        parts.append(audio)
    if len(parts) == 1:
        return parts[0]
    gap_ms = 60 + zlib.crc32(text.encode()) % 61
    gap = np.zeros(engine.sample_rate * gap_ms // 1000, dtype=np.float32)
    out = [parts[0]]
    for part in parts[1:]:
        out += [gap, part]
    return np.concatenate(out)
