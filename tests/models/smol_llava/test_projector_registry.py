"""The projector registry: config.json's projector_type picks an entry, each entry owns its settings, old
folders (every kind's fields in one config.json) load unchanged, and a new projector is one class + one entry."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration
from mmembed.models.smol_llava.projectors import PROJECTORS, Projector, ProjectorKind, projector_kind
from mmembed.models.smol_llava.projectors.base import ProjectorSettings
from mmembed.models.smol_llava.projectors.grounded import GroundedProjector, GroundedSettings
from mmembed.models.smol_llava.projectors.label_words import LabelWordProjector

TINY_TEXT = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)
# What config.json of a default-model folder assembled before the registry holds: every kind's fields.
PRE_REGISTRY_FIELDS = {
    "grounded_learn_mlp_weight": True, "grounded_mlp_weight": 1.0, "grounded_num_classes": 7, "grounded_pool": "image",
    "grounded_renormalize": False, "grounded_temperature": 2.0, "grounded_token_scale": 3.0, "grounded_top_k": 2,
    "label_max_name_tokens": 1, "label_prefix_length": 0, "label_separator_length": 1,
    "label_template": "a photo of {}", "label_top_k": 3,
}


def test_each_recipe_folder_name_is_kept():
    assert {name: kind.recipe for name, kind in PROJECTORS.items()} == {
        "mlp": "smol_llava-v1", "grounded": "smol_llava-v2", "label_words": "smol_llava-v3-label-words"}
    assert [name for name, kind in PROJECTORS.items() if kind.uses_holes] == ["label_words"]


@pytest.mark.parametrize("projector_type, cls", [("grounded", GroundedProjector), ("label_words", LabelWordProjector)])
def test_a_pre_registry_folder_loads_with_its_settings_and_outputs(tmp_path, projector_type, cls):
    config = SmolLlavaConfig(text_config=TINY_TEXT, image_token_id=63, projector_type=projector_type,
                             image_seq_length=5 if projector_type == "label_words" else 49, **PRE_REGISTRY_FIELDS)
    torch.manual_seed(0)
    model = SmolLlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[k] for k in PRE_REGISTRY_FIELDS} == PRE_REGISTRY_FIELDS  # what old folders hold, kept
    loaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    projector = loaded.model.multi_modal_projector
    assert type(projector) is cls and projector.classifier.out_features == 7
    if cls is GroundedProjector:
        assert (projector.top_k, projector.temperature, projector.pool, projector.token_scale) == (2, 2.0, "image", 3.0)
    features = torch.randn(2, 1280, 7, 7)
    torch.testing.assert_close(loaded.model.project_images(vision_features=features)[0],
                               model.model.project_images(vision_features=features)[0], rtol=0, atol=0)


def test_settings_come_from_the_config_and_default_where_it_has_none():
    settings = GroundedSettings.from_config(SmolLlavaConfig(text_config=TINY_TEXT, grounded_top_k=4))
    assert settings == GroundedSettings(grounded_top_k=4)
    assert settings.grounded_pool == "patch" and settings.grounded_num_classes == 1000


def test_a_setting_of_the_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="grounded_top_k='5'.*expected a int"):
        projector_kind("grounded").build(SmolLlavaConfig(text_config=TINY_TEXT, projector_type="grounded",
                                                         grounded_top_k="5"))
    with pytest.raises(ConfigError, match="projector_type='conv': expected one of"):
        projector_kind("conv")


def test_assembly_refuses_settings_the_projector_does_not_take():
    with pytest.raises(ConfigError, match="for projector_type='mlp'; it takes \\[\\]"):
        projector_kind("mlp").check_overrides({"grounded_top_k": 3})
    projector_kind("label_words").check_overrides({"label_top_k": 2})  # a tunable setting passes


# ---- a new projector: one Projector, its settings and kind, one registry entry ----
@dataclass(frozen=True)
class ScaledSettings(ProjectorSettings):
    scaled_factor: float = 2.0


class ScaledProjector(Projector):
    """Each image token is the mean feature's first `hidden` channels times a factor (no learned weights)."""

    def __init__(self, hidden: int, factor: float):
        super().__init__()
        self.hidden, self.factor = hidden, factor
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the model reads the projector's dtype from a parameter

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features[..., : self.hidden] * self.factor


class ScaledKind(ProjectorKind):
    name, recipe, settings = "scaled", "smol_llava-test-scaled", ScaledSettings

    def build(self, config) -> ScaledProjector:
        return ScaledProjector(config.text_config.hidden_size, ScaledSettings.from_config(config).scaled_factor)


def test_a_new_projector_is_one_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(PROJECTORS, "scaled", ScaledKind())
    config = SmolLlavaConfig(text_config=TINY_TEXT, image_token_id=63, projector_type="scaled", scaled_factor=3.0)
    model = SmolLlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    loaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    features = torch.randn(1, 1280, 7, 7)
    expected = features.flatten(2).transpose(1, 2)[..., :16] * 3.0
    torch.testing.assert_close(loaded.model.get_image_features(vision_features=features), expected)
    ids = torch.tensor([[5] + [63] * 49 + [7]])
    assert loaded.model(input_ids=ids, vision_features=features).last_hidden_state.shape == (1, 51, 16)
