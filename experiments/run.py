"""The project's entry point, on LightningCLI: `python experiments/run.py --config experiments/<stage>.yaml`.

Any config key can be overridden on the command line (`--trainer.devices 8`,
`--trainer.precision bf16-mixed`, `--model.init_args.optim.lr 1e-4`). OmegaConf interpolation works in
the YAML and is resolved after the overrides: a config names the outputs of earlier stages as
`${vars.runs}/<stage>/export/...`, so `--vars.runs DIR` moves them all. One run: fit (resuming from
`--ckpt_path last` or a path), export the trained components, test on the datamodule's test sets, and
write results.json into --run_dir, next to the resolved config (config.yaml), the checkpoints and the
logs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from callbacks.checkpoint import SafeCheckpoint, verify_checkpoint
from callbacks.common import MeasuredCallback
from callbacks.hot_swap import EncoderHotSwap, ProducerStatus
from callbacks.progress import LineProgress
from callbacks.thread_share import ThreadShare
from entropy_asr.errors import UserError, run_main
from entropy_asr.io import atomic_write_bytes, atomic_write_json


class EntropyCLI(LightningCLI):
    """LightningCLI plus --run_dir (logs, checkpoints, exports, results), checkpointing defaults and --test."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str, required=True,
                            help="directory of this run: config.yaml, checkpoints/, export/, logs, results.json")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this Lightning checkpoint; 'last' = run_dir/checkpoints/last.ckpt")
        parser.add_argument("--test", type=bool, default=True, help="test after training (if the data has test sets)")
        parser.add_argument("--wandb", type=Literal["offline", "online", "disabled"] | None, default=None,
                            help="Weights & Biases mode beside metrics.csv: offline (the default; no account, "
                                 "`wandb sync` later), online, or disabled; unset = $WANDB_MODE, else offline")
        parser.add_argument("--wandb_project", type=str, default="entropy-asr", help="W&B project")
        parser.add_argument("--vars", type=dict[str, str], default={},
                            help="named values the config uses as ${vars.NAME} (resolved after every config and "
                                 "override is read): e.g. --vars.runs DIR moves a tiny stage and the earlier stages "
                                 "it reads from")
        parser.add_argument("--threads_file", type=str | None, default=None,
                            help="follow the CPU thread budget written in this file (callbacks.ThreadShare): set by "
                                 "experiments/pipeline.py for a stage running beside others; not kept in config.yaml")
        parser.add_lightning_class_args(SafeCheckpoint, "checkpoint")  # finite states only, each with a checksum
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.every_n_train_steps": 500, "checkpoint.enable_version_counter": False})
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments("run_dir", "checkpoint.dirpath", compute_fn=lambda d: str(Path(d) / "checkpoints"))

    def instantiate_trainer(self, **kwargs):
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True):  # default: metrics.csv straight in the run dir, and W&B
            kwargs["logger"] = default_loggers(self._get(self.config, "run_dir"), self._get(self.config, "wandb"),
                                               self._get(self.config, "wandb_project"),
                                               resume=bool(self._get(self.config, "ckpt_path")))
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        given = trainer.get("callbacks") or []
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            # a bar on a terminal; in a log file (or a pipeline's background stage) a line every 30 s
            callbacks.append(TQDMProgressBar() if sys.stdout.isatty() else LineProgress())
        return self._instantiate_trainer({**trainer, **kwargs}, callbacks)


class _KeepingWriter(ExperimentWriter):
    """metrics.csv that is never deleted: a resumed run keeps the rows before its checkpoint and appends; a fresh
    run in a dir that holds one moves it aside (metrics-<time>.csv) first."""

    def __init__(self, log_dir: str, resume: bool):
        path = Path(log_dir) / self.NAME_METRICS_FILE
        self._kept: list[dict] | None = None
        if path.is_file():
            if resume:
                with path.open(newline="") as f:
                    self._kept = list(csv.DictReader(f))
            else:
                aside = path.with_name(f"metrics-{time.strftime('%Y%m%d-%H%M%S', time.localtime(path.stat().st_mtime))}"
                                       ".csv")
                path.replace(aside)
                logging.getLogger(__name__).info("%s: a fresh run; the earlier metrics.csv is kept as %s", log_dir,
                                                 aside.name)
        super().__init__(log_dir)  # (deletes metrics.csv if it exists: it was read or moved aside above)

    def save(self) -> None:
        if self._kept is not None and self.metrics:
            # the resumed run redoes the steps from its first logged one on: the killed run's rows from there go
            first = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._kept if r.get("step") not in (None, "") and int(float(r["step"])) < first]
            self.metrics_keys = sorted(set().union(*self._kept, *self.metrics))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_bytes(Path(self.metrics_file_path), buf.getvalue().encode())
            self._kept = None
        super().save()


class RunCSVLogger(CSVLogger):
    """CSVLogger writing run_dir/metrics.csv that keeps what earlier runs logged (see _KeepingWriter)."""

    def __init__(self, run_dir: str, resume: bool = False):
        super().__init__(run_dir, name="", version="")
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._resume)
        return self._experiment


def default_loggers(run_dir: str, wandb_mode: str | None, project: str, resume: bool = False) -> list:
    """CSVLogger (run_dir/metrics.csv) and, unless disabled, a WandbLogger writing under run_dir/wandb.

    The mode is `wandb_mode`, else $WANDB_MODE, else offline: no account or network needed, and
    `wandb sync run_dir/wandb/offline-run-*` uploads the run later. Online needs `wandb login`
    (or WANDB_API_KEY). Runs of one pipeline share the W&B group $WANDB_RUN_GROUP.
    """
    mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    if mode not in ("offline", "online", "disabled", "dryrun", "run"):
        raise UserError(f"W&B mode {mode!r} (from --wandb or $WANDB_MODE): use offline, online or disabled")
    # metrics.csv is kept (RunCSVLogger), whatever Lightning's warning about the dir says
    here = re.escape(str(run_dir).rstrip("/"))
    warnings.filterwarnings("ignore", message=rf"Experiment logs directory {here}/? exists")
    loggers = [RunCSVLogger(run_dir, resume=resume)]
    if mode != "disabled":
        name = Path(run_dir).name
        import wandb

        # quiet: no run summary wall at the end of every stage (the numbers are in results.json and metrics.csv)
        loggers.append(WandbLogger(save_dir=run_dir, project=project, name=name, offline=mode in ("offline", "dryrun"),
                                   group=os.environ.get("WANDB_RUN_GROUP"), settings=wandb.Settings(quiet=True)))
    return loggers


# Lightning's start-up chatter that says nothing about this run (the hardware is in results.json's run)
_QUIET_PREFIXES = ("GPU available", "TPU available", "HPU available", "💡 Tip", "You are using a CUDA device")
_QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)", r"The '\w+_dataloader' does not have many workers",
                   r".*`srun` command is available", r"LightningCLI's args parameter is intended",
                   r"Found \d+ module\(s\) in eval mode at the start of training")  # frozen ones are, on purpose


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(_QUIET_PREFIXES)


def quiet_logs() -> None:
    """Keep the log to what matters: drop Lightning's banners and known third-party warnings (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietFilter) for f in logger.filters):
            logger.addFilter(_QuietFilter())
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars, per stage


def register_resolvers() -> None:
    """OmegaConf interpolations the configs may use: ${asset:NAME} = the dir of a shipped asset
    (entropy_asr.assets), e.g. ${asset:tiny_llm}/llm, the same path however the package was installed."""
    from omegaconf import OmegaConf

    from entropy_asr.assets import asset_path

    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # 2.4 renamed it
    register("asset", lambda name: str(asset_path(name)), replace=True)  # checked when a stage loads from it


def build_cli(args: list[str] | None = None) -> EntropyCLI:
    """Parse a config and the overrides, and instantiate model, datamodule and trainer (nothing runs)."""
    quiet_logs()  # every entry point that builds a stage (run, evaluate) keeps the log to what matters
    register_resolvers()
    return EntropyCLI(
        args=args,
        run=False,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},  # interpolations see the overrides
        save_config_kwargs={"overwrite": True},
        # the WebDataset pipeline splits shards itself; each stage prints its own parameter report
        trainer_defaults={"use_distributed_sampler": False, "enable_model_summary": False},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )


def _launch_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, SLURM, Lightning's own launcher), else 0."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold run_dir/.lock while a run writes the dir: a second run on it is refused, naming the holder.

    The lock file is created atomically (O_EXCL) with the holder's pid, host and start time. A lock
    left by a process that is gone (same host, pid not running: a crash or kill -9) is taken over
    with a warning; one from another host is refused (remove it by hand if no run is active there).
    Only rank 0 locks (the other ranks of a run write nothing of their own).
    """
    if _launch_rank() != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            alive = holder.get("host") == me["host"] and _pid_alive(holder.get("pid"))
            if alive or holder.get("host") not in (None, me["host"]):
                raise RunDirBusy(f"--run_dir {run_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                                 f"(since {holder.get('started')}); wait for it, use another --run_dir, or remove "
                                 f"{lock} if that run is gone") from None
            logging.getLogger(__name__).warning("%s: taking over the lock of pid %s (no longer running)", run_dir,
                                                holder.get("pid"))
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    else:
        raise RunDirBusy(f"--run_dir {run_dir}: could not take {lock}; another run is starting there")
    try:
        yield
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass


class RunDirBusy(UserError, RuntimeError):
    """Another run holds the run dir."""


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def run(args: list[str] | None = None, *, threads_file: str | None = None,
        producer: ProducerStatus | None = None) -> dict:
    """Fit, export, test; returns (and writes to run_dir/results.json) what it measured.

    A pipeline running this stage beside others (experiments/pipeline.py) passes `threads_file`, the CPU thread
    budget it grants (or --threads_file, for a stage in its own process), and `producer`, the status of the
    pretraining that writes the snapshots this stage's EncoderHotSwap callbacks wait for.
    """
    cli = build_cli(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    threads_file = threads_file or cli.config["threads_file"]
    cli.config["threads_file"] = None  # this process's hand-off, not the recipe: a rerun from config.yaml follows none
    if threads_file:  # a pipeline stage sharing the cores: follow the thread budget it grants
        trainer.callbacks.append(ThreadShare(threads_file))
    if producer is not None:
        for callback in trainer.callbacks:
            if isinstance(callback, EncoderHotSwap):
                callback.follow(producer)
    run_dir = Path(cli.config["run_dir"])
    try:
        with run_dir_lock(run_dir):
            return _fit_and_test(cli, trainer, model, data, run_dir)
    finally:  # one W&B run per stage, also when a pipeline runs the stages in one process
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish()


def _fit_and_test(cli, trainer, model, data, run_dir: Path) -> dict:
    t0 = time.perf_counter()
    ckpt = cli.config["ckpt_path"]
    resolved = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt) if ckpt else None
    if resolved is not None and resolved.is_file():
        verify_checkpoint(resolved)  # a damaged file is refused before anything is loaded from it
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    fit_seconds = time.perf_counter() - t0
    results: dict = {"stage": getattr(model, "stage", type(model).__name__), "run_dir": str(run_dir),
                     "global_step": int(trainer.global_step), "fit_seconds": round(fit_seconds, 1),
                     "skipped_batches": int(getattr(model, "bad_total", 0)),
                     "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
    if getattr(model, "swaps", None) is not None:
        results["encoder_swaps"] = list(model.swaps)
    waited = sum(getattr(c, "waited_s", 0.0) for c in trainer.callbacks)  # blocked on snapshots, not training
    if waited:
        results["waited_seconds"] = round(waited, 1)
    costs = {type(c).__name__: round(c.seconds, 2) for c in trainer.callbacks if isinstance(c, MeasuredCallback)}
    if costs:  # what the metric callbacks cost: their seconds over the fit's (waits excluded)
        results["callback_seconds"] = costs
        results["callback_share_of_fit"] = round(sum(costs.values()) / max(fit_seconds - waited, 1e-9), 4)
    if cli.config["test"] and getattr(data, "test_dirs", None) and not trainer.fast_dev_run:
        trainer.test(model, datamodule=data, verbose=False)  # the pipeline prints its own table
        results["test"] = dict(model.test_results)
    if trainer.is_global_zero and not trainer.fast_dev_run:
        atomic_write_json(run_dir / "results.json", results)
    return results


def main(argv: list[str] | None = None) -> None:
    """CLI entry: prints the results as one JSON line last."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = run(argv)
    print(json.dumps(results))


if __name__ == "__main__":
    run_main(main)
