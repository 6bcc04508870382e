"""Run a multi-stage pipeline: `python experiments/pipeline.py --config experiments/tiny/pipeline.yaml`.

Each stage is one `experiments/run.py` run on its own config, in run_dir/<stage name>, in order, in
this process. Every stage gets `--vars.runs run_dir` (and `--vars.llm`, below, and the config's own
`vars`): the stage configs name earlier stages' outputs as `${vars.runs}/<stage>/export/...`, so they
follow the pipeline's run_dir with no restated paths; a stage's `overrides` are for what really
differs. A stage with `background: true` runs as its own process beside the stages after it (its
output in <stage dir>/stdout.log, its [drift] lines echoed here): that is how pretraining and IA-SFT
run side by side, sharing the snapshot directory. A stage with `wait_for: FILE` starts once FILE
exists (e.g. pretraining's first snapshot marker), and fails if the background stage that should
write it dies or `wait_timeout_s` passes. CPU threads are shared: a background stage gets all cores
while nothing else runs, half of them while a foreground stage trains, all again while that stage
waits for a snapshot, and the foreground gets them all once the background is done
(callbacks/thread_share.py applies each process's budget at step boundaries).

A stage whose results.json exists is finished and skipped; an interrupted one resumes from its
last.ckpt. At the end it waits for the background stages, plots the drift curves (`drift_plot`),
prints the test table (CER on Mandarin, WER on English, MER on code-switched, and the share of
non-speech clips that got any text) and writes run_dir/results.json.

Where the LLM comes from (`llm`): the stages read it from `${vars.llm}`. By default that is the
shipped, pretrained asset `llm.asset` (checked against this code's corpus first); with --retrain-llm
the stage named `llm.stage` (marked `when: retrain_llm`) trains it from scratch first and `vars.llm`
is that stage's export dir. Any other stage marked `when: NAME` is optional and runs only with `--with NAME`
(the stages after joint SFT: `--with context_sft grpo`); each prints its own test table too. In the pipeline
config's own strings (`wait_for`, `drift_plot`, `overrides`, `vars`), `{run_dir}` and `{llm}` stand for the
same two dirs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import yaml

from callbacks.hot_swap import ProducerStatus
from entropy_asr.errors import UserError, UserFileNotFound, run_main
from entropy_asr.io import atomic_write_json, read_jsonl_log
from entropy_asr.plots import plot_drift
from experiments.run import run

RUN_PY = Path(__file__).resolve().parent / "run.py"
# background lines worth showing in the pipeline's own output (besides its progress lines): drift checks,
# failures
ECHO = ("[drift]", "Traceback", "Error")

# PER: the final model's CTC head on the same clips, where it has one (what the encoder heard; the LLM reads it)
COLUMNS = [("cer_zh", "CER zh"), ("wer_en", "WER en"), ("mer_mix", "MER mix"), ("per", "PER (encoder)"),
           ("nonempty_none", "non-speech emission")]


def _fill(value, run_dir: str, llm: str | None = None):
    if isinstance(value, str):
        return value.replace("{run_dir}", run_dir).replace("{llm}", llm or "{llm}")
    if isinstance(value, list):
        return [_fill(v, run_dir, llm) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, run_dir, llm) for k, v in value.items()}
    return value


def llm_source(config: dict, run_dir: str, retrain: bool) -> str | None:
    """Where the LLM comes from: the asset's dir (checked now, so a mismatch fails before anything runs), the
    retraining stage's export dir, or None (the config has no `llm`: the stages' own configs say)."""
    spec = config.get("llm") or {}
    if retrain:
        if not spec.get("stage"):
            raise UserError("--retrain-llm: the pipeline config has no `llm.stage` (the stage that trains the LLM)")
        return f"{run_dir}/{spec['stage']}/export"
    if not spec.get("asset"):
        return None
    from entropy_asr.assets import asset_dir

    return str(asset_dir(spec["asset"]))  # raises AssetError naming what differs and how to retrain


def stage_args(stage: dict, run_dir: str, extra: list[str], llm: str | None = None,
               variables: dict | None = None) -> list[str]:
    """run.py arguments of one stage: its config, its run dir, the vars (runs = run_dir, llm, the pipeline
    config's `vars`), the stage's overrides, then `extra`."""
    for key in ("name", "config"):
        if key not in stage:
            raise UserError(f"pipeline stage {stage} has no `{key}`")
    args = ["--config", stage["config"], "--run_dir", f"{run_dir}/{stage['name']}"]
    named = {"runs": run_dir, **({"llm": llm} if llm else {}), **(variables or {})}
    for key, value in named.items():
        if not isinstance(value, (str, int, float)):
            raise UserError(f"pipeline vars.{key}: {value!r} is not a string; vars are strings the stage configs "
                            f"use as ${{vars.{key}}}")
        args += [f"--vars.{key}", _fill(str(value), run_dir, llm)]
    for key, value in (stage.get("overrides") or {}).items():
        value = _fill(value, run_dir, llm)
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args + extra


def format_table(results: dict, sets: list[str]) -> str:
    """Markdown table: one row per test set, CER/WER/MER/PER and the non-speech emission in percent."""
    lines = ["| test set | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in sets:
        row = results.get(name, {})
        cells = [f"{100 * row[k]:.1f}%" if k in row else "-" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Background:
    """A stage running as its own `run.py` process; output to <stage dir>/stdout.log (some lines echoed)."""

    def __init__(self, name: str, args: list[str], stage_dir: Path, threads: int):
        self.name, self.log_path, self.threads_file = name, stage_dir / "stdout.log", stage_dir / "threads"
        self.started = time.perf_counter()
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.grant(threads)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # echo lines as they come
        # it follows the thread budget in threads_file (callbacks.ThreadShare)
        self.proc = subprocess.Popen([sys.executable, str(RUN_PY), *args, "--threads_file", str(self.threads_file)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        self._tee = threading.Thread(target=self._copy, daemon=True)
        self._tee.start()

    def grant(self, threads: int) -> None:
        """The thread count this stage should use from its next step boundary on."""
        atomic_write_json(self.threads_file, threads)

    def _copy(self) -> None:
        progress = f"[{self.name}] step "
        with open(self.log_path, "a") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(progress):  # its progress lines already name it
                    print(line.rstrip(), flush=True)
                elif line.lstrip().startswith(ECHO):
                    print(f"[{self.name}] {line.rstrip()}", flush=True)
        rc = self.proc.wait()
        print(f"== {self.name} (background): {time.perf_counter() - self.started:.0f} s"
              + ("" if rc == 0 else f", exit code {rc}; its log is {self.log_path}"), flush=True)

    def failed(self) -> Exception | None:
        """The error if the process ended with one, else None (still running or succeeded): a UserError with
        the stage's own one line for bad input (exit code 2), else the log's tail."""
        rc = self.proc.poll()
        if rc in (None, 0):
            return None
        self._tee.join(timeout=5)
        lines = self.log_path.read_text().splitlines(keepends=True)
        # its one-line error: run_main's "error: ..." or an argument parser's "PROG: error: ..."
        said = [ln.split("error: ", 1)[1].strip() for ln in lines if ln.startswith("error: ") or ": error: " in ln]
        if rc == 2 and said:
            return UserError(f"background stage {self.name}: {said[-1]} (its log: {self.log_path})")
        return RuntimeError(f"background stage {self.name} failed (exit code {rc}); its log is {self.log_path}:\n"
                            + "".join(lines[-15:]))

    def join(self, stage_dir: Path) -> dict:
        self.proc.wait()
        self._tee.join()
        if err := self.failed():
            raise err
        return json.loads((stage_dir / "results.json").read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(path: Path, timeout_s: float, background: dict[str, Background], stage: str) -> None:
    """Block until `path` exists; fail early if a background stage died or all of them ended without it."""
    if path.exists():
        return
    print(f"== {stage}: waiting for {path}", flush=True)
    t0 = time.monotonic()
    while not path.exists():
        for bg in background.values():
            if err := bg.failed():
                raise type(err)(f"{stage} waits for {path}, but {err}")
        if background and all(bg.proc.poll() == 0 for bg in background.values()) and not path.exists():
            raise RuntimeError(f"{stage} waits for {path}, but the background stages ended without writing it; "
                               f"check the pipeline's wait_for against their snapshot steps")
        if not background:
            raise UserFileNotFound(f"{stage} waits for {path}, which does not exist and no background stage "
                                   f"is running to write it")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{stage}: {path} did not appear within {timeout_s:g} s (wait_timeout_s)")
        time.sleep(1.0)
    print(f"== {stage}: {path.name} is there after {time.monotonic() - t0:.0f} s", flush=True)


@contextlib.contextmanager
def shared_cores(background: dict[str, Background], stage_dir: Path):
    """Split the cores between a foreground stage and the background stages still running.

    Equal shares while both train; all cores to the background while the foreground waits for a
    snapshot (EncoderHotSwap), all to the foreground once the background is done. The foreground
    (this process) follows its budget at step boundaries through ThreadShare, like the background.

    Yields what to hand the foreground stage's run(): (its thread budget file, the ProducerStatus its
    hot-swap shares with this pipeline), or (None, None) when no background stage is running.
    """
    running = [b for b in background.values() if b.proc.poll() is None]
    if not running:
        yield None, None
        return
    cores, before = _cores(), torch.get_num_threads()
    mine = stage_dir / "threads"
    stage_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    producer = ProducerStatus()

    def budget() -> tuple[int, int]:
        """(foreground threads, each running background stage's threads) now."""
        alive = [b for b in running if b.proc.poll() is None]
        if not alive:
            return cores, cores
        if producer.waiting.is_set():
            return 1, cores
        share = max(1, cores // (len(alive) + 1))
        return max(1, cores - share * len(alive)), share

    def follow() -> None:
        granted = None
        while not stop.is_set():
            for b in running:
                if err := b.failed():  # a hot-swap waiting on it would wait in vain: tell it
                    producer.fail(str(err))
            want = budget()
            if want != granted:
                atomic_write_json(mine, want[0])
                for b in running:
                    b.grant(want[1])
                granted = want
            stop.wait(1.0)

    fg, _ = budget()
    torch.set_num_threads(fg)
    atomic_write_json(mine, fg)
    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        yield str(mine), producer  # run() adds a ThreadShare that follows mine
    finally:
        stop.set()
        watcher.join()
        torch.set_num_threads(before)
        for b in running:
            b.grant(cores)


def write_drift_plot(spec: dict, run_dir: str) -> Path | None:
    """run_dir/drift.png from the pretraining's drift.jsonl, with the snapshot steps IA-SFT swapped in."""
    drift_path = Path(_fill(spec["drift"], run_dir))
    if not drift_path.exists():
        print(f"pipeline: no drift log at {drift_path}; drift plot skipped (is CKADriftMonitor on in pretraining?)")
        return None
    drift = read_jsonl_log(drift_path)
    swaps_path = Path(_fill(spec.get("swaps", ""), run_dir)) if spec.get("swaps") else None
    swapped = [e["snapshot_step"] for e in read_jsonl_log(swaps_path)] if swaps_path and swaps_path.exists() else []
    threshold = next((d["threshold"] for d in drift if "threshold" in d), None)
    return plot_drift(drift, Path(_fill(spec.get("out", "{run_dir}/drift.png"), run_dir)), swapped, threshold)


def select_stages(config: dict, retrain_llm: bool = False, optional: list[str] | None = None) -> list[dict]:
    """The config's stages this run takes, in order: every stage without `when`, a `when: retrain_llm` one with
    retrain_llm, a `when: NAME` one when NAME is in `optional` (an unknown NAME is a UserError listing the known)."""
    every = config.get("stages") or []
    known = sorted({str(s["when"]) for s in every if s.get("when")} - {"retrain_llm"})
    unknown = [name for name in optional or [] if name not in known]
    if unknown:
        raise UserError(f"--with {unknown[0]}: this pipeline has no optional stage of that name; its optional stages: "
                        f"{known or 'none'}")
    enabled = set(optional or []) | ({"retrain_llm"} if retrain_llm else set())
    stages = [s for s in every if not s.get("when") or s["when"] in enabled]
    if not stages:
        raise UserError("pipeline config has no `stages` list")
    return stages


def run_pipeline(config: dict, extra: list[str] | None = None, force: bool = False, retrain_llm: bool = False,
                 optional: list[str] | None = None) -> dict:
    """Run every stage (skipping finished ones; a `when: NAME` stage only when NAME is in `optional`, `retrain_llm`
    with retrain_llm), then the test table of `table.stage` (and of each optional stage that ran)."""
    run_dir = str(config.get("run_dir") or "runs/pipeline")
    stages = select_stages(config, retrain_llm, optional)
    llm = llm_source(config, run_dir, retrain_llm)
    if not isinstance(config.get("vars") or {}, dict):
        raise UserError(f"pipeline config `vars`: expected a mapping NAME: value, got {config['vars']!r}")
    table_stage = (config.get("table") or {}).get("stage", stages[-1]["name"])
    if any(s.get("name") == table_stage and str((s.get("overrides") or {}).get("test")).lower() == "false"
           for s in stages):
        raise UserError(f"pipeline table.stage {table_stage!r} has `overrides: {{test: false}}`, but the table is its "
                        "test results: drop that override or set table.stage to a stage that tests")
    summary: dict = {"stages": {}}
    background: dict[str, Background] = {}
    os.environ.setdefault("WANDB_RUN_GROUP", Path(run_dir).name)  # the stages' W&B runs, grouped
    t0 = time.perf_counter()
    try:
        for stage in stages:
            name = stage.get("name")
            stage_dir = Path(run_dir) / str(name)
            done = stage_dir / "results.json"
            if done.exists() and not force:
                print(f"== {name}: finished before ({done}); skipped")
                summary["stages"][name] = json.loads(done.read_text())
                continue
            args = stage_args(stage, run_dir, list(extra or []), llm, config.get("vars"))
            if (stage_dir / "checkpoints" / "last.ckpt").exists() and not force:
                args += ["--ckpt_path", "last"]
            if stage.get("wait_for"):
                wait_for(Path(_fill(stage["wait_for"], run_dir)), float(stage.get("wait_timeout_s", 7200)),
                         background, name)
            if stage.get("background"):
                print(f"== {name} (background, log {stage_dir / 'stdout.log'}): python experiments/run.py "
                      f"{' '.join(args)}", flush=True)
                background[name] = Background(name, args, stage_dir, _cores())
                continue
            print(f"== {name}: python experiments/run.py {' '.join(args)}", flush=True)
            t = time.perf_counter()
            with shared_cores(background, stage_dir) as (threads_file, producer):
                summary["stages"][name] = run(args, threads_file=threads_file, producer=producer)
            print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
        for name, bg in background.items():
            summary["stages"][name] = bg.join(Path(run_dir) / name)
    finally:
        for bg in background.values():
            bg.stop()
    summary["stages"] = {s["name"]: summary["stages"][s["name"]] for s in stages}  # in config order
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if config.get("drift_plot"):
        out = write_drift_plot(config["drift_plot"], run_dir)
        if out:
            print(f"pipeline: drift plot {out}")
    table = config.get("table") or {}
    final = summary["stages"].get(table_stage, {})
    sets = table.get("sets") or list(final.get("test", {}))
    summary["table"] = {s: final.get("test", {}).get(s, {}) for s in sets}
    summary["table_markdown"] = format_table(final.get("test", {}), sets)
    later = {s["name"]: summary["stages"][s["name"]] for s in stages
             if s.get("when") and s["when"] != "retrain_llm" and summary["stages"][s["name"]].get("test")}
    summary["optional_tables"] = {name: format_table(result["test"], sets) for name, result in later.items()}
    atomic_write_json(Path(run_dir) / "results.json", summary)
    print(summary["table_markdown"])
    for name, table in summary["optional_tables"].items():
        print(f"\n{name}:\n{table}")
    print(f"pipeline: {summary['wall_seconds']:.0f} s; results in {run_dir}/results.json")
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: --config PIPELINE.yaml [--force] [any run.py override applied to every stage]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="rerun finished stages from scratch")
    # the pipeline's own flags in either spelling (run.py's are --run_dir ...; argparse's habit is --retrain-llm):
    # anything the pipeline does not know is passed on to every stage, where a misspelt flag of its own would fail
    p.add_argument("--run_dir", "--run-dir", dest="run_dir", help="override the config's run_dir")
    p.add_argument("--retrain-llm", "--retrain_llm", dest="retrain_llm", action="store_true",
                   help="train the tiny LLM from scratch (the config's llm.stage) instead of starting from the shipped "
                        "asset (docs/tiny_llm.md)")
    p.add_argument("--with", dest="optional", nargs="+", default=[], metavar="STAGE",
                   help="also run these optional stages (the config's `when: NAME` stages, e.g. context_sft grpo)")
    a, extra = p.parse_known_args(argv)
    # run.py's LightningCLI gets each stage's arguments explicitly, not this command line
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not a.config.is_file():
        raise UserFileNotFound(f"--config {a.config}: no such file")
    config = yaml.safe_load(a.config.read_text())
    if a.run_dir:
        config["run_dir"] = a.run_dir
    run_pipeline(config, extra, a.force, a.retrain_llm, a.optional)


if __name__ == "__main__":
    run_main(main)
