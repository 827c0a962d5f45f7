"""The one DataModule serves any data source: a toy source defined in this file, named by `_target_` from YAML,
is checked, read (held-out filter applied), shuffled, batched, validated and trained on; nothing else is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmembed.data.heldout import drop_heldout_rows
from mmembed.data.sources.base import Prepared
from mmembed.errors import DataConfigError
from mmembed.objectives import ImageTextInfoNCE, TextPairInfoNCE
from mmembed.run.training import build_datamodule
from tests.data.fake_featurizer import CharFeaturizer


class ToyRows:
    """The toy kind's row preparer: each text cut to `max_text_tokens` (characters for CharFeaturizer)."""

    row_kind = "text_pairs"

    def __init__(self, featurizer, max_text_tokens):
        self.featurizer, self.max_text_tokens = featurizer, max_text_tokens

    def __call__(self, rows):
        out = [{key: self.featurizer.truncate([text], self.max_text_tokens)[0] for key, text in row.items()}
               for row in rows]
        return Prepared(out, 0, sum(o != r for o, r in zip(out, rows)))


class ToySource:
    """A word paired with itself reversed: a kind of training data that lives only in this test file."""

    row_kind = ToyRows.row_kind

    def __init__(self, words: list[str], must_exist: str | None = None):
        self.words, self.must_exist = list(words), must_exist

    def check_paths(self) -> None:
        if self.must_exist and not Path(self.must_exist).exists():
            raise DataConfigError(f"data.must_exist={self.must_exist!r} does not exist")

    def read_rows(self, on_error, skips, heldout):
        return drop_heldout_rows([{"sent0": w, "sent1": w[::-1]} for w in self.words], ["sent0", "sent1"], heldout)

    def row_preparer(self, featurizer, max_text_tokens, on_error):
        return ToyRows(featurizer, max_text_tokens)


TOY_DATA = f"""
_target_: mmembed.lit.datamodule.TrainingDataModule
source:
  _target_: {__name__}.ToySource
  _partial_: true
_convert_: all
words: [alpha, bravo, charlie, delta, echo, foxtrot, golf, hotel, india, juliett, kilo, lima]
batch_size: 4
max_text_tokens: 5
shuffle_seed: 3
"""


def _sts_folder(tmp_path):
    """A tiny STS-B folder: its dev pairs validate, its test sentences are held out of training."""
    line = "main-captions\tMSRvid\t2012test\t{}\t{}\t{}\t{}\n"
    (tmp_path / "sts-dev.csv").write_text("".join(line.format(i, i % 5, f"a{i}", f"b{i}") for i in range(7)))
    (tmp_path / "sts-test.csv").write_text(line.format(0, 4.0, "Bravo", "KILO  "))
    return tmp_path


def _toy(tmp_path, **overrides):
    cfg = OmegaConf.merge(OmegaConf.create(TOY_DATA), overrides)
    return build_datamodule(cfg, CharFeaturizer(), TextPairInfoNCE(0.05, False))  # as a training run builds it


def test_a_source_defined_in_a_test_is_named_from_yaml_and_serves_batches(tmp_path):
    folder = str(_sts_folder(tmp_path))
    heldout = {"stsb_test": {"format": "stsb", "path": folder, "split": "test"}}
    sts_dev = {"_target_": "mmembed.evaluation.benchmarks.sts.STSBenchmark", "format": "stsb", "path": folder,
               "split": "dev"}
    datamodule = _toy(tmp_path, val_sets={"sts": {"benchmark": sts_dev, "limit": 5, "batch_size": 4}}, heldout=heldout)
    assert type(datamodule.source).__name__ == "ToySource" and datamodule.row_kind == "text_pairs"
    datamodule.check_data()
    # "Bravo" and "KILO  " are held-out sentences (case and spacing folded): their rows are dropped, counted
    assert datamodule.heldout_dropped == 2 and len(datamodule.train_set) == 10
    epoch = [batch["features"]["inputs"] for batch in datamodule.train_dataloader()]
    assert len(epoch) == 2 and all(len(inputs) == 8 for inputs in epoch)  # 10 rows, batch 4: the last 2 dropped
    anchors = [text for inputs in epoch for text in inputs[:4]]
    words = {w[:5] for w in ["alpha", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "lima"]}
    assert len(set(anchors)) == 8 and set(anchors) <= words  # every anchor cut to 5 characters, none repeated
    # one loader per set; 5 pairs = 10 distinct sentences, 4 a batch, each with its id
    (loader,) = datamodule.val_dataloader()
    validation = [group["ids"].tolist() for batch in loader for group in batch["groups"]]
    assert len(validation) == 3 and sorted(i for ids in validation for i in ids) == list(range(10))


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(tmp_path):
    def order(seed):
        datamodule = _toy(tmp_path, shuffle_seed=seed)
        datamodule.setup("fit")
        return [batch["features"]["inputs"][:4] for batch in datamodule.train_dataloader()]

    assert order(3) == order(3) and order(3) != order(4)
    assert len(order(3)) == 3 and sorted(t for b in order(3) for t in b) == sorted(
        w[:5] for w in OmegaConf.create(TOY_DATA).words)


def test_a_data_setting_that_nothing_takes_is_refused_by_name(tmp_path):
    with pytest.raises(DataConfigError, match=r"data\.wrods is a setting of neither the DataModule nor its source "
                                              r"ToySource \(its settings: words, must_exist\)"):
        _toy(tmp_path, wrods=["x"])
    with pytest.raises(DataConfigError, match=r"data\.words is not set: source ToySource needs it"):
        build_datamodule(OmegaConf.create({k: v for k, v in OmegaConf.create(TOY_DATA).items() if k != "words"}),
                         None, None)
    with pytest.raises(DataConfigError, match=r"data\.must_exist='nowhere' does not exist"):
        _toy(tmp_path, must_exist="nowhere").check_data()


def test_an_objective_reading_other_rows_is_refused_before_reading(tmp_path):
    cfg = OmegaConf.create(TOY_DATA)
    datamodule = instantiate(cfg, featurizer=CharFeaturizer(), objective=ImageTextInfoNCE())
    with pytest.raises(DataConfigError, match="reads 'image_text' rows but ToySource gives 'text_pairs' rows"):
        datamodule.check_data()
    assert datamodule.train_set is None


@pytest.mark.slow
def test_the_toy_source_trains_a_model(tiny_smol_llava_dir, tmp_path):
    from omegaconf import open_dict

    from mmembed.run.training import run_training
    from tests.pipeline.helpers import compose_train

    cfg = compose_train(["experiment=text_only", "model.text_only=true", "val=stsb_dev", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
                         "validate_before_training=false", "~logger", "lora.r=4"], tmp_path / "run")
    with open_dict(cfg):
        cfg.data = OmegaConf.create(TOY_DATA)
    summary = run_training(cfg)
    assert summary["global_step"] == 2 and summary["metrics"]["train/loss"] > 0
