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

    from mmembed.models.smol_llava.tower import load_packaged_efficientnet_lite0

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


# ---- recipe smol_llava-v2: the grounded projector; the text side unchanged from v1 ----
def test_default_folder_is_the_grounded_recipe(default_model_dir, default_backbone):
    from mmembed.models.smol_llava.assembly import RECIPE_VERSION, imagenet_class_names
    from mmembed.models.smol_llava.projectors.grounded import (
        GroundedProjector,
        class_name_table,
        typical_embedding_norm,
    )
    from mmembed.models.smol_llava.tower import load_packaged_efficientnet_lite0

    assert default_model_dir.name == RECIPE_VERSION == "smol_llava-v2"
    assert json.loads((default_model_dir / "mmembed_default_model.json").read_text())["recipe"] == "smol_llava-v2"
    model = default_backbone.model
    projector = model.model.multi_modal_projector
    assert model.config.projector_type == "grounded" and isinstance(projector, GroundedProjector)
    head = load_packaged_efficientnet_lite0()._fc
    assert torch.equal(projector.classifier.weight, head.weight) and torch.equal(projector.classifier.bias, head.bias)
    embeddings = model.get_input_embeddings().weight
    assert model.config.grounded_token_scale == pytest.approx(typical_embedding_norm(embeddings), rel=1e-6)
    names = imagenet_class_names()
    assert names[1] == "goldfish" and names[2] == "great white shark"
    rows = class_name_table([names[1], names[2]], default_backbone.tokenizer, embeddings)
    assert torch.equal(projector.class_table[1:3], rows)
    # a fresh default starts with the MLP path at zero output: the grounded tokens alone
    assert not projector.mlp.linear_2.weight.any() and not projector.mlp.linear_2.bias.any()


@pytest.fixture(scope="module")
def mlp_default_backbone():
    from mmembed.models.backbones import load_backbone
    from mmembed.models.smol_llava.assembly import ensure_default_model

    return load_backbone(str(ensure_default_model(projector_type="mlp")))


def test_text_embeddings_are_bit_identical_to_the_mlp_default(default_backbone, mlp_default_backbone):
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.prompts import PromptConfig

    assert mlp_default_backbone.name_or_path.endswith("smol_llava-v1")
    assert mlp_default_backbone.model.config.projector_type == "mlp"
    texts = ["A dog runs across the grass.", "Two people sit on a bench", "cat"]
    with torch.no_grad():
        new, old = (MLLMEmbedder(b, PromptConfig(system="")).encode_text(texts)
                    for b in (default_backbone, mlp_default_backbone))
    assert torch.equal(new, old)
    ours, theirs = (b.model.model.language_model.state_dict() for b in (default_backbone, mlp_default_backbone))
    image_row = default_backbone.model.config.image_token_id  # only ever replaced by image features
    assert ours.keys() == theirs.keys()
    for name in ours:
        a, b = ours[name], theirs[name]
        if name == "embed_tokens.weight":
            a, b = torch.cat([a[:image_row], a[image_row + 1:]]), torch.cat([b[:image_row], b[image_row + 1:]])
        assert torch.equal(a, b), name


# ---- recipe smol_llava-v3-label-words: the tower's top-3 class names as the LLM's own words ----
def test_label_word_recipe_writes_each_image_as_its_tower_labels_and_embeds_it_as_that_text(data_root):
    """The real build: an image's tokens are exactly "a photo of X, Y, Z" with the packaged head's top-3
    names (the label-text baseline's text), and its embedding equals that text's in the image prompt."""
    from PIL import Image

    from mmembed.baselines.label_text import TowerLabeller
    from mmembed.inference import Embedder
    from mmembed.models.smol_llava.assembly import ensure_default_model

    folder = ensure_default_model(projector_type="label_words")
    assert folder.name == "smol_llava-v3-label-words"
    config = json.loads((folder / "config.json").read_text())
    assert config["projector_type"] == "label_words" and config["label_top_k"] == 3
    embedder = Embedder.from_pretrained(str(folder), dtype="float32")
    rows = [line.rstrip("\n").split("\t") for line in (data_root / "imagenet_sample" / "classes.tsv").open()][1:]
    images = [Image.open(data_root / "imagenet_sample" / "images" / r[3]).convert("RGB") for r in rows[::250]]
    body, inner = embedder.backbone.body, embedder.embedder
    inputs = inner.featurize_images(images)
    assert int((inputs["input_ids"][0] == config["image_token_id"]).sum()) == config["image_seq_length"]
    with torch.no_grad():
        maps = body.get_vision_features(inputs["pixel_values"]).flatten(2).transpose(1, 2)
        ids, valid = body.multi_modal_projector.label_ids(maps)
    tokenizer = embedder.backbone.tokenizer
    written = [tokenizer.decode(row[keep]) for row, keep in zip(ids, valid)]
    assert written == TowerLabeller(top_k=3)(images)
    prompt = embedder.rendered_prompts()["image"]
    texts = tokenizer([prompt.replace("<image>", w) for w in written], add_special_tokens=False,
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        from_images = embedder.encode_image(images)
        from_text = inner(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])
    assert torch.allclose(from_images, from_text, atol=1e-4)
