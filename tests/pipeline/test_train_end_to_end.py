"""End-to-end training on a tiny model: outputs, adapter-only checkpoints, reload equivalence."""

from __future__ import annotations

import json

import torch
from omegaconf import open_dict

from mmembed.models.factory import build_embedder
from mmembed.run.config import model_spec
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train

# E5-V's own setting: the tower dropped (model.text_only=true), so text validation only.
TINY = ["experiment=text_only", "model.text_only=true", "val=stsb_dev", "trainer.max_steps=3", "data.batch_size=4", "val.sets.stsb_dev.limit=8", "val.sets.stsb_dev.batch_size=8"]


def test_text_only_training_writes_adapters_and_matches_on_reload(tiny_smol_llava_dir, tmp_path):
    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "trainer.val_check_interval=3"], tmp_path)
    summary = run_training(cfg)

    assert summary["global_step"] == 3
    assert summary["text_only"] is True
    assert summary["cost"]["vision_tower_in_memory"] is False
    assert summary["metrics"]["train/num_negatives"] == 4 * 2 - 1  # positives + hard negatives - 1
    assert torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))
    assert "val/sts_spearman" in summary["metrics"] and summary["val_before"] is not None
    assert json.loads((tmp_path / "train_summary.json").read_text())["global_step"] == 3
    assert (tmp_path / "cost.json").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    adapter = tmp_path / "adapters" / "last"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    # The adapter carries the prompts it was trained with; the inference API picks them up.
    from mmembed.models.factory import ModelSpec, resolve_prompts
    from mmembed.models.prompts import PromptConfig, saved_prompts

    prompts, source = resolve_prompts(ModelSpec(adapter=str(adapter), default_prompts=PromptConfig()), str(tiny_smol_llava_dir))
    assert saved_prompts(adapter).system == "" == prompts.system and source == "adapter"
    # Lightning checkpoints hold the adapters only (plus optimizer state), never the frozen base.
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    assert "embedder" not in ckpt["hyper_parameters"]

    # The saved adapter reproduces the trained embeddings, unmerged and merged, with images enabled.
    texts = ["A woman is slicing an onion.", "A man is playing the flute."]
    for merge in (False, True):
        eval_cfg = compose_train([f"model.name_or_path={tiny_smol_llava_dir}", f"adapter={adapter}", f"merge_adapter={merge}"], tmp_path)
        embedder = build_embedder(model_spec(eval_cfg)).eval()
        assert embedder.backbone.supports_images
        with torch.no_grad():
            got = embedder.encode_text(texts)
        reference = _trained_embeddings(tiny_smol_llava_dir, adapter, texts, embedder.renderer.config)
        assert embedder.renderer.config.system == ""  # the default prompt group, as in training
        assert torch.nn.functional.cosine_similarity(got, reference).min() > 0.9999


def _trained_embeddings(model_dir, adapter, texts, prompts):
    from peft import PeftModel

    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder

    bb = load_backbone(str(model_dir))
    bb.model = PeftModel.from_pretrained(bb.model, str(adapter))
    with torch.no_grad():
        return MLLMEmbedder(bb, prompts).eval().encode_text(texts)


def test_training_changes_only_adapters(tiny_smol_llava_dir, tmp_path):
    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "validate_before_training=false"], tmp_path)
    with open_dict(cfg):
        cfg.data.val_sets = None
    from safetensors.torch import load_file

    base = load_file(str(tiny_smol_llava_dir / "model.safetensors"))
    run_training(cfg)
    adapter = load_file(str(tmp_path / "adapters" / "last" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "LoRA B stayed zero: nothing trained"
    assert load_file(str(tiny_smol_llava_dir / "model.safetensors")).keys() == base.keys()


def test_training_without_a_logger(tiny_smol_llava_dir, tmp_path):
    """`~logger` removes TensorBoard; the learning-rate monitor (which needs a logger) is dropped, not an error."""
    cfg = compose_train(TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "~logger", "validate_before_training=false"], tmp_path)
    summary = run_training(cfg)
    assert summary["global_step"] == 3 and not (tmp_path / "tensorboard").exists()
