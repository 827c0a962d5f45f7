"""Multi-device strategies from config (DDP / FSDP / DeepSpeed) and the checks run before any model loads.

`conf/trainer/{ddp,fsdp,deepspeed}.yaml` name the factories below as the Trainer's `strategy`.
`preflight(cfg)` fails fast (before the backbone loads) on a strategy whose package is missing or a
combination mmembed does not support; `manual_optimization_split` hands the two trainer settings
Lightning refuses under manual optimisation (GradCache) to the LightningModule instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from mmembed.errors import ConfigError, MMEmbedError


class StrategyUnavailableError(MMEmbedError, RuntimeError):
    """The configured distributed strategy cannot run here; the message says what to install or change."""


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _strategy_name(trainer_cfg: Mapping) -> str:
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", ""))
    return str(strategy or "")


def uses_deepspeed(trainer_cfg: Mapping) -> bool:
    return "deepspeed" in _strategy_name(trainer_cfg).lower()


def require_deepspeed() -> None:
    if not deepspeed_available():
        raise StrategyUnavailableError(
            "trainer=deepspeed needs the DeepSpeed package, which is an optional extra: "
            "`pip install deepspeed` (on a machine with CUDA GPUs). Or use trainer=ddp / trainer=fsdp."
        )


def preflight(trainer_cfg: Mapping, chunk_size: int | None) -> None:
    """Refuse, before anything is loaded, what the strategy cannot run (`chunk_size`: GradCache's, or None)."""
    if uses_deepspeed(trainer_cfg):
        require_deepspeed()
        if chunk_size:
            raise StrategyUnavailableError(
                "grad_cache.chunk_size (GradCache) is not supported with trainer=deepspeed: DeepSpeed's engine owns "
                "backward and gradient reduction, and GradCache runs several backward passes per step. "
                "Use trainer=ddp (tested) or trainer=fsdp with GradCache, or grad_cache.chunk_size=null."
            )


def manual_optimization_split(trainer_cfg: Mapping, chunk_size: int | None) -> tuple[dict, dict]:
    """(Trainer overrides, LightningModule kwargs) for GradCache's manual optimisation.

    Lightning raises on `Trainer(gradient_clip_val>0)` or `accumulate_grad_batches>1` with manual
    optimisation; the module applies the user's values itself (same semantics: clip before each
    optimizer step, divide each micro-batch's loss by the accumulation count). Without GradCache
    both dicts are empty and the Trainer does the work as usual.
    """
    if not chunk_size:
        return {}, {}
    module_kwargs = {
        "gradient_clip_val": trainer_cfg.get("gradient_clip_val"),
        "gradient_clip_algorithm": trainer_cfg.get("gradient_clip_algorithm") or "norm",
        "accumulate_grad_batches": int(trainer_cfg.get("accumulate_grad_batches") or 1),
    }
    return {"gradient_clip_val": None, "accumulate_grad_batches": 1}, module_kwargs


# ---- strategy factories (Hydra `_target_`s) ----
def ddp_strategy(**kwargs: Any):
    """Lightning's DDPStrategy; `find_unused_parameters: false` (every LoRA adapter takes part in each step)."""
    from lightning.pytorch.strategies import DDPStrategy

    kwargs.setdefault("find_unused_parameters", False)
    return DDPStrategy(**kwargs)


class DecoderLayerPolicy:
    """FSDP auto-wrap policy: one FSDP unit per transformer block, found by class name.

    `layer_classes` are class names (e.g. "LlamaDecoderLayer", "Qwen2VLDecoderLayer"); the default
    wraps every module whose class name ends in "DecoderLayer" (every transformers decoder).
    """

    def __init__(self, layer_classes: Iterable[str] | None = None):
        self.layer_classes = set(layer_classes or ())

    def matches(self, module: nn.Module) -> bool:
        name = type(module).__name__
        return name in self.layer_classes if self.layer_classes else name.endswith("DecoderLayer")

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else self.matches(module)


def fsdp_strategy(layer_classes: Iterable[str] | None = None, **kwargs: Any):
    """Lightning's FSDPStrategy wrapping each decoder layer. LoRA trains a few parameters inside frozen
    layers, so each flat parameter mixes frozen and trainable tensors: that needs `use_orig_params=True`."""
    from lightning.pytorch.strategies import FSDPStrategy

    if kwargs.get("use_orig_params") is False:
        raise ConfigError(
            "trainer.strategy.use_orig_params=false cannot train LoRA on a frozen base with FSDP "
            "(each FSDP unit mixes frozen and trainable parameters); set it to true"
        )
    kwargs["use_orig_params"] = True
    kwargs.setdefault("auto_wrap_policy", DecoderLayerPolicy(layer_classes))
    return FSDPStrategy(**kwargs)


def deepspeed_strategy(**kwargs: Any):
    """Lightning's DeepSpeedStrategy (ZeRO stage from config), with mmembed's install hint when missing."""
    require_deepspeed()
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(**kwargs)
