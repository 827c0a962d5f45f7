"""Strategies and memory options as config: trainer=ddp|fsdp|deepspeed, model.quantization, GradCache via the pipeline."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from mmembed.errors import MMEmbedError
from mmembed.lit import strategies
from mmembed.lit.strategies import DecoderLayerPolicy, StrategyUnavailableError, fsdp_strategy, preflight
from mmembed.models.quantization import QuantizationUnavailableError, quantization_config
from mmembed.run.training import run_training
from tests.pipeline.helpers import build_embedder, compose_train

TINY = ["experiment=text_only", "model.text_only=true", "val=stsb_dev", "trainer.max_steps=2", "data.batch_size=4", "val.sets.stsb_dev.limit=8", "val.sets.stsb_dev.batch_size=8"]


def test_trainer_ddp_builds_ddp_without_unused_parameter_search(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_train(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8"], tmp_path)
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 8 and cfg.trainer.precision == "bf16-mixed"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is False


def test_trainer_fsdp_uses_orig_params_and_wraps_decoder_layers(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaMLP

    strategy = instantiate(compose_train(["trainer=fsdp"], tmp_path).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, DecoderLayerPolicy)
    assert policy.matches(LlamaDecoderLayer.__new__(LlamaDecoderLayer))
    assert not policy.matches(LlamaMLP.__new__(LlamaMLP)) and not policy.matches(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="use_orig_params"):
        fsdp_strategy(use_orig_params=False)


@pytest.mark.skipif(strategies.deepspeed_available(), reason="deepspeed is installed here")
def test_trainer_deepspeed_without_the_package_names_the_install_command(tmp_path):
    cfg = compose_train(["trainer=deepspeed"], tmp_path)
    assert cfg.trainer.strategy.stage == 2
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="pip install deepspeed"):  # hydra wraps the factory's error
        instantiate(cfg.trainer.strategy)
    # run_training refuses before the data or the model is touched (the model path does not exist)
    with open_dict(cfg):
        cfg.model.name_or_path = str(tmp_path / "no-such-model")
    with pytest.raises(StrategyUnavailableError, match="pip install deepspeed"):
        run_training(cfg)
    assert issubclass(StrategyUnavailableError, MMEmbedError)  # printed as one line by src/train.py


def test_gradcache_with_deepspeed_is_refused(monkeypatch):
    monkeypatch.setattr(strategies, "deepspeed_available", lambda: True)
    trainer = {"strategy": {"_target_": "mmembed.lit.strategies.deepspeed_strategy", "stage": 2}}
    preflight(trainer, None)  # fine without GradCache
    with pytest.raises(StrategyUnavailableError, match="GradCache"):
        preflight(trainer, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_4bit_quantization_without_cuda_says_it_needs_a_gpu_and_bitsandbytes(tmp_path):
    assert quantization_config(None) is None
    with pytest.raises(ValueError, match="expected null or 4bit"):
        quantization_config("3bit")
    with pytest.raises(QuantizationUnavailableError, match=r"needs a CUDA GPU and bitsandbytes.*no CUDA GPU"):
        quantization_config("4bit")
    # through the config, before any weights are read (the model path does not even exist)
    cfg = compose_train(["model.quantization=4bit", f"model.name_or_path={tmp_path / 'none'}"], tmp_path)
    with pytest.raises(QuantizationUnavailableError, match="model.quantization=null"):
        build_embedder(cfg, trainable=True)


def test_pipeline_trains_with_gradcache_and_the_trainers_clipping(tiny_smol_llava_dir, tmp_path):
    # conf/trainer/cpu.yaml sets gradient_clip_val=1.0, which Lightning refuses under manual
    # optimisation: the pipeline hands it to the module instead of failing (or dropping it).
    overrides = TINY + [f"model.name_or_path={tiny_smol_llava_dir}", "grad_cache.chunk_size=5", "validate_before_training=false"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.trainer.gradient_clip_val == 1.0
    with open_dict(cfg):
        cfg.data.val_sets = None
    summary = run_training(cfg)
    assert summary["global_step"] == 2
    assert summary["metrics"]["train/num_negatives"] == 4 * 2 - 1
    assert torch.isfinite(torch.tensor(summary["metrics"]["train/loss"]))
