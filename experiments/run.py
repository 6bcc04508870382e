"""The project's entry point, on LightningCLI: `python experiments/run.py --config experiments/<stage>.yaml`.

Any config key can be overridden on the command line (`--trainer.devices 8`,
`--trainer.precision bf16-mixed`, `--model.init_args.optim.lr 1e-4`); OmegaConf interpolation
works in the YAML. One run: fit (resuming from `--ckpt_path last` or a path), export the trained
components, test on the datamodule's test sets, and write results.json into --run_dir, next to
the resolved config (config.yaml), the checkpoints and the logs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from callbacks.common import MeasuredCallback
from callbacks.thread_share import ThreadShare
from entropy_asr.data.shards import atomic_write_json

THREADS_FILE = "ENTROPY_ASR_THREADS_FILE"


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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.every_n_train_steps": 500})
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments("run_dir", "checkpoint.dirpath", compute_fn=lambda d: str(Path(d) / "checkpoints"))

    def instantiate_trainer(self, **kwargs):
        logger = self._get(self.config_init, "trainer", default={}).get("logger")
        if logger is None or logger is True:  # default: metrics.csv straight in the run dir, and W&B
            kwargs["logger"] = default_loggers(self._get(self.config, "run_dir"), self._get(self.config, "wandb"),
                                               self._get(self.config, "wandb_project"))
        return super().instantiate_trainer(**kwargs)


def default_loggers(run_dir: str, wandb_mode: str | None, project: str) -> list:
    """CSVLogger (run_dir/metrics.csv) and, unless disabled, a WandbLogger writing under run_dir/wandb.

    The mode is `wandb_mode`, else $WANDB_MODE, else offline: no account or network needed, and
    `wandb sync run_dir/wandb/offline-run-*` uploads the run later. Online needs `wandb login`
    (or WANDB_API_KEY). Runs of one pipeline share the W&B group $WANDB_RUN_GROUP.
    """
    mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    if mode not in ("offline", "online", "disabled", "dryrun", "run"):
        raise ValueError(f"W&B mode {mode!r} (from --wandb or $WANDB_MODE): use offline, online or disabled")
    loggers = [CSVLogger(run_dir, name="", version="")]
    if mode != "disabled":
        name = Path(run_dir).name
        loggers.append(WandbLogger(save_dir=run_dir, project=project, name=name, offline=mode in ("offline", "dryrun"),
                                   group=os.environ.get("WANDB_RUN_GROUP")))
    return loggers


def build_cli(args: list[str] | None = None) -> EntropyCLI:
    """Parse a config and the overrides, and instantiate model, datamodule and trainer (nothing runs)."""
    return EntropyCLI(
        args=args,
        run=False,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},  # the WebDataset pipeline splits shards itself
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )


def run(args: list[str] | None = None) -> dict:
    """Fit, export, test; returns (and writes to run_dir/results.json) what it measured."""
    cli = build_cli(args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if os.environ.get(THREADS_FILE):  # a pipeline stage sharing the cores: follow the thread budget it grants
        trainer.callbacks.append(ThreadShare(os.environ[THREADS_FILE]))
    run_dir = Path(cli.config["run_dir"])
    try:
        return _fit_and_test(cli, trainer, model, data, run_dir)
    finally:  # one W&B run per stage, also when a pipeline runs the stages in one process
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish()


def _fit_and_test(cli, trainer, model, data, run_dir: Path) -> dict:
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=data, ckpt_path=cli.config["ckpt_path"])
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


def main() -> None:
    """CLI entry: prints the results as one JSON line last."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = run()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
