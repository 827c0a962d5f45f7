"""A recipe is a new class and a config entry: a toy objective trains without touching any other file;
DataLoader workers carry the featurizer, never the model."""

from __future__ import annotations

import pickle

import torch
from omegaconf import OmegaConf, open_dict

from mmembed.objectives import EmbeddingObjective, ObjectiveOutput
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train


class MeanCosineObjective(EmbeddingObjective):
    """Pulls each anchor towards its positive: scale * (1 - mean cosine)."""

    row_kind = "text_pairs"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def features(self, featurizer, rows):
        return {"a": featurizer.featurize_text([r["sent0"] for r in rows]),
                "p": featurizer.featurize_text([r["sent1"] for r in rows])}

    def groups(self, features):
        return [features["a"], features["p"]]

    def loss(self, embeddings, features, ctx):
        cos = (embeddings[0] * embeddings[1]).sum(-1).mean()
        return ObjectiveOutput(self.scale * (1 - cos), {"mean_cosine": float(cos)})


TINY = ["experiment=text_only", "trainer.max_steps=2", "data.batch_size=4", "val=none",
        "validate_before_training=false", "~logger"]


def test_a_toy_objective_named_in_config_trains(tiny_smol_llava_dir, tmp_path):
    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}"], tmp_path)
    with open_dict(cfg):
        cfg.objective = OmegaConf.create({"_target_": f"{__name__}.MeanCosineObjective", "scale": 2.0})
    summary = run_training(cfg)
    assert summary["global_step"] == 2 and summary["objective"] == "MeanCosineObjective"
    m = summary["metrics"]
    assert abs(m["train/loss"] - 2.0 * (1 - m["train/mean_cosine"])) < 1e-5


def test_the_same_toy_objective_under_gradcache(tiny_smol_llava_dir, tmp_path):
    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "grad_cache.chunk_size=3"], tmp_path)
    with open_dict(cfg):
        cfg.objective = OmegaConf.create({"_target_": f"{__name__}.MeanCosineObjective"})
    summary = run_training(cfg)
    assert summary["global_step"] == 2
    assert abs(summary["metrics"]["train/loss"] - (1 - summary["metrics"]["train/mean_cosine"])) < 1e-5


def test_dataloader_workers_hold_the_featurizer_not_the_model(tiny_smol_llava_dir, tmp_path):
    from hydra.utils import instantiate

    from mmembed.models.factory import build_featurizer
    from mmembed.run.config import model_spec

    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "data.num_workers=2",
                                "trainer.max_steps=1"], tmp_path)
    featurizer = build_featurizer(model_spec(cfg))
    datamodule = instantiate(cfg.data, featurizer=featurizer, objective=instantiate(cfg.objective))
    datamodule.check_data()
    collate = datamodule.train_collator()
    blob = pickle.dumps(collate)
    # The SmolLM2 tokenizer is ~3.5 MB pickled; even the tiny model's weights are 7 MB, the real one 600 MB.
    assert len(blob) < 6 * 2**20
    restored = pickle.loads(blob)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(restored.featurizer).values())
    batch = restored(list(datamodule.train_set.select(range(4))))
    assert batch["features"]["inputs"]["input_ids"].shape[0] == 12  # anchors, positives, hard negatives
    summary = run_training(cfg)  # two worker processes really build the batches
    assert summary["global_step"] == 1
