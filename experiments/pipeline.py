"""Run a multi-stage pipeline: `python experiments/pipeline.py --config experiments/tiny/pipeline.yaml`.

Each stage is one `experiments/run.py` run (same process, in order) on its own config plus the
pipeline's overrides, in run_dir/<stage name>. A stage whose results.json exists is finished and
skipped; an interrupted one resumes from its last.ckpt. At the end it prints the test table
(CER on Mandarin, WER on English, MER on code-switched) and writes run_dir/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import yaml

from entropy_asr.data.shards import atomic_write_json
from experiments.run import run

COLUMNS = [("cer_zh", "CER zh"), ("wer_en", "WER en"), ("mer_mix", "MER mix")]


def _fill(value, run_dir: str):
    if isinstance(value, str):
        return value.replace("{run_dir}", run_dir)
    if isinstance(value, list):
        return [_fill(v, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, run_dir) for k, v in value.items()}
    return value


def stage_args(stage: dict, run_dir: str, extra: list[str]) -> list[str]:
    """run.py arguments of one stage: its config, its run dir, the pipeline's overrides, then `extra`."""
    for key in ("name", "config"):
        if key not in stage:
            raise ValueError(f"pipeline stage {stage} has no `{key}`")
    args = ["--config", stage["config"], "--run_dir", f"{run_dir}/{stage['name']}"]
    for key, value in (stage.get("overrides") or {}).items():
        value = _fill(value, run_dir)
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args + extra


def format_table(results: dict, sets: list[str]) -> str:
    """Markdown table: one row per test set, CER/WER/MER columns in percent."""
    lines = ["| test set | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in sets:
        row = results.get(name, {})
        cells = [f"{100 * row[k]:.1f}%" if k in row else "-" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_pipeline(config: dict, extra: list[str] | None = None, force: bool = False) -> dict:
    """Run every stage (skipping finished ones), then the test table of `table.stage`."""
    run_dir = str(config.get("run_dir") or "runs/pipeline")
    stages = config.get("stages") or []
    if not stages:
        raise ValueError("pipeline config has no `stages` list")
    summary: dict = {"stages": {}}
    t0 = time.perf_counter()
    for stage in stages:
        stage_dir = Path(run_dir) / stage["name"]
        done = stage_dir / "results.json"
        if done.exists() and not force:
            print(f"== {stage['name']}: finished before ({done}); skipped")
            summary["stages"][stage["name"]] = json.loads(done.read_text())
            continue
        args = stage_args(stage, run_dir, list(extra or []))
        if (stage_dir / "checkpoints" / "last.ckpt").exists() and not force:
            args += ["--ckpt_path", "last"]
        print(f"== {stage['name']}: python experiments/run.py {' '.join(args)}", flush=True)
        t = time.perf_counter()
        summary["stages"][stage["name"]] = run(args)
        print(f"== {stage['name']}: {time.perf_counter() - t:.0f} s", flush=True)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    table = config.get("table") or {}
    final = summary["stages"].get(table.get("stage", stages[-1]["name"]), {})
    sets = table.get("sets") or list(final.get("test", {}))
    summary["table"] = {s: final.get("test", {}).get(s, {}) for s in sets}
    summary["table_markdown"] = format_table(final.get("test", {}), sets)
    atomic_write_json(Path(run_dir) / "results.json", summary)
    print(summary["table_markdown"])
    print(f"pipeline: {summary['wall_seconds']:.0f} s; results in {run_dir}/results.json")
    return summary


def main() -> None:
    """CLI: --config PIPELINE.yaml [--force] [any run.py override applied to every stage]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="rerun finished stages from scratch")
    p.add_argument("--run_dir", help="override the config's run_dir")
    a, extra = p.parse_known_args()
    # run.py's LightningCLI gets each stage's arguments explicitly, not this command line
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = yaml.safe_load(a.config.read_text())
    if a.run_dir:
        config["run_dir"] = a.run_dir
    run_pipeline(config, extra, a.force)


if __name__ == "__main__":
    main()
