"""MM-GEM on the tiny SmolLlava: the [EMB] token, h1 / h2 against hand computations, what trains, what the
adapter folder keeps, the joint objective as the sum of its parts, and `experiment=mmgem` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.errors import ConfigError
from mmembed.inference import Embedder
from mmembed.models.factory import LoraSpec, ModelSpec, build_embedder, build_featurizer
from mmembed.models.mmgem.extension import MMGEMEmbedder, MMGEMExtension, MMGEMFeaturizer, MMGEMVisionHeads
from mmembed.models.prompts import PromptConfig
from mmembed.objectives import Captioning, ImageTextInfoNCE, StepContext, WeightedSum
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train

PROMPTS = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")
IMAGE_ID, EMB_ID = 49152, 49153  # SmolLM2's 49152 tokens, then <image>, then the added [EMB]
CAPTIONS = ["A dog runs in the snow.", "Two children play soccer.", "A red car on a street.", "A man plays guitar."]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _spec(model_dir, **changes) -> ModelSpec:
    extension = MMGEMExtension(**changes.pop("extension", {}))
    return ModelSpec(name_or_path=str(model_dir), prompts=PROMPTS, extension=extension, **changes)


def _trained(model_dir, r: int = 4):
    """A LoRA'd MM-GEM embedder whose trainable weights are all moved off their initial values."""
    embedder = build_embedder(_spec(model_dir), trainable=True, lora=LoraSpec(r=r, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in embedder.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return embedder.eval()


def test_emb_token_is_appended_and_captions_get_grid_squared_placeholders(tiny_smol_llava_dir):
    featurizer = build_featurizer(_spec(tiny_smol_llava_dir))
    assert isinstance(featurizer, MMGEMFeaturizer)
    assert featurizer.renderer.render("text", "a dog") == "a dog[EMB]"
    ids = featurizer.featurize_text(["a dog", "two cats play"])["input_ids"]
    plain = featurizer.tokenizer(["a dog", "two cats play"], add_special_tokens=False)["input_ids"]
    assert ids[1].tolist() == plain[1] + [EMB_ID]  # the longer row: no padding, the text's own ids, then [EMB]
    assert ids[0, -1].item() == EMB_ID  # left padding keeps [EMB] last, where the last-token pooler reads
    for grid in (3, 2):
        featurizer = build_featurizer(_spec(tiny_smol_llava_dir, extension={"grid": grid}))
        inputs = featurizer.caption_inputs(_images(2), ["a dog", "a cat"], "<image>")
        assert (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [grid * grid] * 2
    # a lone image has no tokens at all: h1 embeds it; a composed query keeps the prompt path
    assert set(featurizer.featurize_images(_images(2))) == {"pixel_values"}
    assert "input_ids" in featurizer.featurize_images(_images(1), ["make it red"], kind="cir_query")


def test_h1_and_h2_equal_the_hand_computation_and_emb_starts_at_the_mean_row(tiny_smol_llava_dir):
    from mmembed.models.backbones import load_backbone

    embedder = build_embedder(_spec(tiny_smol_llava_dir))
    assert isinstance(embedder, MMGEMEmbedder)
    original = load_backbone(str(tiny_smol_llava_dir)).model
    table = embedder.model.get_input_embeddings().weight
    assert table.shape[0] == EMB_ID + 1
    assert torch.allclose(table[EMB_ID], original.get_input_embeddings().weight.mean(0), atol=1e-6)
    body = embedder.model.model
    heads = body.multi_modal_projector
    assert isinstance(heads, MMGEMVisionHeads)
    pixels = embedder.featurizer.featurize_images(_images(3))["pixel_values"]
    with torch.no_grad():
        fmap = original.model.vision_tower.forward_features(pixels)  # [3, 1280, 7, 7]
        h1_by_hand = F.normalize(heads.h1(fmap.mean(dim=(2, 3))), dim=-1)
        bins = [(0, 3), (2, 5), (4, 7)]  # adaptive pooling 7 -> 3
        prefix = torch.stack([fmap[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in bins for c0, c1 in bins], 1)
        h2_by_hand = original.model.multi_modal_projector(prefix)
        assert fmap.shape[1:] == (1280, 7, 7)
        assert torch.allclose(embedder(pixel_values=pixels), h1_by_hand, atol=1e-5)
        assert torch.allclose(body.get_image_features(pixel_values=pixels), h2_by_hand, atol=1e-5)


@pytest.mark.slow  # optimizer steps on MM-GEM, then a save and a reload
def test_lora_trains_the_emb_row_heads_and_adapters_only_and_the_adapter_folder_restores_them(
        tiny_smol_llava_dir, tmp_path):
    embedder = _trained(tiny_smol_llava_dir)
    trainable = [n for n, p in embedder.model.named_parameters() if p.requires_grad]
    kinds = {"lora": 0, "heads": 0, "emb": 0}
    for name in trainable:
        if "lora_" in name:
            kinds["lora"] += 1
        elif "multi_modal_projector.modules_to_save" in name:
            kinds["heads"] += 1
        elif "trainable_tokens_delta" in name:
            kinds["emb"] += 1
        else:
            raise AssertionError(f"{name} should be frozen")
    assert kinds["lora"] > 0 and kinds["heads"] == 8 and kinds["emb"] == 1  # h1 + h2: 2 Linear each
    assert not any("vision_tower" in n for n in trainable)
    images, texts = _images(3), ["a dog", "a red car", "two children play"]
    with torch.no_grad():
        expected = embedder.encode_image(images), embedder.encode_text(texts)
    embedder.model.save_pretrained(tmp_path / "adapter")
    for merge in (True, False):
        loaded = build_embedder(_spec(tiny_smol_llava_dir, adapter=str(tmp_path / "adapter"), merge_adapter=merge))
        with torch.no_grad():
            got = loaded.encode_image(images), loaded.encode_text(texts)
        assert torch.allclose(got[0], expected[0], atol=1e-5), merge
        assert torch.allclose(got[1], expected[1], atol=1e-5), merge
    fast = Embedder(build_embedder(_spec(tiny_smol_llava_dir, adapter=str(tmp_path / "adapter"))), image_chunk=2)
    assert torch.allclose(fast.encode_image(images), expected[0], atol=1e-5)  # evaluation's inference path
    assert torch.allclose(fast.encode_text(texts), expected[1], atol=1e-5)
    with pytest.raises(ConfigError, match="model=mmgem"):  # the adapter needs the [EMB] row and heads
        build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), adapter=str(tmp_path / "adapter")))
    untrained = build_embedder(_spec(tiny_smol_llava_dir))
    with torch.no_grad():
        assert (untrained.encode_text(texts) - expected[1]).abs().max() > 1e-2  # the adapter did change them


def test_joint_objective_is_the_sum_of_its_parts_and_its_gradient_reaches_every_trained_part(tiny_smol_llava_dir):
    embedder = _trained(tiny_smol_llava_dir).train()
    rows = [{"image": img, "image_key": f"i{k}", "text": t} for k, (img, t) in enumerate(zip(_images(4), CAPTIONS))]
    contrastive, captioning = ImageTextInfoNCE(temperature=0.05, symmetric=True), Captioning(instruction="<image>")
    joint = WeightedSum({"image_text": contrastive, "captioning": captioning})
    features = joint.features(embedder.featurizer, rows)
    ctx = StepContext()
    out = joint(embedder, features, ctx)
    with torch.no_grad():
        parts = contrastive(embedder, features["image_text"], ctx).loss + captioning(embedder, features["captioning"], ctx).loss
    assert abs(out.loss.item() - parts.item()) < 1e-5
    assert abs(out.metrics["image_text/loss"] + out.metrics["captioning/loss"] - out.loss.item()) < 1e-5
    out.loss.backward()
    grads = {n: p.grad for n, p in embedder.model.named_parameters() if p.requires_grad}
    reached = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    for part in ("h1.0.weight", "h2.linear_1.weight", "trainable_tokens_delta", "lora_B"):
        assert any(part in n for n in reached), part
    assert all(p.grad is None for n, p in embedder.model.named_parameters() if not p.requires_grad)


def test_llm_image_route_and_refusals(tiny_smol_llava_dir):
    embedder = build_embedder(_spec(tiny_smol_llava_dir, extension={"image_embedding": "llm"}))
    inputs = embedder.featurizer.featurize_images(_images(2))
    assert (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [9, 9] and inputs["input_ids"][0, -1] == EMB_ID
    with torch.no_grad():
        assert embedder(**inputs).shape == (2, embedder.model.config.text_config.hidden_size)
    with pytest.raises(ConfigError, match="image_embedding"):
        MMGEMExtension(image_embedding="clip")


@pytest.mark.slow  # a training run
def test_experiment_mmgem_trains_two_steps_and_writes_an_adapter_that_loads(tiny_smol_llava_dir, tmp_path):
    cfg = compose_train(["experiment=mmgem", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
                         "data.batch_size=4", "val=none", "validate_before_training=false", "~logger",
                         "lora.r=4", "data.train_limit=8"], tmp_path / "run")
    assert cfg.objective.weights == {"image_text": 1.0, "captioning": 1.0}
    assert cfg.objective.parts.captioning.instruction == "<image>" and cfg.prompt.suffix == "[EMB]"
    summary = run_training(cfg)
    assert summary["global_step"] == 2
    metrics = summary["metrics"]
    assert {"train/image_text/loss", "train/captioning/loss"} <= set(metrics)
    adapter = tmp_path / "run" / "adapters" / "last"
    loaded = build_embedder(_spec(tiny_smol_llava_dir, adapter=str(adapter)))
    with torch.no_grad():
        assert loaded.encode_image(_images(2)).shape[0] == 2
    # by its folder alone: the adapter's mmembed_model.json names the extension (no model=mmgem needed)
    from mmembed.inference import Embedder

    by_folder = Embedder.from_pretrained(tiny_smol_llava_dir, adapter=adapter, dtype="float32")
    with torch.no_grad():
        assert torch.allclose(by_folder.encode_text(["a dog"]), loaded.encode_text(["a dog"]), atol=1e-5)
        assert torch.allclose(by_folder.encode_image(_images(2)), loaded.encode_image(_images(2)), atol=1e-5)


def test_conflict_arms_leave_the_zero_weighted_part_out(tmp_path):
    from hydra.utils import instantiate

    arms = {"joint": ["captioning", "image_text"], "embedding_only": ["image_text"], "captioning_only": ["captioning"]}
    for arm, parts in arms.items():
        cfg = compose_train(["experiment=mmgem", f"arm={arm}"], tmp_path / arm)
        objective = instantiate(cfg.objective, _convert_="all")
        assert sorted(objective.parts) == parts, arm
        assert objective.disabled == sorted(set(arms["joint"]) - set(parts))
    with pytest.raises(ConfigError, match="at least one part"):
        WeightedSum({"a": contrastive_part()}, weights={"a": 0.0})


def contrastive_part() -> ImageTextInfoNCE:
    return ImageTextInfoNCE(temperature=0.05, symmetric=True)


def test_the_same_recipe_on_a_llava_checkpoint(smol_tokenizer_dir, tmp_path):
    """A LLaVA-1.5 folder (CLIP tower, 4x4 = 16 tokens after the CLS is dropped): h2 is its own projector,
    the prefix is grid x grid, h1 embeds images outside the LLM, and the adapter round-trips."""
    from tests.tiny_models import build_tiny

    folder = build_tiny("llava", smol_tokenizer_dir, tmp_path / "llava")
    spec = lambda **kw: _spec(folder, extension={"grid": 2}, **kw)  # noqa: E731
    embedder = build_embedder(spec(), trainable=True, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    featurizer = embedder.featurizer
    inputs = featurizer.caption_inputs(_images(2), ["a dog", "a cat"], "<image>")
    assert (inputs["input_ids"] == featurizer.tokenizer.convert_tokens_to_ids("<image>")).sum(1).tolist() == [4, 4]
    with torch.no_grad():
        for p in embedder.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        hidden = embedder.backbone.body(**{k: v for k, v in inputs.items() if k != "labels"}).last_hidden_state
        assert hidden.shape[1] == inputs["input_ids"].shape[1]
        images, texts = embedder.encode_image(_images(3)), embedder.encode_text(["a dog", "a red car"])
    assert images.shape == (3, 64) and texts.shape == (2, 64)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    embedder.model.save_pretrained(tmp_path / "adapter")
    loaded = build_embedder(spec(adapter=str(tmp_path / "adapter")))
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(_images(3)), images, atol=1e-5)
        assert torch.allclose(loaded.encode_text(["a dog", "a red car"]), texts, atol=1e-5)


@pytest.mark.parametrize("train,heads,emb", [(("emb", "h1"), {"h1"}, 1), (("h2",), {"h2"}, 0)])
def test_an_arm_trains_only_the_parts_its_objective_reaches(tiny_smol_llava_dir, train, heads, emb):
    """conf/arm/*: the embedding arm never runs h2 and the captioning arm never runs h1 or the [EMB] row;
    a trainable part without a gradient makes DDP fail at the second step, so those parts stay frozen."""
    spec = _spec(tiny_smol_llava_dir, extension={"train": train})
    embedder = build_embedder(spec, trainable=True, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in embedder.model.named_parameters() if p.requires_grad]
    assert {h for h in ("h1", "h2") if any(f"modules_to_save.default.{h}." in n for n in trainable)} == heads
    assert sum("trainable_tokens_delta" in n for n in trainable) == emb
    with pytest.raises(ConfigError, match="model.extension.train"):
        MMGEMExtension(train=("h3",))


def test_a_label_word_base_is_refused_with_a_config_error():
    """model=mmgem on the label-word base (what experiment=align writes) was a bare TypeError at the first image."""
    from torch import nn

    from mmembed.models.smol_llava.projectors.label_words import LabelWordProjector

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.multi_modal_projector = LabelWordProjector(vision_dim=4, num_classes=3, seq_length=4, max_name_tokens=2,
                                                            top_k=1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.embed, self.config = Body(), nn.Embedding(8, 6), type("C", (), {"image_grid": None})()

        def get_input_embeddings(self):
            return self.embed

    tokenizer = type("T", (), {"__len__": lambda self: 8, "convert_tokens_to_ids": lambda self, t: 7})()
    with pytest.raises(ConfigError, match="label-word base"):
        MMGEMExtension().prepare_model(Model(), tokenizer)
