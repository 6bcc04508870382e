"""Accessible-information probe: PAI and CSAI of the encoder, H0/H1 of the LLM, on a schedule.

On a fixed probe set (the first `probe_batches` validation batches), before the first step, every
`every_n_steps` and at the end of training, in eval mode:

- PAI (bits per frame) and CSAI (bits per character/word) of the encoder output frames
  (entropy_asr/metrics/probe.py), and the NSE of the same frames. PAI's label space is the phone
  classes that occur in the probe set. Both probes overfit on small probe sets, which biases
  PAI and, more, CSAI low (negative CSAI = overfitting, not information): `csai_train_units`
  says how many unit occurrences the CSAI probes fit on; aim for thousands. Frame labels come from
  a CTC forced alignment of the transcript's phones, with the module's own encoder and CTC head, or
  with a fixed `aligner` ({encoder, ctc_head} exports, e.g. a pretraining snapshot) for stages that
  have no head of their own, or whose head would not follow the encoder (IA-SFT swaps, joint SFT
  trains it).
  Utterances with index % test_every == test_every - 1 are held out: the probes fit on the rest.
- H0, H1, I = H0 - H1 (bits per character), the share resolved and the per-token predictive
  entropy of the transcript under the LLM (entropy_asr/metrics/llm_info.py), for stages with an
  adapter and an LLM.

Under DDP every rank probes its own part of the validation data: H0/H1 are summed over the ranks
(a torchmetrics Metric), PAI and CSAI are rank zero's probes on rank zero's part.

Logged as ai/<name> to the trainer's loggers (W&B, metrics.csv), appended to
<run dir>/accessible_information.jsonl, one line per check, and plotted to the .png beside it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.common import (
    MeasuredCallback,
    append_jsonl,
    evenly_spaced,
    first_validation_batches,
    log_to_loggers,
    measured,
)
from entropy_asr.errors import UserError
from entropy_asr.io import read_jsonl_log
from entropy_asr.metrics import (
    TranscriptInformation,
    accessible_information,
    frame_phone_positions,
    semantic_accessible_information,
    spectral_summary,
    unit_rows,
)
from entropy_asr.model.export import load_component
from entropy_asr.model.heads import CTCHead
from entropy_asr.model.prompt import transcript_scores
from entropy_asr.plots import plot_series
from entropy_asr.text.inventory import PHONES, phones_to_ids
from entropy_asr.text.phonemizer import Phonemizer
from lightning_modules.strategies import gathered

PROBE_FIELDS = ("feats", "feat_lens", "phones", "phone_lens", "text", "language")


class AccessibleInformationProbe(MeasuredCallback):
    """Log ai/pai_bits, ai/csai_bits (encoder) and ai/h0_bits_per_char, ai/h1_bits_per_char, ... (LLM).

    Args:
        every_n_steps: check interval in optimizer steps (also before the first step and at the end).
        probe_batches: validation batches that form the fixed probe set.
        at_start: check before the first step (the "before" of a stage).
        aligner: {"encoder": path, "ctc_head": path}: exports that label the frames instead of the
            module's own encoder and CTC head (the encoder architecture is the module's; it is a
            second copy of the encoder on the device, frozen).
        max_frames: PAI frames kept per split (evenly spaced).
        test_every: every test_every-th utterance is held out for the probes' cross-entropies.
        max_classes: CSAI unit classes (the most frequent units; the rest share one class).
        l2, max_iter: the probes' L2 penalty and L-BFGS iterations.
        encoder_metrics, llm_metrics: turn either half off.
    """

    def __init__(self, every_n_steps: int = 2000, probe_batches: int = 8, at_start: bool = True,
                 aligner: dict[str, str] | None = None, max_frames: int = 8192, test_every: int = 4,
                 max_classes: int = 128, l2: float = 1e-3, max_iter: int = 50, encoder_metrics: bool = True,
                 llm_metrics: bool = True):
        if every_n_steps < 1 or probe_batches < 1 or test_every < 2 or max_frames < 2:
            raise UserError(f"AccessibleInformationProbe: every_n_steps, probe_batches must be >= 1, test_every >= 2"
                            f" and max_frames >= 2, got {every_n_steps}, {probe_batches}, {test_every}, {max_frames}")
        if aligner is not None and set(aligner) != {"encoder", "ctc_head"}:
            raise UserError(f"AccessibleInformationProbe.aligner: give exactly {{encoder: PATH, ctc_head: PATH}}, "
                            f"got keys {sorted(aligner)}")
        self.every_n_steps, self.probe_batches, self.at_start = every_n_steps, probe_batches, at_start
        self.aligner_paths, self.max_frames, self.test_every = aligner, max_frames, test_every
        self.max_classes, self.probe_kw = max_classes, {"l2": l2, "max_iter": max_iter}
        self.encoder_metrics, self.llm_metrics = encoder_metrics, llm_metrics
        self.last_check = -1
        self._probe: list | None = None
        self._aligner: tuple | None = None
        self._positions: dict[int, torch.Tensor] = {}  # per probe batch, when the aligner is fixed
        self._units: dict[int, list | None] = {}  # per probe utterance
        self._phonemizer = Phonemizer()

    # ---- setup -------------------------------------------------------------------------------
    @measured
    def on_fit_start(self, trainer, pl_module) -> None:
        net = pl_module.net
        if self.encoder_metrics:
            if net.encoder is None:
                raise UserError("AccessibleInformationProbe: PAI/CSAI probe the encoder, and this stage has none; "
                                "set encoder_metrics: false")
            if self.aligner_paths is None and net.ctc_head is None:
                raise UserError(f"AccessibleInformationProbe: {type(pl_module).__name__} has no CTC head to label "
                                "frames with; set aligner: {encoder: .../encoder.safetensors, ctc_head: "
                                ".../ctc_head.safetensors} (a pretraining export or snapshot) or encoder_metrics: "
                                "false")
        if self.llm_metrics and (net.adapter is None or net.llm is None):
            self.llm_metrics = False  # a stage without an LLM (pretraining) has no H0/H1 to measure
        if self.encoder_metrics:  # fail before training, not at its end
            utterances = sum(len(batch[4]) for batch in self.probe_set(trainer))
            if utterances < self.test_every:
                raise UserError(f"AccessibleInformationProbe: the probe set ({self.probe_batches} validation batches) "
                                f"has {utterances} utterance(s), too few to hold out every {self.test_every}th; raise "
                                f"probe_batches or lower test_every")
        if self.aligner_paths is not None and self.encoder_metrics:
            encoder = copy.deepcopy(net.encoder)
            load_component(encoder, self.aligner_paths["encoder"], "encoder")
            head = CTCHead(encoder.output_dim, len(PHONES)).to(pl_module.device)
            load_component(head, self.aligner_paths["ctc_head"], "ctc_head")
            self._aligner = (encoder.requires_grad_(False).eval(), head.requires_grad_(False).eval())

    def probe_set(self, trainer) -> list[tuple]:
        if self._probe is None:
            self._probe = first_validation_batches(trainer, self.probe_batches, "AccessibleInformationProbe",
                                                   PROBE_FIELDS)
        return self._probe

    # ---- hooks -------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start and trainer.global_step == 0:
            self.check(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    @measured
    def check(self, trainer, pl_module) -> dict[str, float] | None:
        step = trainer.global_step
        if step == self.last_check:
            return None
        self.last_check = step
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), gathered(trainer):  # FSDP: the full weights on every rank while it runs
            out = self.measure(pl_module)
        pl_module.train(was_training)
        log_to_loggers(trainer, {f"ai/{k}": v for k, v in out.items()}, step)
        self._append(trainer, {"step": step, **out})
        pl_module.print(f"[ai] step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()
                                                          if k in ("pai_bits", "csai_bits", "h0_bits_per_char",
                                                                   "h1_bits_per_char")))
        return out

    # ---- measuring ---------------------------------------------------------------------------
    def measure(self, pl_module) -> dict[str, float]:
        """One check: the probe set through the model once (the loop), then each metric from what it collected."""
        net, device = pl_module.net, pl_module.device
        info = TranscriptInformation().to(device) if self.llm_metrics else None
        split: dict[bool, dict[str, list]] = {s: {"frames": [], "labels": [], "units": [], "prons": [], "x": []}
                                              for s in (False, True)}
        skipped = utt = 0
        for i, (feats, lens, phones, phone_lens, texts, langs) in enumerate(self.probe_set(pl_module.trainer)):
            feats, lens = feats.to(device), lens.to(device)
            frames, frame_lens = net.encode(feats, lens)  # (B, T', D)
            if self.encoder_metrics:
                skipped += self._collect_frames(net, i, utt, split, feats, lens, frames, frame_lens, phones,
                                                phone_lens, texts, langs)
            if info is not None:
                self._collect_transcripts(net, info, frames, frame_lens, texts)
            utt += len(texts)
        out: dict[str, float] = {}
        if self.encoder_metrics:
            out.update(self.pai(split[False], split[True], device))
            out.update(self.csai(split[False], split[True], device))
            if skipped:
                out["csai_skipped_utterances"] = float(skipped)
        if info is not None and info.chars > 0:
            out.update(self.llm_information(info))
        return out

    def _collect_frames(self, net, i: int, utt: int, split: dict[bool, dict[str, list]], feats, lens, frames,
                        frame_lens, phones, phone_lens, texts, langs) -> int:
        """Add probe batch i's frames, frame labels and unit rows to the training or held-out split (utterance
        utt + b is held out when (utt + b) % test_every == test_every - 1); returns the utterances without units."""
        skipped = 0
        pos = self.positions(net, i, feats, lens, frames, frame_lens, phones, phone_lens)
        ids = phones.gather(1, pos.clamp(0, phones.shape[1] - 1)).where(pos >= 0, 0)  # (B, T'), 0 = silence
        frames_cpu = frames.double().cpu()
        for b in range(len(texts)):
            held_out = (utt + b) % self.test_every == self.test_every - 1
            s = split[held_out]
            n = int(frame_lens[b])
            s["frames"].append(frames_cpu[b, :n])
            s["labels"].append(ids[b, :n])
            units = self.units(utt + b, texts[b], langs[b], phones[b, : int(phone_lens[b])])
            if units is None:
                skipped += 1  # the shard's phones came from another front-end version
                continue
            x, labels, prons = unit_rows(frames_cpu[b:b + 1], pos[b:b + 1], [units])
            s["x"].append(x)
            s["units"] += labels
            s["prons"] += prons
        return skipped

    @staticmethod
    def _collect_transcripts(net, info: TranscriptInformation, frames, frame_lens, texts) -> None:
        """Add the batch's transcripts' scores under the LLM, without and with the audio, to `info`."""
        texts_ok = [i for i, t in enumerate(texts) if t.strip()]  # non-speech has nothing to score
        if not texts_ok:
            return
        keep = torch.tensor(texts_ok, device=frames.device)
        speech, speech_lens = net.adapt(frames[keep], frame_lens[keep])  # (b, N, H)
        chosen = [texts[i] for i in texts_ok]
        embed = net.llm.get_input_embeddings()
        without = transcript_scores(net.llm, net.prompt, embed, None, None, chosen)
        with_audio = transcript_scores(net.llm, net.prompt, embed, speech.to(net.llm.dtype), speech_lens, chosen)
        info.update(without["nll"], with_audio["nll"], chosen, with_audio["entropy"], with_audio["tokens"])

    def pai(self, train: dict[str, list], test: dict[str, list], device) -> dict[str, float]:
        """PAI (bits per frame) of the frames' phone labels, and the NSE of the same frames."""
        xtr, ytr = evenly_spaced(torch.cat(train["frames"]), self.max_frames), evenly_spaced(
            torch.cat(train["labels"]), self.max_frames)
        xte, yte = evenly_spaced(torch.cat(test["frames"]), self.max_frames), evenly_spaced(
            torch.cat(test["labels"]), self.max_frames)
        # the label space: the phone classes that occur in the probe set (the others cost time, not information)
        _, y = torch.unique(torch.cat([ytr, yte]), return_inverse=True)
        ytr, yte = y[: len(ytr)], y[len(ytr):]
        xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))  # the probes fit on the model's device
        pai = accessible_information(xtr, ytr, xte, yte, int(y.max()) + 1, **self.probe_kw)
        spectrum = spectral_summary(torch.cat([xtr, xte]))  # the same frames' NSE: free here
        return {"pai_bits": pai["ai_bits"], "h_phone_bits": pai["h_bits"], "phone_probe_ce_bits": pai["probe_ce_bits"],
                "nse_encoder": spectrum["nse"], "erank_encoder": spectrum["effective_rank"]}

    def csai(self, train: dict[str, list], test: dict[str, list], device) -> dict[str, float]:
        """CSAI (bits per character/word) of the unit rows; nothing when either split has no units."""
        if not (train["units"] and test["units"]):
            return {}
        csai = semantic_accessible_information(torch.cat(train["x"]).to(device), train["units"], train["prons"],
                                               torch.cat(test["x"]).to(device), test["units"], test["prons"],
                                               max_classes=self.max_classes, **self.probe_kw)
        return {"csai_bits": csai["csai_bits"], "csai_se_bits": csai["csai_se_bits"], "h_unit_bits": csai["h_bits"],
                "unit_given_phones_bits": csai["phone_ce_bits"], "csai_train_units": float(len(train["units"]))}

    @staticmethod
    def llm_information(info: TranscriptInformation) -> dict[str, float]:
        """H0, H1, I = H0 - H1 (bits per character) and the rest of TranscriptInformation, over the probe set."""
        return {k: float(v) for k, v in info.compute().items()}

    def positions(self, net, i: int, feats, lens, frames, frame_lens, phones, phone_lens) -> torch.Tensor:
        """(B, T') transcript phone index per frame (-1 = silence) of probe batch i; a fixed aligner's are cached."""
        if self._aligner is not None and i in self._positions:
            return self._positions[i]
        encoder, head = self._aligner or (net.encoder, net.ctc_head)
        align_frames = frames if self._aligner is None else encoder(feats, lens)[0]
        log_probs = torch.log_softmax(head(align_frames).float(), -1)  # (B, T', V)
        pos = frame_phone_positions(log_probs, frame_lens, phones, phone_lens)  # (B, T')
        if self._aligner is not None:
            self._positions[i] = pos
        return pos

    def units(self, i: int, text: str, language: str, phones: torch.Tensor) -> list | None:
        """Utterance i's (unit, phones) list, None when they do not join up to its phones; cached."""
        if i not in self._units:
            units = self._phonemizer.units(text, language) if language != "none" else []
            ok = phones_to_ids(p for _, ph in units for p in ph) == phones.tolist()
            self._units[i] = units if ok else None
        return self._units[i]

    @rank_zero_only
    def _append(self, trainer, entry: dict) -> None:
        path = append_jsonl(Path(trainer.default_root_dir) / "accessible_information.jsonl", entry)
        plot_series(read_jsonl_log(path), ["pai_bits", "csai_bits", "h0_bits_per_char", "h1_bits_per_char",
                                       "share_resolved"], path.with_suffix(".png"), "accessible information",
                    errors={"csai_bits": "csai_se_bits"},
                    below_zero={"csai_bits": "< 0: the probe with frames overfit its few training units; read as 0"})

    # ---- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"last_check": self.last_check}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_check = state_dict.get("last_check", -1)
