"""The grounded projector: image tokens are (top-k) mixtures of the LLM's class-name embeddings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.grounded import (
    GroundedProjector,
    class_name_table,
    top_k_probabilities,
    typical_embedding_norm,
)

VISION, HIDDEN, CLASSES = 8, 6, 5


def projector(**kwargs) -> GroundedProjector:
    torch.manual_seed(0)
    proj = GroundedProjector(VISION, HIDDEN, num_classes=CLASSES, **kwargs)
    with torch.no_grad():
        proj.class_table.copy_(torch.randn(CLASSES, HIDDEN))
    return proj


def test_top_k_probabilities_match_hand_computed_values():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    e = math.e
    assert torch.allclose(top_k_probabilities(logits, 2, 1.0), torch.tensor([[0, e / (e + 1), 1 / (e + 1), 0]]))
    # temperature 2 halves the logits before the softmax over the kept two: softmax([1.5, 1.0])
    s = math.exp(0.5)
    assert torch.allclose(top_k_probabilities(logits, 2, 2.0), torch.tensor([[0, s / (s + 1), 1 / (s + 1), 0]]))
    # top_k 0 keeps every class: a plain softmax
    assert torch.allclose(top_k_probabilities(logits, 0, 1.0), logits.softmax(-1))


def test_a_one_hot_class_gives_that_class_row_times_the_scale():
    proj = projector(top_k=1, token_scale=3.5, mlp=None)
    with torch.no_grad():  # class 3 wins for every input: its bias dominates
        proj.classifier.weight.zero_()
        proj.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 9.0, 0.0]))
    tokens = proj(torch.randn(2, 4, VISION))
    assert torch.equal(tokens, (3.5 * proj.class_table[3]).expand(2, 4, HIDDEN))


def test_tokens_are_the_probability_weighted_sum_of_the_top_k_rows():
    proj = projector(top_k=2, temperature=0.7, token_scale=2.0, mlp=None)
    features = torch.randn(1, 3, VISION)
    tokens = proj(features)
    logits = proj.classifier(features)[0]
    for n in range(3):  # brute force, one token at a time
        best = logits[n].argsort(descending=True)[:2]
        weights = (logits[n, best] / 0.7).softmax(-1)
        expected = 2.0 * (weights[0] * proj.class_table[best[0]] + weights[1] * proj.class_table[best[1]])
        assert torch.allclose(tokens[0, n], expected, atol=1e-6)


def test_top_k_keeps_exactly_k_classes_per_token():
    proj = projector(top_k=3, mlp=None)
    probs = proj.class_probabilities(torch.randn(2, 7, VISION))
    assert ((probs > 0).sum(-1) == 3).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2, 7))


def test_image_pool_gives_every_token_the_head_on_mean_pooled_features():
    proj = projector(top_k=2, pool="image", mlp=None)
    features = torch.randn(1, 4, VISION)
    probs = proj.class_probabilities(features)
    expected = top_k_probabilities(proj.classifier(features.mean(dim=1)), 2, 1.0)
    assert torch.allclose(probs, expected[:, None].expand(1, 4, CLASSES), atol=1e-6)
    blend = projector(top_k=2, pool="blend", mlp=None).class_probabilities(features)
    patch = top_k_probabilities(proj.classifier(features), 2, 1.0)
    assert torch.allclose(blend, (patch + probs) / 2, atol=1e-6)


def test_renormalize_restores_the_scale_for_mixtures():
    tokens = projector(top_k=3, token_scale=3.0, renormalize=True, mlp=None)(torch.randn(2, 5, VISION))
    assert torch.allclose(tokens.norm(dim=-1), torch.full((2, 5), 3.0), atol=1e-5)


def test_gradients_reach_head_table_mlp_and_mixing_weight():
    mlp = nn.Sequential(nn.Linear(VISION, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN))
    proj = projector(top_k=2, mlp=mlp, mlp_weight=0.5)
    features = torch.randn(2, 3, VISION)
    target = torch.randn(2, 3, HIDDEN)
    out = proj(features)
    ((out - target) ** 2).sum().backward()
    for name in ("classifier.weight", "class_table", "mlp.0.weight", "mlp.2.weight", "mlp_weight"):
        grad = dict(proj.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # d loss / d mlp_weight = <d loss / d out, mlp(features)>, by hand
    expected = (2 * (out - target) * mlp(features)).sum()
    assert torch.allclose(proj.mlp_weight.grad, expected.detach(), rtol=1e-5)
    # only the kept classes' table rows get gradient
    kept = proj.class_probabilities(features).reshape(-1, CLASSES).gt(0).any(0)
    assert torch.equal(proj.class_table.grad.abs().sum(-1) > 0, kept)


def test_a_fixed_mixing_weight_stays_fixed_when_the_projector_is_made_trainable():
    proj = projector(mlp=nn.Linear(VISION, HIDDEN), mlp_weight=0.25, learn_mlp_weight=False)
    proj.requires_grad_(True)  # what projector alignment does (models/factory.py)
    assert "mlp_weight" not in dict(proj.named_parameters()) and "mlp_weight" in proj.state_dict()
    assert float(proj.mlp_weight) == 0.25


@pytest.mark.parametrize("settings, words", [({"pool": "max"}, "grounded_pool"), ({"temperature": 0}, "temperature"),
                                             ({"top_k": 6}, "grounded_top_k")])
def test_bad_settings_raise_config_errors(settings, words):
    with pytest.raises(ConfigError, match=words):
        GroundedProjector(VISION, HIDDEN, num_classes=CLASSES, **settings)


class WordTokenizer:
    """Splits on spaces; ids from a fixed vocabulary (records what it was asked to tokenise)."""

    vocab = {"golden": 0, "retriever": 1, "dog": 2, "tabby": 3}

    def __init__(self):
        self.seen = []

    def __call__(self, text, add_special_tokens=False):
        self.seen.append(text)
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def test_class_name_table_rows_are_unit_mean_token_embeddings():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [2.0, 2.0]])
    tokenizer = WordTokenizer()
    table = class_name_table(["golden_retriever", "dog"], tokenizer, embeddings)
    assert tokenizer.seen == [" golden retriever", " dog"]  # underscores become spaces; a word inside a sentence
    assert torch.allclose(table, torch.tensor([[0.5, 0.5], [3.0, 4.0]]) / torch.tensor([[0.5**0.5], [5.0]]))


def test_typical_norm_is_the_median_row_norm():
    assert typical_embedding_norm(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 10.0]])) == 5.0


# ---- inside SmolLlava ----
TINY_TEXT = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)


def tiny_grounded(**overrides):
    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration

    config = SmolLlavaConfig(text_config=TINY_TEXT, image_token_id=63, projector_type="grounded",
                             grounded_num_classes=10, grounded_top_k=3, grounded_token_scale=2.0, **overrides)
    torch.manual_seed(0)
    return SmolLlavaForConditionalGeneration(config).eval()


def test_a_fresh_grounded_model_starts_with_the_mlp_path_at_zero():
    model = tiny_grounded()
    proj = model.model.multi_modal_projector
    assert isinstance(proj, GroundedProjector) and proj.mlp_weight.item() == 1.0
    features = torch.randn(2, 1280, 7, 7)
    tokens = model.model.get_image_features(vision_features=features)
    assert torch.equal(tokens, proj.grounded_tokens(features.flatten(2).transpose(1, 2)))


def test_captioning_loss_trains_the_table_through_the_llm():
    model = tiny_grounded()
    ids = torch.tensor([[5] + [63] * 49 + [7, 8, 9]])
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]
    loss = model(input_ids=ids, vision_features=torch.randn(1, 1280, 7, 7), labels=labels).loss
    loss.backward()
    proj = model.model.multi_modal_projector
    assert proj.class_table.grad.abs().sum() > 0 and proj.mlp.linear_2.weight.grad.abs().sum() > 0


def test_unknown_projector_type_is_a_config_error():
    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration

    with pytest.raises(ConfigError, match="projector_type='conv'"):
        SmolLlavaForConditionalGeneration(SmolLlavaConfig(text_config=TINY_TEXT, projector_type="conv"))


def test_grounded_folder_round_trips_and_old_folders_without_projector_type_load_as_mlp(tmp_path):
    from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration
    from mmembed.models.smol_llava.projectors.mlp import MLPProjector

    model = tiny_grounded(grounded_pool="blend", grounded_learn_mlp_weight=False, grounded_mlp_weight=0.0)
    with torch.no_grad():
        model.model.multi_modal_projector.class_table.normal_()
    model.save_pretrained(tmp_path / "grounded")
    loaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path / "grounded").eval()
    features = torch.randn(1, 1280, 7, 7)
    assert loaded.model.multi_modal_projector.pool == "blend"
    assert torch.equal(loaded.model.get_image_features(vision_features=features),
                       model.model.get_image_features(vision_features=features))

    from mmembed.models.smol_llava.modeling import SmolLlavaConfig

    torch.manual_seed(1)
    old = SmolLlavaForConditionalGeneration(SmolLlavaConfig(text_config=TINY_TEXT, image_token_id=63)).eval()
    old.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    # a folder written before the projector fields existed
    config = {k: v for k, v in config.items() if k != "projector_type" and not k.startswith("grounded_")}
    config_file.write_text(json.dumps(config))
    reloaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path / "old").eval()
    assert reloaded.config.projector_type == "mlp"
    assert type(reloaded.model.multi_modal_projector) is MLPProjector
    assert torch.equal(reloaded.model.get_image_features(vision_features=features),
                       old.model.get_image_features(vision_features=features))


def _window_means_7_to_3(features: torch.Tensor) -> torch.Tensor:
    """Brute force: adaptive 7 -> 3 pooling averages rows/columns [0, 3), [2, 5), [4, 7)."""
    windows = [(0, 3), (2, 5), (4, 7)]
    cells = [features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in windows for c0, c1 in windows]
    return torch.stack(cells, dim=1)  # [B, 9, C], row-major


def test_image_grid_pools_the_feature_map_to_grid_squared_tokens(tmp_path):
    model = tiny_grounded(image_grid=3, image_seq_length=9)
    proj = model.model.multi_modal_projector
    features = torch.randn(2, 1280, 7, 7)
    tokens = model.model.get_image_features(vision_features=features)
    assert tokens.shape == (2, 9, TINY_TEXT["hidden_size"])
    torch.testing.assert_close(tokens, proj(_window_means_7_to_3(features)), rtol=1e-5, atol=1e-6)
    # the prompt must hold 9 placeholders per image, not the full map's 49
    model(input_ids=torch.tensor([[5] + [63] * 9 + [7]]), vision_features=features[:1])
    with pytest.raises(ValueError, match="49 image placeholder tokens for 1 images of 9 tokens"):
        model(input_ids=torch.tensor([[5] + [63] * 49 + [7]]), vision_features=features[:1])
    model.save_pretrained(tmp_path / "grid")
    from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

    loaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path / "grid").eval()
    assert loaded.config.image_grid == 3
    assert torch.equal(loaded.model.get_image_features(vision_features=features), tokens)
