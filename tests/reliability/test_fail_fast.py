"""Bad data is reported before any model weight is read; a checkpoint of another LoRA layout does not
load silently."""

from __future__ import annotations

import pytest

from mmembed.errors import DataConfigError
from mmembed.lit.module import CheckpointMismatchError
from mmembed.run import training
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load model weights fails the test."""
    monkeypatch.setattr(training, "build_embedder", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize(("content", "message"), [
    ("premise,hypothesis\na,b\nc,d\n", r"expected columns sent0,sent1"),
    ("", r"cannot parse|empty|no full batch|expected columns"),
    ("sent0,sent1,hard_neg\na,b,c\n", r"1 training rows but data.batch_size=16"),
])
def test_bad_training_file_fails_before_the_model_loads(tmp_path, no_model, tiny_smol_llava_dir, content, message):
    bad = tmp_path / "train.csv"
    bad.write_text(content)
    cfg = compose_train(["experiment=text_only", "model.text_only=true", "val=stsb_dev", f"model.name_or_path={tiny_smol_llava_dir}",
                         f"data.train_files=[{bad}]"], tmp_path / "run")
    with pytest.raises(DataConfigError, match=message):
        run_training(cfg)


def test_bad_validation_folder_fails_before_the_model_loads(tmp_path, no_model, tiny_smol_llava_dir, data_root):
    (tmp_path / "sts").mkdir()
    (tmp_path / "sts" / "sts-dev.csv").write_text("only\ttwo columns\n")
    cfg = compose_train(["experiment=text_only", "model.text_only=true", "val=stsb_dev", f"model.name_or_path={tiny_smol_llava_dir}",
                         f"val.sets.stsb_dev.benchmark.path={tmp_path / 'sts'}"], tmp_path / "run")
    with pytest.raises(DataConfigError, match="stsb_dev"):
        run_training(cfg)


def test_resume_with_another_lora_layout_is_refused(tiny_smol_llava_dir, tmp_path):
    base = ["experiment=text_only", "model.text_only=true", "val=stsb_dev", f"model.name_or_path={tiny_smol_llava_dir}", "data.batch_size=4",
            "val=none", "validate_before_training=false", "~logger",
            "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.every_n_train_steps=1"]
    run_training(compose_train([*base, "trainer.max_steps=1", "lora.r=4"], tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    resumed = compose_train([*base, "trainer.max_steps=2", "lora.r=4", "lora.target_modules=.*q_proj", "ckpt_path=last"],
                            tmp_path)
    with pytest.raises(CheckpointMismatchError, match="do not match this model"):
        run_training(resumed)
