"""Pseudo speech for the tiny LLM's text step, and the forced-aligned layout of real speech."""

from __future__ import annotations

import random

import pytest
import torch

from entropy_asr.model.pseudo_speech import (
    SILENCE_ID,
    PhoneFrames,
    PhoneFramesConfig,
    aligned_layout,
    held_phones,
)
from entropy_asr.text import PHONES


def fixed(**kw) -> PhoneFrames:
    """Deterministic layout: fixed durations and edges, no pauses unless asked."""
    cfg = {"dim": 8, "frames_per_phone": (2, 2), "edge_silence": (1, 1), "pause_prob": 0.0, "substitution": 0.0,
           "deletion": 0.0, **kw}
    return PhoneFrames(PhoneFramesConfig(**cfg))


def test_layout_holds_each_phone_with_silence_at_the_edges():
    ids, lens = fixed().layout([[5, 7], [9], []], random.Random(0), train=True)
    assert lens.tolist() == [6, 4, 0]  # an empty phone list: no speech at all
    assert ids[0].tolist() == [SILENCE_ID, 5, 5, 7, 7, SILENCE_ID]
    assert ids[1, :4].tolist() == [SILENCE_ID, 9, 9, SILENCE_ID] and ids[1, 4:].tolist() == [SILENCE_ID] * 2


def test_layout_durations_and_pauses_stay_in_their_ranges():
    pf = fixed(frames_per_phone=(2, 5), edge_silence=(1, 6), pause_prob=0.5, pause_frames=(1, 3))
    rng = random.Random(1)
    for _ in range(50):
        ids, lens = pf.layout([[5, 6, 7, 8]], rng, train=False)
        row = ids[0, :lens[0]].tolist()
        runs = []  # (token, run length)
        for t in row:
            if runs and runs[-1][0] == t:
                runs[-1][1] += 1
            else:
                runs.append([t, 1])
        phones = [r for r in runs if r[0] != SILENCE_ID]
        assert [p[0] for p in phones] == [5, 6, 7, 8] and all(2 <= n <= 5 for _, n in phones)
        assert runs[0][0] == SILENCE_ID and 1 <= runs[0][1] <= 6 and runs[-1][0] == SILENCE_ID


def test_substitution_only_in_training_and_never_blank_or_unk():
    pf = fixed(substitution=1.0)
    phones = [list(range(2, 42))]
    clean, _ = pf.layout(phones, random.Random(0), train=False)
    assert clean[0, 1:-1:2].tolist() == phones[0]
    noisy, _ = pf.layout(phones, random.Random(0), train=True)
    subs = noisy[0, 1:-1:2]
    assert subs.tolist() != phones[0] and bool((subs >= 2).all()) and bool((subs < len(PHONES)).all())


def test_deletion_only_in_training():
    pf = fixed(deletion=0.5)
    phones = [list(range(2, 42))]
    _, lens = pf.layout(phones, random.Random(0), train=False)
    assert int(lens[0]) == 2 + 2 * 40  # every phone held 2 frames, 1 frame of silence at each end
    dropped, lens = pf.layout(phones, random.Random(0), train=True)
    kept = [t for t in dropped[0, 1:int(lens[0]) - 1:2].tolist()]
    assert 5 < len(kept) < 35 and kept == [p for p in phones[0] if p in kept]  # a subsequence, in order


def test_confusion_changes_only_tones_and_stress_only_in_training():
    """A confused Mandarin final keeps its final with another tone, an English vowel its vowel with another stress;
    initials and consonants never change; each sequence draws its own share from [0, 2 x confusion]."""
    from entropy_asr.text import PHONE_TO_ID

    names = ["zh", "uang4", "m", "a3", "n", "i2", "AH0", "B", "IY1", "T", "ER0", "an5"] * 20
    phones = [[PHONE_TO_ID[p] for p in names]]
    pf = fixed(confusion=0.5)
    assert pf.layout(phones, random.Random(0), train=False)[0][0, 1:-1:2].tolist() == phones[0]
    shares = []
    for seed in range(40):
        got = [PHONES[i] for i in pf.layout(phones, random.Random(seed), train=True)[0][0, 1:-1:2].tolist()]
        assert len(got) == len(names)
        changed = 0
        for ref, hyp in zip(names, got):
            if ref[-1].isdigit():
                assert hyp[:-1] == ref[:-1] and hyp[-1].isdigit()  # same final or vowel, some tone or stress
                changed += hyp != ref
            else:
                assert hyp == ref
        shares.append(changed / sum(n[-1].isdigit() for n in names))
    assert min(shares) < 0.2 and max(shares) > 0.7  # sequences draw different shares up to 2 x 0.5
    with pytest.raises(ValueError, match="confusion"):
        PhoneFramesConfig(confusion=0.6)


def test_a_silence_layout_for_non_speech():
    pf = fixed(silence_frames=(10, 20))
    rng = random.Random(0)
    for _ in range(20):
        ids, lens = pf.layout([None, [5]], rng, train=True)
        assert 10 <= int(lens[0]) <= 20 and bool((ids[0] == SILENCE_ID).all())  # all silence: reads as nothing
        assert int(lens[1]) == 4


def test_frames_are_zero_past_each_length_and_noise_only_when_asked():
    pf = fixed(noise=0.5)
    ids, lens = pf.layout([[5, 7], [9]], random.Random(0), train=False)
    clean = pf(ids, lens)
    assert clean.shape == (2, 6, 8) and torch.equal(clean[1, 4:], torch.zeros(2, 8))
    assert torch.equal(clean[0, 1], pf.table.weight[5]) and torch.equal(pf(ids, lens), clean)
    noisy = pf(ids, lens, noise=True)
    assert not torch.equal(noisy[0, :6], clean[0, :6]) and torch.equal(noisy[1, 4:], torch.zeros(2, 8))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="frames_per_phone"):
        PhoneFramesConfig(frames_per_phone=(0, 3))
    with pytest.raises(ValueError, match="edge_silence"):
        PhoneFramesConfig(edge_silence=(4, 2))
    with pytest.raises(ValueError, match="substitution"):
        PhoneFramesConfig(substitution=1.5)


def spiky(path: list[int], vocab: int = 12) -> torch.Tensor:
    """(1, T, V) log-probs that put nearly all mass on the given token per frame."""
    lp = torch.full((1, len(path), vocab), -20.0)
    for t, k in enumerate(path):
        lp[0, t, k] = 0.0
    return lp.log_softmax(-1)


def test_aligned_layout_holds_phones_from_their_spike_known_answer():
    #        frame: 0  1  2  3  4  5  6  7  8  9 10 11
    lp = spiky([0, 0, 5, 0, 0, 7, 0, 0, 0, 5, 0, 0])
    out = aligned_layout(lp, torch.tensor([12]), torch.tensor([[5, 7, 5]]), torch.tensor([3]),
                         max_frames_per_phone=4)
    # 5 held to the next spike; 7 at most 4 frames (a pause follows); the last 5 to the end (3 frames)
    assert out[0].tolist() == [0, 0, 5, 5, 5, 7, 7, 7, 7, 5, 5, 5]
    assert aligned_layout(lp, torch.tensor([12]), torch.tensor([[5, 7, 5]]), torch.tensor([3]),
                          max_frames_per_phone=2)[0].tolist() == [0, 0, 5, 5, 0, 7, 7, 0, 0, 5, 5, 0]


def test_aligned_layout_follows_the_transcript_not_the_argmax():
    lp = spiky([0, 3, 0, 4, 0])  # the CTC head hears 3 4; the transcript says 6 4
    out = aligned_layout(lp, torch.tensor([5]), torch.tensor([[6, 4]]), torch.tensor([2]))
    tokens = [t for i, t in enumerate(out[0].tolist()) if t != SILENCE_ID and (i == 0 or out[0, i - 1] != t)]
    assert tokens == [6, 4] and out[0, 3].item() == 4  # 4 from its own spike; 3 never appears


def test_aligned_layout_unfittable_utterances_are_silence():
    lp = spiky([0, 5, 0]).expand(2, -1, -1)
    out = aligned_layout(lp, torch.tensor([3, 2]), torch.tensor([[5, 5, 5], [5, 0, 0]]), torch.tensor([3, 1]))
    assert out[0].tolist() == [SILENCE_ID] * 3  # 3 repeated phones need 5 frames
    assert out[1].tolist()[:2] == [SILENCE_ID, 5] and out[1, 2].item() == SILENCE_ID  # past its length


def test_held_phones_hold_each_spike_then_fall_silent_known_answer():
    #        frame: 0  1  2  3  4  5  6  7  8  9 10 11
    post = spiky([0, 5, 0, 0, 0, 0, 7, 7, 0, 3, 0, 0]).exp()
    held = held_phones(post, 3)
    # 5 held 3 frames in all, then silence; 7 spans two frames and is held 3 from its last one; 3 to the end
    assert held.argmax(-1)[0].tolist() == [0, 5, 5, 5, 0, 0, 7, 7, 7, 3, 3, 3]
    assert torch.equal(held, torch.nn.functional.one_hot(held.argmax(-1), post.shape[-1]).float())  # one-hot values
    assert held_phones(post, 1).argmax(-1).tolist() == post.argmax(-1).tolist()  # hold 1: the spikes as they are


def test_held_phones_pass_the_gradient_to_the_spike_they_hold_and_are_causal():
    logits = torch.randn(1, 10, 6, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    logits[0, :, SILENCE_ID] += 4.0  # blank everywhere, as CTC (a margin of 2+ over any other phone)
    logits[0, 2, 4] += 10.0  # one spike at frame 2
    logits.requires_grad_()
    held = held_phones(logits.softmax(-1), 3)
    held[0, 3, 4].backward()  # frame 3 holds frame 2's phone: its gradient goes to frame 2's posteriors
    grad = logits.grad[0].abs().sum(-1)
    assert grad[2] > 0 and grad[[0, 1, 3, 4, 5, 6, 7, 8, 9]].sum() == 0
    cut = held_phones(logits[:, :6].softmax(-1), 3)  # a frame depends only on the frames up to it (streaming)
    assert torch.allclose(cut, held[:, :6])
    with pytest.raises(ValueError, match="adapter.hold"):
        held_phones(logits.softmax(-1), 0)


def test_held_layout_known_answer_hold_frames_then_silence_to_the_next_phone():
    """The layout of a CTC encoder read through adapter.hold: phones `gap` frames apart, each held `hold` frames."""
    pf = fixed(hold=3, held_gaps=(0, 0, 0, 0, 1))  # every gap 5 frames
    ids, lens = pf.layout([[5, 7]], random.Random(0), train=False, held=True)
    assert ids[0, :lens[0]].tolist() == [SILENCE_ID, 5, 5, 5, SILENCE_ID, SILENCE_ID, 7, 7, 7, SILENCE_ID,
                                         SILENCE_ID, SILENCE_ID]
    short = fixed(hold=3, held_gaps=(1,))  # gap 1: phone after phone, nothing to hold
    assert short.layout([[5, 7, 9]], random.Random(0), train=False, held=True)[0][0].tolist() == [
        SILENCE_ID, 5, 7, 9, SILENCE_ID]


def test_held_share_picks_the_layout_per_sequence_only_in_training():
    pf = fixed(hold=1, held_gaps=(0, 1), held_share=0.5)  # held: phone + one silent frame; plain: phone twice
    rng = random.Random(0)
    ids, lens = pf.layout([[5, 7]] * 200, rng, train=True)
    held = sum(row[:n].tolist() == [SILENCE_ID, 5, SILENCE_ID, 7, SILENCE_ID, SILENCE_ID] for row, n in zip(ids, lens))
    plain = sum(row[:n].tolist() == [SILENCE_ID, 5, 5, 7, 7, SILENCE_ID] for row, n in zip(ids, lens))
    assert held + plain == 200 and 70 < held < 130
    ids, lens = pf.layout([[5, 7]] * 50, rng, train=False)  # validation reads the plain layout
    assert all(row[:n].tolist() == [SILENCE_ID, 5, 5, 7, 7, SILENCE_ID] for row, n in zip(ids, lens))
    # with held_share 0 no draw is spent on it (held=False never draws): layouts made before the option stay the same
    plain = fixed(frames_per_phone=(1, 5), pause_prob=0.3)
    a, _ = plain.layout([[5, 7, 9]] * 5, random.Random(3), train=True)
    b, _ = plain.layout([[5, 7, 9]] * 5, random.Random(3), train=True, held=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [{"held_share": 1.5}, {"hold": 0}, {"hold": 2.5}, {"hold": True}, {"held_gaps": ()},
                                 {"held_gaps": (1, -1)}, {"held_gaps": (0, 0)}])
def test_held_layout_config_errors_name_the_key(bad):
    with pytest.raises(ValueError, match=rf"phone_frames\.{next(iter(bad))} must"):
        PhoneFramesConfig(**bad)
