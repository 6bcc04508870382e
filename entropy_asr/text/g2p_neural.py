"""NumPy port of g2p_en's GRU encoder-decoder, for English words CMUdict does not know.

g2p_en (Park & Kim, https://github.com/Kyubyong/g2p, Apache-2.0) imports NLTK and downloads
corpora when imported, which fails offline. Only its bundled weights (checkpoint20.npz) are used
here: the package directory is located without executing it, and `G2p.predict` from
g2p_en/g2p.py (v2.1.0) is re-implemented below with the same vocabularies and the same math.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

# Vocabularies copied from g2p_en/g2p.py (G2p.__init__); the index order is the checkpoint's.
GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + [
    "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2", "AO0", "AO1", "AO2",
    "AW0", "AW1", "AW2", "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0", "EH1", "EH2",
    "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH", "IH0", "IH1", "IH2",
    "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2",
    "OY0", "OY1", "OY2", "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW",
    "UW0", "UW1", "UW2", "V", "W", "Y", "Z", "ZH",
]
_G2IDX = {g: i for i, g in enumerate(GRAPHEMES)}
_START, _END = 2, 3  # <s> and </s> in PHONEMES


def g2p_en_dir() -> str:
    """Directory of the installed g2p_en package, found without importing it (its import needs NLTK data)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("g2p_en is not installed; `pip install g2p-en` (only its model file is used)")
    return spec.submodule_search_locations[0]


@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, np.ndarray]:
    """Load checkpoint20.npz once per process."""
    with np.load(os.path.join(g2p_en_dir(), "checkpoint20.npz")) as z:
        return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    # PyTorch GRU gate layout [r, z, n], as in g2p_en's G2p.grucell.
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    k = gi.shape[-1] // 3
    r = _sigmoid(gi[:, :k] + gh[:, :k])
    z = _sigmoid(gi[:, k:2 * k] + gh[:, k:2 * k])
    n = np.tanh(gi[:, 2 * k:] + r * gh[:, 2 * k:])
    return (1.0 - z) * n + z * h


def predict(word: str, max_len: int | None = None) -> list[str]:
    """Greedy-decode ARPAbet phones (g2p_en's raw vocabulary) for a lowercase a-z word."""
    w = _weights()
    ids = [_G2IDX.get(c, _G2IDX["<unk>"]) for c in word] + [_G2IDX["</s>"]]
    x = w["enc_emb"][ids]  # (T, 64)
    h = np.zeros((1, w["enc_w_hh"].shape[1]), np.float32)
    for t in range(len(ids)):  # the decoder starts from the encoder's last hidden state
        h = _gru_cell(x[t:t + 1], h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
    # g2p_en stops after 20 phones; longer words would be cut, so allow a little more per letter.
    max_len = max_len or max(20, len(word) + 10)
    dec = w["dec_emb"][[_START]]
    out = []
    for _ in range(max_len):
        h = _gru_cell(dec, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
        pred = int(np.argmax(h @ w["fc_w"].T + w["fc_b"]))
        if pred == _END:
            break
        out.append(PHONEMES[pred])
        dec = w["dec_emb"][[pred]]
    return out
