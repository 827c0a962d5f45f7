"""The model factory builds each model's Featurizer once, with its final prompts and class, and the embedders
it returns say what they can encode (models/encoder.py's `capabilities`)."""

from __future__ import annotations

import shutil

import pytest

from mmembed.models.encoder import capabilities
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.featurizer import Featurizer
from mmembed.models.mmgem.extension import MMGEMExtension, MMGEMFeaturizer
from mmembed.models.prompts import PromptConfig, PromptRenderer, save_prompts

SAVED = PromptConfig(text="saved: <sent>", image="<image> saved", chat_template=False)


@pytest.fixture
def constructions(monkeypatch):
    """Every Featurizer and PromptRenderer built while the test runs (copies included: they get a renderer)."""
    built = {"featurizers": [], "renderers": 0}
    featurizer_init, renderer_init = Featurizer.__init__, PromptRenderer.__init__

    def counting_featurizer(self, *args, **kwargs):
        built["featurizers"].append(self)
        featurizer_init(self, *args, **kwargs)

    def counting_renderer(self, *args, **kwargs):
        built["renderers"] += 1
        renderer_init(self, *args, **kwargs)

    monkeypatch.setattr(Featurizer, "__init__", counting_featurizer)
    monkeypatch.setattr(PromptRenderer, "__init__", counting_renderer)
    return built


@pytest.fixture(scope="module")
def model_with_saved_prompts(tiny_smol_llava_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_prompts") / "model"
    shutil.copytree(tiny_smol_llava_dir, folder)
    save_prompts(SAVED, folder)
    return folder


@pytest.mark.parametrize("extension", [None, "mmgem"])
def test_one_build_constructs_one_featurizer_with_the_saved_prompts(model_with_saved_prompts, constructions, extension):
    spec = ModelSpec(name_or_path=str(model_with_saved_prompts),
                     extension=MMGEMExtension() if extension else None)
    embedder = build_embedder(spec)
    assert len(constructions["featurizers"]) == 1 and constructions["renderers"] == 1
    # the embedder holds that very object (no copy made after it), with the prompts saved beside the model
    assert embedder.featurizer is constructions["featurizers"][0]
    assert embedder.featurizer.prompts == SAVED
    assert type(embedder.featurizer) is (MMGEMFeaturizer if extension else Featurizer)


def test_capabilities_of_the_tiny_default_model_and_a_text_only_build(tiny_smol_llava_dir):
    from mmembed.inference import Embedder

    full = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir)))
    assert full.modalities == {"text", "image"}
    assert capabilities(full) == {"text", "image", "composed"}
    assert capabilities(Embedder(full, prefix_cache=False)) == {"text", "image", "composed"}
    text_only = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), text_only=True))
    # the class still has encode_image, but without a vision tower it cannot run it
    assert hasattr(text_only, "encode_image") and text_only.modalities == {"text"}
    assert capabilities(text_only) == {"text"}
    assert capabilities(Embedder(text_only, prefix_cache=False)) == {"text"}


def test_capabilities_of_mmgem_include_regions(tiny_smol_llava_dir):
    spec = ModelSpec(name_or_path=str(tiny_smol_llava_dir), extension=MMGEMExtension())
    assert capabilities(build_embedder(spec)) == {"text", "image", "composed", "regions"}
    text_only = ModelSpec(name_or_path=str(tiny_smol_llava_dir), extension=MMGEMExtension(), text_only=True)
    assert capabilities(build_embedder(text_only)) == {"text"}
