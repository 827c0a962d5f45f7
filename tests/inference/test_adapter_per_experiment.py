"""Point 0, per experiment: the adapter folder a run of conf/experiment/<name>.yaml saves loads through
`Embedder.from_pretrained(base, adapter=folder)` alone (no model=, prompt=, pooler= given) and gives the
vectors of the training-time embedder.

The cheapest faithful route: the experiment's composed train config (with the tiny SmolLlava as the base),
the training run's own model construction (model_spec + build_featurizer + build_embedder(trainable=True,
lora=lora_spec(cfg)), as mmembed.run.training.run_training), every trainable weight moved off its initial
value (a trained adapter, not an identity one), and the config's own AdapterSaver writing the folder with the
run's `adapter_model_record` (what on_train_end does). A real 2-step MM-GEM run is covered in
tests/models/mmgem/test_mmgem.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from mmembed.inference import Embedder
from mmembed.models.factory import build_embedder, build_featurizer
from mmembed.models.model_record import saved_model_record
from mmembed.run.config import lora_spec, model_spec
from mmembed.run.training import adapter_model_record
from tests.conftest import REPO
from tests.pipeline.helpers import compose_train

TEXTS = ["a black dog runs across a field", "two children on the beach", "a red car"]
# Every experiment that trains a LoRA adapter; align trains the projector alone and saves a whole model instead.
EXPERIMENTS = ["text_only", "image_text", "unime_stage1", "unime_stage1_hour", "unime_stage2", "mmgem", "mmgem_regions", "e5v_paper"]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_every_experiment_is_covered_and_align_saves_no_adapter(tmp_path):
    assert sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")) == sorted([*EXPERIMENTS, "align"])
    cfg = compose_train(["experiment=align"], tmp_path)
    assert not cfg.lora.enabled and cfg.callbacks.adapter_saver is None
    assert cfg.callbacks.aligned_model_saver._target_ == "mmembed.lit.callbacks.BaseModelSaver"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_experiments_adapter_loads_by_its_folder_alone(experiment, tiny_smol_llava_dir, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"model.name_or_path={tiny_smol_llava_dir}", "lora.r=4"],
                        tmp_path / "run")
    assert cfg.lora.enabled
    spec = model_spec(cfg)
    torch.manual_seed(0)
    trained = build_embedder(spec, build_featurizer(spec), trainable=True, lora=lora_spec(cfg),
                             train_projector=bool(cfg.get("train_projector")))
    with torch.no_grad():
        moved = 0
        for _, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
                moved += 1
    assert moved > 0
    saver = instantiate(cfg.callbacks.adapter_saver)
    saver.model_record = adapter_model_record(cfg)
    folder = saver._save(SimpleNamespace(embedder=trained), "last")
    assert folder == tmp_path / "run" / "adapters" / "last"
    record = saved_model_record(folder)
    assert record["base"] == str(tiny_smol_llava_dir)
    assert (record["extension"] or {}).get("_target_") == (cfg.model.get("extension") or {}).get("_target_")

    # loaded in the run's own dtype (e5v_paper's 8B model trains in bfloat16, the others in float32)
    loaded = Embedder.from_pretrained(tiny_smol_llava_dir, adapter=folder, dtype=spec.dtype)
    trained.eval()
    assert loaded.prompts == trained.renderer.config  # the prompts travelled with the adapter
    assert type(loaded.embedder.pooler) is type(trained.pooler)
    with torch.no_grad():
        text = trained.encode_text(TEXTS).float()
        same(loaded.encode_text(TEXTS), text, spec.dtype)
        # and the adapter matters: the base alone embeds differently
        base = Embedder.from_pretrained(tiny_smol_llava_dir, dtype=spec.dtype, prompts=trained.renderer.config)
        assert (base.encode_text(TEXTS) * text).sum(1).min() < 0.99
        if "image" in trained.modalities:
            same(loaded.encode_image(_images(2)), trained.encode_image(_images(2)).float(), spec.dtype)


def same(loaded: torch.Tensor, trained: torch.Tensor, dtype: str) -> None:
    """float32: equal to 2e-5 (merging the LoRA into the weights only reorders float sums); bfloat16: merged
    weights are rounded to bf16's 8 bits, so row cosine >= 0.999."""
    if dtype == "float32":
        assert torch.allclose(loaded, trained, atol=2e-5)
    else:
        assert (loaded * trained).sum(1).min() >= 0.999
