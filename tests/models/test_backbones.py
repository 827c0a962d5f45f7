"""load_backbone on a tiny random-weight checkpoint of every supported family, saved with
save_pretrained and loaded back through the user's code path; plus the loader's refusals."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.models.backbones import BackboneLoadError, drop_vision, load_backbone, vision_modules
from mmembed.models.embedder import MLLMEmbedder
from tests.tiny_models import TINY_TEXT, TRANSFORMERS_FAMILIES, build_tiny

HIDDEN = TINY_TEXT["hidden_size"]
VLM_FAMILIES = ["llava_next", "llava", "qwen2_vl", "idefics3"]
MODEL_CLASSES = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "causal_lm": "LlamaForCausalLM",
}
IMAGE_TOKENS = {
    "llava_next": "<image>",
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "causal_lm": None,
}


@pytest.fixture(scope="module")
def tiny_dirs(smol_tokenizer_dir, tmp_path_factory):
    """family -> folder of its tiny checkpoint (built once for this module)."""
    root = tmp_path_factory.mktemp("tiny_backbones")
    return {family: build_tiny(family, smol_tokenizer_dir, root / family) for family in TRANSFORMERS_FAMILIES}


def _image(seed: int, size=(48, 40)) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _body_last_hidden(backbone, inputs) -> torch.Tensor:
    with torch.no_grad():
        return backbone.body(**inputs, use_cache=False).last_hidden_state


@pytest.mark.parametrize("family", TRANSFORMERS_FAMILIES)
def test_tiny_checkpoint_is_a_standard_save_pretrained_folder(tiny_dirs, family):
    folder = tiny_dirs[family]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [MODEL_CLASSES[family]]
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    if family != "causal_lm":
        processor_config = json.loads((folder / "processor_config.json").read_text())
        expected = MODEL_CLASSES[family].replace("ForConditionalGeneration", "Processor")
        assert processor_config["processor_class"] == expected


@pytest.mark.parametrize("family", TRANSFORMERS_FAMILIES)
def test_load_backbone_family_and_text_hidden_states(tiny_dirs, family):
    backbone = load_backbone(str(tiny_dirs[family]))
    assert backbone.family == family
    assert type(backbone.model).__name__ == MODEL_CLASSES[family]
    assert backbone.image_token == IMAGE_TOKENS[family]
    assert backbone.supports_images == (family != "causal_lm")
    assert backbone.tokenizer.padding_side == "left"
    assert backbone.tokenizer.pad_token is not None
    assert not backbone.model.training
    # The body is the decoder without the LM head.
    assert not hasattr(backbone.body, "lm_head")

    inputs = backbone.tokenizer(["a cat", "a much longer sentence about a dog"], return_tensors="pt", padding=True)
    hidden = _body_last_hidden(backbone, dict(inputs))
    assert hidden.shape == (*inputs["input_ids"].shape, HIDDEN)
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_prompt_reaches_the_body(tiny_dirs, family):
    backbone = load_backbone(str(tiny_dirs[family]))
    prompt = f"{backbone.image_token}\nSummary above image in one word:"
    outs = []
    for seed in (0, 1):
        inputs = backbone.processor(text=[prompt], images=[_image(seed)], return_tensors="pt")
        assert "pixel_values" in inputs
        hidden = _body_last_hidden(backbone, dict(inputs))
        assert hidden.shape == (1, inputs["input_ids"].shape[1], HIDDEN)
        # The processor expanded the image token into many placeholders the vision features fill.
        assert inputs["input_ids"].shape[1] > len(backbone.tokenizer(prompt)["input_ids"])
        outs.append(hidden[0, -1])
    # Different pixels -> different last-token states: the image features flow into the LLM.
    assert not torch.allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_text_only_drops_vision_and_keeps_text_embeddings(tiny_dirs, family):
    full = load_backbone(str(tiny_dirs[family]))
    text_only = load_backbone(str(tiny_dirs[family]), text_only=True)
    assert vision_modules(full.model) != {}
    assert vision_modules(text_only.model) == {}
    assert not text_only.supports_images
    names = [name for name, _ in text_only.model.named_parameters()]
    vision_words = ("vision_tower", "multi_modal_projector", "visual", "vision_model", "connector", "image_newline")
    assert not [name for name in names if any(word in name for word in vision_words)]
    n_full = sum(p.numel() for p in full.model.parameters())
    n_text = sum(p.numel() for p in text_only.model.parameters())
    assert n_text < n_full

    texts = ["a red car", "two dogs playing in the snow"]
    with torch.no_grad():
        expected = MLLMEmbedder(full).encode_text(texts)
        got = MLLMEmbedder(text_only).encode_text(texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="text_only"):
        MLLMEmbedder(text_only).featurize_images([_image(0)])


def test_drop_vision_returns_names_and_is_idempotent(tiny_dirs):
    backbone = load_backbone(str(tiny_dirs["llava_next"]))
    dropped = drop_vision(backbone.model)
    assert {"vision_tower", "multi_modal_projector", "image_newline"} <= set(dropped)
    assert backbone.model.model.vision_tower is None
    assert drop_vision(backbone.model) == []


def test_causal_lm_cannot_embed_images(tiny_dirs):
    backbone = load_backbone(str(tiny_dirs["causal_lm"]))
    embedder = MLLMEmbedder(backbone)
    assert embedder.encode_text(["hello"]).shape == (1, HIDDEN)
    with pytest.raises(RuntimeError, match="cannot embed images"):
        embedder.encode_image([_image(0)])


def test_dtype_and_padding_side_are_applied(tiny_dirs):
    backbone = load_backbone(str(tiny_dirs["llava"]), dtype="bfloat16", padding_side="right")
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    assert backbone.tokenizer.padding_side == "right"
    with pytest.raises(BackboneLoadError, match="model.dtype"):
        load_backbone(str(tiny_dirs["llava"]), dtype="float64")


# ---- refusals ----


@pytest.fixture
def causal_copy(tiny_dirs, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_dirs["causal_lm"], folder)
    return folder


def test_auto_map_refused_without_trust_remote_code(causal_copy):
    config_file = causal_copy / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config_file.write_text(json.dumps(config))
    with pytest.raises(BackboneLoadError, match=r"model\.trust_remote_code"):
        load_backbone(str(causal_copy))


def test_python_file_refused_without_trust_remote_code(causal_copy):
    (causal_copy / "modeling_evil.py").write_text("raise SystemExit('must never run')\n")
    with pytest.raises(BackboneLoadError, match=r"model\.trust_remote_code=true"):
        load_backbone(str(causal_copy))
    # Allowed explicitly, the (standard, auto_map-free) model loads; the stray file is never imported.
    backbone = load_backbone(str(causal_copy), trust_remote_code=True)
    assert backbone.family == "causal_lm"


def test_unknown_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneLoadError) as info:
        load_backbone("mmembed-nobody/no-such-model-for-tests")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "mmembed-nobody/no-such-model-for-tests" in message
    assert "local folder" in message
    assert "model.name_or_path=" in message


def test_folder_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackboneLoadError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_file_instead_of_folder(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(BackboneLoadError, match="is a file"):
        load_backbone(str(weights))


def test_qwen2_vl_processor_loads_without_torchvision(tiny_dirs):
    """transformers builds Qwen2-VL's video processor only with torchvision; the loader falls back to
    the same processor class without one, and it still expands image tokens."""
    from transformers import AutoProcessor, Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        with pytest.raises(OSError):
            AutoProcessor.from_pretrained(tiny_dirs["qwen2_vl"])
    backbone = load_backbone(str(tiny_dirs["qwen2_vl"]))
    assert isinstance(backbone.processor, Qwen2VLProcessor)
    inputs = backbone.processor(
        text=[f"{backbone.image_token} hi"], images=[_image(0, size=(56, 56))], return_tensors="pt"
    )
    pad_id = backbone.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 56x56 px -> 4x4 patches of 14 px -> merged 2x2 -> 4 image tokens.
    assert int((inputs["input_ids"] == pad_id).sum()) == 4
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_default_with_a_projector_suffix_names_that_recipe_s_folder(tmp_path):
    from mmembed.errors import ConfigError
    from mmembed.models.model_sources import resolve_name_or_path
    from mmembed.models.smol_llava.assembly import MARKER, RECIPES

    for recipe in RECIPES.values():  # prepared folders (marker + config) are used as they are, not rebuilt
        (tmp_path / recipe).mkdir()
        (tmp_path / recipe / MARKER).write_text("{}")
        (tmp_path / recipe / "config.json").write_text("{}")
    assert resolve_name_or_path("default:label_words", str(tmp_path)) == str(tmp_path / "smol_llava-v3-label-words")
    assert resolve_name_or_path("default:mlp", str(tmp_path)) == str(tmp_path / "smol_llava-v1")
    assert resolve_name_or_path("default", str(tmp_path)) == str(tmp_path / "smol_llava-v2")
    assert resolve_name_or_path("default_model_copy", str(tmp_path)) == "default_model_copy"
    with pytest.raises(ConfigError, match="projector_type='conv'"):
        resolve_name_or_path("default:conv", str(tmp_path))
