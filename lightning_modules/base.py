"""The one base LightningModule: builds the backbone, freezes by pattern, optimizes, skips bad
steps, validates/tests, and exports components. Each stage is a thin subclass (its own step)."""

from __future__ import annotations

import inspect
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from entropy_asr.assets import check_if_asset
from entropy_asr.errors import UserError
from entropy_asr.io import atomic_write_bytes, atomic_write_dir, atomic_write_json
from entropy_asr.metrics.error_rate import ErrorRates
from entropy_asr.model.encoder import EncoderConfig
from entropy_asr.model.export import CMVN_FILE, FILE_COMPONENTS, MODEL_FILE, load_component, save_component
from entropy_asr.model.llm import LLMConfig
from entropy_asr.model.params import (
    count_parameters,
    format_parameter_report,
    fully_frozen,
    set_trainable,
)
from entropy_asr.model.pseudo_speech import PhoneFramesConfig
from entropy_asr.model.speech_llm import (
    AdapterConfig,
    CTCHeadConfig,
    DecodeConfig,
    PromptConfig,
    SpeechLLM,
)
from lightning_modules.strategies import full_weights

log = logging.getLogger(__name__)

COMPONENTS = ("encoder", "ctc_head", "adapter", "llm", "phone_frames")
MODEL_FORMAT = 1


def plain(value):
    """`value` in JSON types: dataclasses as dicts, tuples as lists, anything else not JSON (a path) as its str."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _absolute(path: str | None) -> str | None:
    """A local path made absolute (a description is read from anywhere); anything else (a hub name, None) as is."""
    return str(Path(path).resolve()) if isinstance(path, str) and path and Path(path).exists() else path


def _collect_init_args(frame) -> dict:
    """The arguments the module's __init__ chain got (each class's own and its **kwargs), from the frame of
    SpeechLLMModule.__init__ outwards, as Lightning's save_hyperparameters collects them."""
    from lightning.pytorch.utilities.parsing import collect_init_args

    args: dict = {}
    for level in collect_init_args(frame, [], classes=(SpeechLLMModule,)):
        args.update(level)
    return args


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to min_lr_ratio * lr (docs/method.md: Adam, cosine, warm-up)."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.01
    # per component (encoder, ctc_head, adapter, llm, phone_frames): its lr = lr x this, e.g. {encoder: 10} when an
    # encoder that pretrained at a high lr trains beside an LLM that needs a small one (joint SFT)
    lr_scale: dict[str, float] | None = None

    def __post_init__(self):
        for name, scale in (self.lr_scale or {}).items():
            if name not in COMPONENTS:
                raise UserError(f"optim.lr_scale: unknown component {name!r}; use {list(COMPONENTS)}")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                    math.isfinite(scale) and scale > 0):
                raise UserError(f"optim.lr_scale.{name} must be a finite number > 0, got {scale!r}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise UserError(f"optim.lr must be a finite number > 0, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise UserError(f"optim.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if (not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas)
                or not (math.isfinite(self.eps) and self.eps > 0)):
            raise UserError(f"optim.betas must be two numbers in [0, 1) and optim.eps > 0, "
                            f"got {self.betas}, {self.eps}")
        if self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SpeechLLMModule(L.LightningModule):
    """Shared wiring of every stage; subclasses set `components`, `default_trainable` and `model_step`.

    Args:
        encoder / ctc_head / adapter / llm / prompt / phone_frames: component configs; a stage must
            get the components it uses (`components`, less `optional_components`), and gets an
            error naming any other.
        init: {component: export} to start from, e.g. {"encoder": ".../export/encoder.safetensors"}
            (the LLM starts from `llm.name_or_path`, which may be an exported LLM dir).
        trainable: glob patterns over parameter names (e.g. "adapter.*"); default: the stage's own.
        optim: AdamW + schedule. decode: generation for validation/test.
        max_bad_steps: stop after this many consecutive non-finite losses (each is skipped and counted).
        export_dir: where exports go; default <run dir>/export.
        compile: torch.compile each Conformer block and LLM decoder layer (GPU training; the first
            steps compile, and each new batch shape may recompile until shapes are marked dynamic).
    """

    components: tuple[str, ...] = ()
    optional_components: tuple[str, ...] = ()
    default_trainable: tuple[str, ...] = ()
    stage: str = "base"
    # init args only training reads, and the value decoding gives them (experiments/evaluate.py applies these)
    inference_overrides: ClassVar[dict[str, object]] = {}

    def __init__(
        self,
        encoder: EncoderConfig | None = None,
        ctc_head: CTCHeadConfig | None = None,
        adapter: AdapterConfig | None = None,
        llm: LLMConfig | None = None,
        prompt: PromptConfig | None = None,
        init: dict[str, str] | None = None,
        trainable: list[str] | None = None,
        optim: OptimConfig | None = None,
        decode: DecodeConfig | None = None,
        max_bad_steps: int = 20,
        export_dir: str | None = None,
        phone_frames: PhoneFramesConfig | None = None,
        compile: bool = False,
    ):
        init_args = _collect_init_args(inspect.currentframe())
        super().__init__()
        self._init_args = init_args  # as given; describe() writes them out
        given = {"encoder": encoder, "ctc_head": ctc_head, "adapter": adapter, "llm": llm, "phone_frames": phone_frames}
        extra = [c for c, v in given.items() if v is not None and c not in self.components]
        missing = [c for c in self.components if given[c] is None and c not in self.optional_components]
        if extra:
            raise UserError(f"{type(self).__name__} does not use model.{extra[0]}; remove it from the config "
                            f"(this stage uses {list(self.components)})")
        if missing:
            raise UserError(f"{type(self).__name__} needs model.{missing[0]}; add it to the config")
        unknown = sorted(set(init or {}) - set(COMPONENTS))
        if unknown:
            raise UserError(f"model.init has unknown component(s) {unknown}; use {list(COMPONENTS)}")
        if "llm" in (init or {}):
            raise UserError("model.init.llm: start the LLM from an exported dir with model.llm.name_or_path instead")
        if max_bad_steps < 1:
            raise UserError(f"model.max_bad_steps must be >= 1, got {max_bad_steps}")
        self.configs = {**given, "prompt": prompt or PromptConfig()}
        self.init_from = dict(init or {})
        self.trainable_patterns = list(trainable) if trainable is not None else list(self.default_trainable)
        if trainable is None and llm is not None and llm.lora:  # LoRA: the LLM trains through its adapters only
            self.trainable_patterns = ["llm.*lora_*" if p == "llm.*" else p for p in self.trainable_patterns]
        self.optim = optim or OptimConfig()
        self.decode = decode or DecodeConfig()
        self.max_bad_steps, self.export_dir_arg = max_bad_steps, export_dir
        self._compile_on_build = compile  # configure_model then calls self.net.compile_blocks()
        self.net: SpeechLLM | None = None
        self.bad_in_row = 0
        self.bad_total = 0
        self.val_rates = ErrorRates()
        self.test_rates = torch.nn.ModuleList()
        self.test_results: dict[str, dict[str, float]] = {}

    # ---- building --------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the backbone once, load its starting exports strictly, and apply the trainable patterns."""
        if self.net is not None:
            return
        c = self.configs
        for path in [c["llm"].name_or_path if c["llm"] else None, *self.init_from.values()]:
            check_if_asset(path)  # a shipped asset must match this code's data (AssetError says how to remake it)
        self.net = SpeechLLM(c["encoder"], c["ctc_head"], c["adapter"], c["llm"], c["prompt"], c["phone_frames"])
        for component, path in self.init_from.items():
            load_component(getattr(self.net, component), path, component)
            log.info("%s: loaded %s from %s", self.stage, component, path)
        set_trainable(self.net, self.trainable_patterns, where="model.trainable")
        if self._compile_on_build:  # per block, in place: checkpoints and exports keep their keys
            self.net.compile_blocks()
        self.train(self.training)  # re-apply eval mode to frozen components
        # counted now, before FSDP shards the weights (each rank would count its own shard)
        self._param_report = format_parameter_report(count_parameters(self.net))

    def train(self, mode: bool = True):
        """Frozen components stay in eval mode (no dropout, no norm-statistics updates)."""
        super().train(mode)
        if mode and self.net is not None:
            for name in COMPONENTS:
                module = getattr(self.net, name)
                if module is not None and fully_frozen(module):
                    module.eval()
        return self

    def on_fit_start(self) -> None:
        report = getattr(self, "_param_report", None) or format_parameter_report(count_parameters(self.net))
        self.print(f"[{self.stage}] parameters (trainable / total):\n{report}")
        for name, source in self.init_from.items():
            self.print(f"[{self.stage}] {name} <- {source}")

    def configure_optimizers(self):
        o = self.optim
        scale = o.lr_scale or {}
        lrs: dict[float, tuple[list, list]] = {}  # lr -> (params with weight decay, biases and norm gains without)
        for name, p in self.net.named_parameters():
            if p.requires_grad:  # frozen ones never reach AdamW
                decay, no_decay = lrs.setdefault(o.lr * scale.get(name.split(".", 1)[0], 1.0), ([], []))
                (decay if p.ndim >= 2 else no_decay).append(p)
        if not lrs:
            raise UserError(f"{self.stage}: nothing trains; model.trainable = {self.trainable_patterns}")
        opt = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd}
                                 for lr, (decay, no_decay) in lrs.items()
                                 for ps, wd in ((decay, o.weight_decay), (no_decay, 0.0))],
                                lr=o.lr, betas=o.betas, eps=o.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, min(o.warmup_steps, total // 2), total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- steps -----------------------------------------------------------------------------
    def model_step(self, batch: dict) -> torch.Tensor:
        """The stage's training loss for one batch."""
        raise NotImplementedError

    def batch_size(self, batch: dict) -> int:
        return len(batch["text"])

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.model_step(batch)
        finite = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1:  # every rank skips together, or DDP would wait on a missing backward
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        self._skipped = finite.item() < 1  # the same on every rank
        if self._skipped:
            self._bad_batch("loss")
            return None  # (no backward, no optimizer step; a good step resets the streak in on_before_optimizer_step)
        bs = self.batch_size(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/skipped_batches", float(self.bad_total), batch_size=bs)
        return loss

    def _bad_batch(self, what: str) -> None:
        """Count a skipped batch (a NaN/inf loss or gradient); stop after max_bad_steps in a row."""
        self.bad_in_row += 1
        self.bad_total += 1
        log.warning("%s: non-finite %s at step %d; batch skipped (%d in a row, %d in all)",
                    self.stage, what, self.global_step, self.bad_in_row, self.bad_total)
        if self.bad_in_row >= self.max_bad_steps:
            raise RuntimeError(
                f"{self.stage}: {self.bad_in_row} consecutive batches had a NaN/inf loss or gradient (last at step "
                f"{self.global_step}); training stopped. Lower optim.lr, raise optim.warmup_steps, check the "
                f"data, or try trainer.precision=32 / gradient_clip_val")

    def on_before_optimizer_step(self, optimizer) -> None:
        # a finite loss can still give NaN/inf gradients: then no update at all (the weights stay finite)
        if getattr(self, "_skipped", False):  # a skipped batch (its loss was not finite): counted in training_step
            return
        # one fused norm over all gradients (inf/NaN if any element is), one device sync; under FSDP a rank may
        # hold no gradient at all (its shard of the trainable weights is empty) and must still take part below
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        finite = (torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)).float() if grads
                  else torch.ones((), device=self.device))
        if self.trainer.world_size > 1:  # (DDP has averaged them: the same everywhere; FSDP shards: agree)
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if finite.item() < 1:
            for p in self.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: this step changes nothing
            self._bad_batch("gradient")
        else:
            self.bad_in_row = 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.model_step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=self.batch_size(batch), sync_dist=True)
        self.evaluate_batch(batch, self.val_rates)

    def on_validation_epoch_end(self) -> None:
        self._log_rates(self.val_rates, "val")

    def evaluate_batch(self, batch: dict, rates) -> None:
        """Decode a batch and add it to `rates` (stage-specific; default: generated transcripts, with the batch's
        hotword lists in the prompts where it has them)."""
        hyps = self.net.transcribe(batch["feats"], batch["feat_lens"], batch["durations"].tolist(), self.decode,
                                   batch.get("hotwords"))
        rates.update(hyps, batch["text"], batch["language"])

    def _log_rates(self, rates, prefix: str) -> dict[str, float]:
        if not rates.update_called:
            return {}
        values = {k: float(v) for k, v in rates.compute().items()}
        for k, v in values.items():
            # compute() already reduced across ranks (torchmetrics), so no sync_dist here
            self.log(f"{prefix}/{k}", v, prog_bar=k.startswith(("cer", "wer", "per")), sync_dist=False)
        rates.reset()
        return values

    def on_test_start(self) -> None:
        n = len(self.trainer.test_dataloaders) if isinstance(self.trainer.test_dataloaders, list) else 1
        self.test_rates = torch.nn.ModuleList([type(self.val_rates)() for _ in range(n)]).to(self.device)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate_batch(batch, self.test_rates[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        names = self.test_set_names()
        for i, rates in enumerate(self.test_rates):
            self.test_results[names[i]] = self._log_rates(rates, f"test/{names[i]}")

    def test_set_names(self) -> list[str]:
        dirs = getattr(self.trainer.datamodule, "test_dirs", None) or []
        names = [Path(d).name for d in dirs]
        return names if len(names) == len(self.test_rates) else [f"test{i}" for i in range(len(self.test_rates))]

    # ---- resume state ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the random generators too (dropout, chunk sizes, ...): a resumed run draws what an uninterrupted one would
        # (the data stream has its own seeds: datamodules.speech.TrainLoader); tensors and ints only (weights_only)
        rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["entropy_asr"] = {"bad_total": self.bad_total, "bad_in_row": self.bad_in_row, "rng": rng}
        # what decoding needs besides the weights, so that the checkpoint alone can be evaluated (JSON types only)
        checkpoint["entropy_asr"]["model"] = self.describe()
        cmvn = self.cmvn_file()
        if cmvn is not None and cmvn.is_file():
            checkpoint["entropy_asr"]["cmvn"] = cmvn.read_text()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:  # SafeCheckpoint never writes one; this came from elsewhere
            ckpts = Path(self.trainer.default_root_dir) / "checkpoints"
            found = ", ".join(sorted(p.name for p in ckpts.glob("*.ckpt"))) or "none"
            raise UserError(f"{self.stage}: the checkpoint to resume from holds NaN/inf weights ({bad[:3]}); resume "
                            f"from another with --ckpt_path PATH (in {ckpts}: {found}; last.ckpt is the newest good "
                            f"one a run of this project wrote)")
        state = checkpoint.get("entropy_asr", {})
        self.bad_total, self.bad_in_row = state.get("bad_total", 0), state.get("bad_in_row", 0)
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate((3, tuple(rng["python"]), None))
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ---- exports ---------------------------------------------------------------------------
    @property
    def export_dir(self) -> Path:
        if self.export_dir_arg:
            return Path(self.export_dir_arg)
        return Path(self.trainer.default_root_dir) / "export"

    def exported_components(self) -> list[str]:
        """Components this stage writes: the ones that trained, and the frozen ones the adapter reads through
        (adapter.input phone_posteriors: the CTC head and phone table; adapter.max_silence: the CTC head), so the
        export is a whole model."""
        through = (("ctc_head",) if getattr(self.net, "adapter_reads_ctc_head", False) else ()) + \
            (("phone_frames",) if getattr(self.net, "reads_posteriors", False) else ())
        return [c for c in COMPONENTS if getattr(self.net, c) is not None
                and (c in through or not fully_frozen(getattr(self.net, c)))]

    def export_meta(self, component: str) -> dict:
        """What an export records besides its weights: the stage, the step and the component's config."""
        cfg = self.configs[component]
        return {"stage": self.stage, "step": int(self.global_step), "config": asdict(cfg) if cfg else {}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping also under FSDP (Lightning's FSDP precision refuses it): the root's clip_grad_norm_."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = self.trainer.strategy.model
        if isinstance(root, FSDP) and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            root.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_end(self) -> None:
        from callbacks.checkpoint import finite_on_all_ranks

        if not finite_on_all_ranks(self.trainer, self):
            raise RuntimeError(f"{self.stage}: the weights hold NaN/inf at step {self.global_step}; nothing exported. "
                               "Resume from the last good checkpoint in "
                               f"{Path(self.trainer.default_root_dir) / 'checkpoints'}")
        with full_weights(self):  # every rank enters (FSDP gathers); rank zero writes
            self.export(self.export_dir, final=True)

    @rank_zero_only
    def export(self, out: str | Path, components: list[str] | None = None, final: bool = False) -> dict[str, str]:
        """Write each component (safetensors; the LLM as a Hugging Face dir with its tokenizer)."""
        out = Path(out)
        written = {}
        for c in components or self.exported_components():
            module = getattr(self.net, c)
            if c in FILE_COMPONENTS:
                written[c] = str(save_component(module, out / f"{c}.safetensors", c, self.export_meta(c)))
            else:
                written[c] = str(self._export_llm(out / "llm", final))
        self.write_description(out)
        self.print(f"[{self.stage}] exported {sorted(written)} to {out}")
        return written

    # ---- self-description ------------------------------------------------------------------
    @classmethod
    def init_arg_names(cls) -> set[str]:
        """The init args the class takes: each __init__'s own along the chain that passes **kwargs on."""
        names: set[str] = set()
        for c in cls.__mro__:
            if "__init__" not in vars(c):
                continue
            params = list(inspect.signature(c.__init__).parameters.values())[1:]  # (less self)
            names |= {q.name for q in params if q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)}
            if not any(q.kind == q.VAR_KEYWORD for q in params):
                break
        return names

    @classmethod
    def decoding_overrides(cls) -> dict[str, object]:
        """{init arg: value} to build the class with for decoding: its training-only args turned off."""
        return {k: v for k, v in cls.inference_overrides.items() if k in cls.init_arg_names()}

    def describe(self, export: str | Path | None = None) -> dict:
        """What rebuilds this module for decoding, in JSON types: its class and stage, its init args as resolved
        (configs with their defaults, local paths absolute; with `export`, the components exported there point into
        it, relative to it, and `exported` lists them) and the data settings the run read its evaluation sets with."""
        args = plain(getattr(self, "_init_args", {}))
        args.pop("export_dir", None)  # where this run wrote, not what the model is
        init = {c: _absolute(path) for c, path in (args.get("init") or {}).items()}
        llm = args.get("llm")
        if llm:
            llm.update(name_or_path=_absolute(llm.get("name_or_path")), tokenizer=_absolute(llm.get("tokenizer")))
        if (args.get("ctc_head") or {}).get("inventory"):
            args["ctc_head"]["inventory"] = _absolute(args["ctc_head"]["inventory"])
        out = {"format": MODEL_FORMAT, "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
               "stage": self.stage, "init_args": args}
        if export is not None:
            export, exported = Path(export), []
            for c in FILE_COMPONENTS:
                if (export / f"{c}.safetensors").is_file():
                    init[c] = f"{c}.safetensors"
                    exported.append(c)
            if llm and (export / "llm").is_dir():
                llm["name_or_path"] = "llm"
                exported.append("llm")
            out["exported"] = exported
        args["init"] = init
        dm = self._datamodule()
        if getattr(dm, "batch", None) is not None:
            out["data"] = {"batch": plain(dm.batch), "num_workers": int(getattr(dm, "num_workers", 0))}
        # trained with hotword lists in its prompts (data.context), here or in the stage its LLM came from:
        # the Recognizer then puts the hotwords it retrieves into the prompt
        out["hotword_prompts"] = bool(getattr(dm, "context", None) is not None or self._llm_saw_hotwords())
        return out

    def _llm_saw_hotwords(self) -> bool:
        """Whether the export the LLM starts from (llm.name_or_path/../model.json) was trained with hotword prompts."""
        llm = self.configs.get("llm")
        source = Path(llm.name_or_path) if llm is not None and llm.name_or_path else None
        meta = source.parent / MODEL_FILE if source is not None else None
        if meta is None or not meta.is_file():
            return False
        try:
            return bool(json.loads(meta.read_text()).get("hotword_prompts", False))
        except (OSError, ValueError):
            return False

    def cmvn_file(self) -> Path | None:
        """The cmvn.json the trainer's datamodule normalizes features with (None without speech data)."""
        dm = self._datamodule()
        return dm.cmvn_file() if hasattr(dm, "cmvn_file") else None

    def _datamodule(self):
        return getattr(getattr(self, "_trainer", None), "datamodule", None)

    def write_description(self, out: str | Path) -> None:
        """Beside the exports in `out`: cmvn.json (a copy of the run's CMVN statistics), then model.json (describe):
        with them the export dir alone decodes (experiments/evaluate.py --checkpoint EXPORT_DIR)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cmvn = self.cmvn_file()
        if cmvn is not None and cmvn.is_file():
            atomic_write_bytes(out / CMVN_FILE, cmvn.read_bytes())
        elif cmvn is not None:
            log.warning("%s: the run's CMVN statistics %s are missing; %s has no %s (evaluate it with --cmvn)",
                        self.stage, cmvn, out, CMVN_FILE)
        atomic_write_json(out / MODEL_FILE, self.describe(out))

    def _export_llm(self, path: Path, final: bool) -> Path:
        """The LLM as a Hugging Face dir with its tokenizer (what `llm.name_or_path` loads).

        With LoRA, the adapter alone goes to llm_lora/; at the end of training (final) the
        adapter is also merged into the weights, in place, and the merged model goes to llm/.
        """
        if hasattr(self.net.llm, "merge_and_unload"):  # a peft model
            lora = self._save_dir(path.with_name("llm_lora"), self.net.llm.save_pretrained)
            if not final:
                return lora
            self.net.llm = self.net.llm.merge_and_unload()
        return self._save_dir(path, self.net.llm.save_pretrained)

    def _save_dir(self, path: Path, save) -> Path:
        """save(tmp) into a temp dir, then swap it in (a reader never sees a half-written dir)."""
        def write(tmp: Path) -> None:
            save(tmp, safe_serialization=True)
            self.net.tokenizer.save_pretrained(tmp)

        return atomic_write_dir(path, write)
