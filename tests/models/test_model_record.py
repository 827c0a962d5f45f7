"""mmembed_model.json: an adapter folder names its model extension and pooler; loaders rebuild what the caller
did not give, and only mmembed classes are ever built from a folder."""

from __future__ import annotations

import pytest

from mmembed.errors import ConfigError
from mmembed.models.factory import ModelSpec
from mmembed.models.model_record import build_target, fill_from_record, save_model_record, saved_model_record
from mmembed.models.pooling import LastTokenPooler, MeanPooler

RECORD = {"base": "default",
          "extension": {"_target_": "mmembed.models.mmgem.extension.MMGEMExtension", "grid": 2, "pool_mode": "avg"},
          "pooler": {"_target_": "mmembed.models.pooling.MeanPooler"}}


def test_a_saved_record_fills_what_the_caller_left_unset(tmp_path):
    save_model_record(RECORD, tmp_path)
    assert saved_model_record(tmp_path) == RECORD and saved_model_record(tmp_path / "none") is None
    spec = ModelSpec(name_or_path="default", adapter=str(tmp_path))
    fill_from_record(spec)
    assert type(spec.extension).__name__ == "MMGEMExtension" and spec.extension.grid == 2
    assert isinstance(spec.pooler, MeanPooler)
    mine = LastTokenPooler()
    explicit = ModelSpec(name_or_path="default", adapter=str(tmp_path), pooler=mine)
    fill_from_record(explicit)
    assert explicit.pooler is mine  # what the caller gave wins


def test_only_mmembed_classes_are_built():
    with pytest.raises(ConfigError, match="only mmembed classes"):
        build_target({"_target_": "os.system", "command": "true"})
    assert isinstance(build_target({"_target_": "mmembed.models.pooling.LastTokenPooler"}), LastTokenPooler)
