"""`src/eval.py adapter=<run>` loads the base the adapter was trained on (its mmembed_model.json), unless the
user names a model: `make train` trains on the label-word base while eval.yaml's default is the grounded one."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mmembed.models.model_record import save_model_record
from mmembed.run import config


def _cfg(adapter, name="default"):
    return OmegaConf.create({"model": {"name_or_path": name}, "adapter": str(adapter) if adapter else None})


@pytest.fixture
def adapter(tmp_path):
    save_model_record({"base": "default:label_words", "extension": None, "pooler": None}, tmp_path)
    return tmp_path


def test_the_recorded_base_wins_over_the_configs_default(adapter, monkeypatch):
    monkeypatch.setattr(config, "model_given_on_command_line", lambda: False)
    assert config.base_of_adapter(_cfg(adapter)) == "default:label_words"


def test_a_model_named_on_the_command_line_wins_over_the_record(adapter, monkeypatch):
    monkeypatch.setattr(config, "model_given_on_command_line", lambda: True)
    assert config.base_of_adapter(_cfg(adapter)) == "default"


def test_no_adapter_or_no_record_keeps_the_configured_model(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "model_given_on_command_line", lambda: False)
    assert config.base_of_adapter(_cfg(None)) == "default"
    assert config.base_of_adapter(_cfg(tmp_path)) == "default"  # a folder without mmembed_model.json


def test_outside_a_hydra_run_the_config_is_taken_as_given():
    assert config.model_given_on_command_line() is True
