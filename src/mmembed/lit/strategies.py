"""Multi-device strategies from config (DDP / FSDP / DeepSpeed) and the checks run before any model loads.

`conf/trainer/{ddp,fsdp,deepspeed}.yaml` name the factories below as the Trainer's `strategy`.
`preflight(...)` fails fast (before data and backbone load) on a strategy whose package is missing or a
combination mmembed does not support (e.g. FSDP with a batch-dependent number of forward passes);
`manual_optimization_split` hands the two trainer settings Lightning refuses under manual optimisation
(GradCache) to the LightningModule instead.
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


def uses_fsdp(trainer_cfg: Mapping) -> bool:
    return "fsdp" in _strategy_name(trainer_cfg).lower()


def varying_forward_passes(objective: Any) -> str | None:
    """Why this objective's forward-pass count per step depends on the batch (None when it is fixed).

    FSDP all-gathers each unit's parameters once per forward pass, and every rank must issue the same
    all-gathers in the same order: a rank that runs one pass more waits for the others forever.
    HardNegativeNCE embeds one group per modality variant present in the rank's batch (and each distinct
    target once), so ranks with different mixes run different numbers of passes. Wrappers (WeightedSum's
    `parts`, Matryoshka's `objective`) are searched too.
    """
    from mmembed.objectives import HardNegativeNCE

    if isinstance(objective, HardNegativeNCE):
        return (f"{type(objective).__name__} runs one forward pass per modality present in each rank's batch "
                "(and per distinct target), so ranks issue different numbers of FSDP all-gathers and hang")
    inner = list((getattr(objective, "parts", None) or {}).values())
    if getattr(objective, "objective", None) is not None:
        inner.append(objective.objective)
    return next((why for why in map(varying_forward_passes, inner) if why), None)


def _whole_model_savers(callbacks_cfg: Mapping | None) -> list[str]:
    """Config keys of callbacks that write the whole base model from rank 0 (BaseModelSaver)."""
    return sorted(str(name) for name, cb in (callbacks_cfg or {}).items()
                  if isinstance(cb, Mapping) and str(cb.get("_target_", "")).endswith("BaseModelSaver"))


def preflight(trainer_cfg: Mapping, chunk_size: int | None, objective: Any = None,
              callbacks_cfg: Mapping | None = None) -> None:
    """Refuse, before the data and the model load, what the strategy cannot run.

    `chunk_size`: GradCache's, or None; `objective`: the instantiated objective (cheap: no model yet);
    `callbacks_cfg`: the run's `callbacks` config. docs/distributed.md tabulates the outcome per recipe.
    """
    if uses_deepspeed(trainer_cfg):
        require_deepspeed()
        if chunk_size:
            raise StrategyUnavailableError(
                "grad_cache.chunk_size (GradCache) is not supported with trainer=deepspeed: DeepSpeed's engine owns "
                "backward and gradient reduction, and GradCache runs several backward passes per step. "
                "Use trainer=ddp (tested) or trainer=fsdp with GradCache, or grad_cache.chunk_size=null."
            )
    if uses_fsdp(trainer_cfg):
        why = varying_forward_passes(objective) if objective is not None else None
        if why:
            chunks = " (with GradCache the chunk counts differ between ranks too)" if chunk_size else ""
            raise ConfigError(f"trainer=fsdp cannot train objective {type(objective).__name__}: {why}{chunks}. "
                              "Use trainer=ddp (each rank runs its own forward passes; tested).")
        savers = _whole_model_savers(callbacks_cfg)
        if savers:
            raise ConfigError(f"trainer=fsdp cannot run callbacks.{savers[0]} (BaseModelSaver): it writes the whole "
                              "model from rank 0, which holds only its shard under FSDP. Use trainer=ddp.")


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


# Names FSDP and activation checkpointing insert between a module and its children, which torch's
# state-dict API leaves out of its keys.
_WRAPPER_NAMES = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module"}


def _path_in(root: nn.Module, inner: nn.Module) -> str:
    """`inner`'s name in `root`'s state dict ("" for root itself), wrapper names left out as state dicts do."""
    for name, module in root.named_modules():
        if module is inner:
            return ".".join(part for part in name.split(".") if part not in _WRAPPER_NAMES)
    raise ValueError(f"{type(inner).__name__} is not a submodule of {type(root).__name__}")


def full_state_dict_of(root: nn.Module, inner: nn.Module) -> dict:
    """`inner`'s whole state dict, gathered from the FSDP-wrapped `root` that contains it, on rank 0 ({} on the
    other ranks). Under FSDP each rank holds only a shard of every parameter (with use_orig_params, rank 0's
    `param` is a slice of the flat shard), so reading the module on rank 0 alone saves partial tensors.
    A collective: every rank must call it. Tensors come to CPU, the whole model at once (as Lightning's
    `state_dict_type: full` checkpoints do): frozen entries a PEFT adapter may also save (resized
    embeddings) are included."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    path = _path_in(root, inner)
    prefix = f"{path}." if path else ""
    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    inner_state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if state and not inner_state:  # rank 0 got the model but no key under the prefix: never save an empty adapter
        raise RuntimeError(f"no state-dict key of {root.__class__.__name__} starts with {prefix!r}")
    return inner_state


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
