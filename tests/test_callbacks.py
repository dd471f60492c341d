"""Callbacks: the trainer calls each hook with what it promises, a config can name them, and the
TensorBoard logger writes what a run's metrics.jsonl holds (read back from its event files)."""

from __future__ import annotations

import json

import pytest

from pyro_vae import Config, Trainer
from pyro_vae.callbacks import Callback, scalars
from pyro_vae.config import CALLBACKS
from pyro_vae.errors import ConfigError
from pyro_vae.runs import METRICS

from conftest import tiny_config


class Recorder(Callback):
    """A user's callback, handed to the trainer as an object."""

    def __init__(self) -> None:
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.epoch))

    def on_step(self, trainer, loss):
        self.calls.append(("step", trainer.step, loss))

    def on_epoch_end(self, trainer, record):
        self.calls.append(("epoch", record))

    def on_train_end(self, trainer):
        self.calls.append(("end", trainer.epoch))


def test_the_trainer_calls_every_hook_in_order(tmp_path):
    recorder = Recorder()
    trainer = Trainer(tiny_config(), tmp_path, progress=False, log=lambda line: None, callbacks=[recorder]).fit()
    kinds = [c[0] for c in recorder.calls]
    steps_per_epoch = 128 // 32
    assert kinds == ["start"] + (["step"] * steps_per_epoch + ["epoch"]) * 2 + ["end"]
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(1, 2 * steps_per_epoch + 1))
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [c[1] for c in recorder.calls if c[0] == "epoch"] == lines == trainer.history
    assert recorder.calls[-1] == ("end", 2)


def test_a_config_names_callbacks_and_refuses_unknown_ones(tmp_path):
    config = tiny_config(train={"epochs": 1, "batch_size": 32, "lr": 1e-2,
                                "callbacks": [{"name": "tensorboard", "images_every": 1, "images": 4}]})
    assert config.train.callbacks == [{"name": "tensorboard", "log_dir": "tensorboard", "images_every": 1, "images": 4,
                                       "steps": False}]
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))).to_toml() == config.to_toml()
    assert "callbacks = [{name = \"tensorboard\"" in config.to_toml()
    with pytest.raises(ConfigError, match="unknown callback 'tensorbored'.*Did you mean 'tensorboard'"):
        tiny_config(train={"callbacks": ["tensorbored"]})
    with pytest.raises(ConfigError, match="log_dir must be a folder inside the run folder"):
        CALLBACKS.build({"name": "tensorboard", "log_dir": "../elsewhere"})


def test_tensorboard_logs_what_metrics_jsonl_holds(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(train={"epochs": 2, "batch_size": 32, "lr": 1e-2,
                                "callbacks": [{"name": "tensorboard", "images_every": 1, "images": 4, "steps": True}]})
    trainer = Trainer(config, tmp_path, progress=False, log=lambda line: None).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    for tag, value in scalars(trainer.history[-1]).items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2], tag
        assert logged[-1].value == pytest.approx(value, rel=1e-6), tag
    assert len(events.Scalars("train/step_loss")) == 8
    for tag in ("samples", "reconstructions/input", "reconstructions/output"):
        assert [e.step for e in events.Images(tag)] == [1, 2], tag
