"""One prompt precedence for every entry point: explicit > saved with the adapter > saved with the model >
config default (mmembed.models.factory). Shown through the training/evaluation config path, the
command-line detection, `Embedder.from_pretrained` and `export_merged`."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from mmembed.models.factory import ModelSpec, build_featurizer, resolve_prompts
from mmembed.models.prompts import PromptConfig, save_prompts
from tests.conftest import REPO

ADAPTER, MODEL, DEFAULT, EXPLICIT = (PromptConfig(system=s) for s in ("adapter", "model", "default", "explicit"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_smol_llava_dir, tmp_path_factory):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.lora import apply_lora

    out = tmp_path_factory.mktemp("adapter")
    apply_lora(load_backbone(str(tiny_smol_llava_dir)).model, r=2, alpha=4, dropout=0.0).save_pretrained(str(out))
    save_prompts(ADAPTER, out)
    return out


def test_resolution_order(tmp_path):
    adapter, model = tmp_path / "adapter", tmp_path / "model"
    adapter.mkdir(), model.mkdir()
    save_prompts(ADAPTER, adapter), save_prompts(MODEL, model)
    spec = ModelSpec(adapter=str(adapter), prompts=EXPLICIT, default_prompts=DEFAULT)
    assert resolve_prompts(spec, str(model)) == (EXPLICIT, "explicit")
    spec.prompts = None
    assert resolve_prompts(spec, str(model)) == (ADAPTER, "adapter")
    spec.adapter = None
    assert resolve_prompts(spec, str(model)) == (MODEL, "model")
    assert resolve_prompts(spec, str(tmp_path)) == (DEFAULT, "default")


def _hydra_cfg(overrides):
    """A config composed the way `python src/eval.py <overrides>` composes it, with HydraConfig set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize(("extra", "expected"), [([], "adapter"), (["prompt.system=explicit"], "explicit"),
                                                 (["prompt=raw"], "explicit")])
def test_train_and_eval_configs_follow_the_precedence(tiny_smol_llava_dir, adapter_dir, extra, expected):
    from mmembed.run.config import model_spec

    cfg = _hydra_cfg([f"model.name_or_path={tiny_smol_llava_dir}", f"adapter={adapter_dir}", *extra])
    try:
        prompts = build_featurizer(model_spec(cfg)).prompts
    finally:
        HydraConfig.instance().cfg = None
    if expected == "adapter":
        assert prompts == ADAPTER
    else:
        assert prompts != ADAPTER and prompts == PromptConfig.from_mapping(dict(cfg.prompt))


def test_embedder_from_pretrained_and_export_follow_the_precedence(tiny_smol_llava_dir, adapter_dir, tmp_path):
    from mmembed.inference import Embedder
    from mmembed.inference.export import export_merged

    assert Embedder.from_pretrained(tiny_smol_llava_dir, adapter=adapter_dir).prompts == ADAPTER
    assert Embedder.from_pretrained(tiny_smol_llava_dir, adapter=adapter_dir, prompts=EXPLICIT).prompts == EXPLICIT
    assert Embedder.from_pretrained(tiny_smol_llava_dir).prompts == PromptConfig()  # Python's default: E5-V's
    exported = export_merged(tmp_path / "merged", adapter=adapter_dir, model=tiny_smol_llava_dir)
    assert Embedder.from_pretrained(exported).prompts == ADAPTER  # now saved with the model folder
    assert Embedder.from_pretrained(exported, prompts=EXPLICIT).prompts == EXPLICIT
