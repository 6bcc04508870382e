"""Plain-line progress for logs: the line's wording, and the callback driven by a fake and a real trainer."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from callbacks import progress
from callbacks.progress import LineProgress, progress_line


def test_progress_line_says_step_percent_time_left_and_metrics():
    line = progress_line("pretrain_ctc", 120, 400, 0.41, {"train/loss": 2.31, "lr": 0.000123456})
    assert line == "[pretrain_ctc] step 120/400 (30%) | 0.41 s/step, 1m 55s left | train/loss 2.31 lr 0.0001235"
    assert progress_line("lm", 5, 400, 0.01, {}) == "[lm] step 5/400 (1%) | 0.01 s/step, 4s left"  # 3.95 s
    assert progress_line("lm", 341, 400, 1.0, {}) == "[lm] step 341/400 (85%) | 1.00 s/step, 59s left"
    assert progress_line("lm", 340, 400, 1.0, {}) == "[lm] step 340/400 (85%) | 1.00 s/step, 1m 00s left"
    assert progress_line("lm", 100, 16000, 0.9, {}) == "[lm] step 100/16000 (1%) | 0.90 s/step, 3h 58m left"


def test_progress_line_without_total_rate_or_numbers():
    assert progress_line("sft", 7, None, 2.0, {"x": 1}) == "[sft] step 7 | 2.00 s/step | x 1"  # no total: no time left
    assert progress_line("sft", 7, 10, None, {}) == "[sft] step 7/10 (70%)"  # no rate yet
    assert progress_line("sft", 10, 10, 0.5, {}) == "[sft] step 10/10 (100%) | 0.50 s/step"  # done: nothing left
    shown = progress_line("sft", 1, None, None, {"name": "run", "t": torch.tensor(1.0), "big": 123456.0, "n": 3})
    assert shown == "[sft] step 1 | big 1.235e+05 n 3"  # only plain numbers, 4 significant digits


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(**kw):
    base = {"loggers": [], "progress_bar_metrics": {"train/loss": 2.5, "note": "x"}, "global_step": 0,
            "max_steps": 100, "is_global_zero": True, "sanity_checking": False, "state": SimpleNamespace(fn="fit")}
    return SimpleNamespace(**{**base, **kw})


def test_line_progress_prints_every_interval_with_the_rate_since_start(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    bar = LineProgress(every_s=30.0)
    module = SimpleNamespace(stage="pretrain_ctc")
    trainer = fake_trainer(global_step=20)  # resumed at step 20: only its own steps are timed
    bar.on_train_start(trainer, module)
    for step in range(21, 41):  # 20 steps at 2 s each; a line once 30 s have passed since the last
        clock.now += 2.0
        trainer.global_step = step
        bar.on_train_batch_end(trainer, module, None, None, step)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[pretrain_ctc] step 35/100 (35%) | 2.00 s/step, 2m 10s left | train/loss 2.5"]
    trainer.progress_bar_metrics["val/per"] = 0.25
    bar.on_validation_end(trainer, module)  # at each validation's end, whatever the interval
    assert capsys.readouterr().out == ("[pretrain_ctc] step 40/100 (40%) | 2.00 s/step, 2m 00s left | "
                                       "train/loss 2.5 val/per 0.25\n")
    for quiet in (fake_trainer(sanity_checking=True), fake_trainer(state=SimpleNamespace(fn="validate")),
                  fake_trainer(is_global_zero=False)):
        bar.on_validation_end(quiet, module)
    clock.now += 100
    bar.on_train_batch_end(fake_trainer(is_global_zero=False), module, None, None, 0)  # other ranks stay quiet
    bar.disable()
    bar.on_train_batch_end(trainer, module, None, None, 0)
    bar.on_validation_end(trainer, module)
    assert capsys.readouterr().out == "" and not bar.is_enabled
    bar.enable()
    bar.print("from the module")
    assert capsys.readouterr().out == "from the module\n"


def test_line_progress_in_a_real_fit(tmp_path, capsys):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.lin(batch).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, _):
            self.print("validating")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[LineProgress(every_s=0.0)], num_sanity_val_steps=0,
                        val_check_interval=3, limit_val_batches=1, enable_model_summary=False)
    trainer.fit(Tiny(), data, data)
    out = capsys.readouterr().out.splitlines()
    steps = [ln for ln in out if ln.startswith("[Tiny]")]
    assert [re.match(r"\[Tiny\] step (\d+)/3 \((\d+)%\)", ln).groups() for ln in steps] == \
        [("1", "33"), ("2", "67"), ("3", "100"), ("3", "100")]  # 3 batches, then the validation's end
    assert all(re.search(r"train/loss \d", ln) for ln in steps) and "validating" in out
    assert not any("\r" in ln for ln in out)  # plain lines: no carriage-return redraws

