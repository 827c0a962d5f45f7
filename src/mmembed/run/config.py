"""Plain specs from a composed Hydra config: the model factory's `ModelSpec`, LoRA settings, the objective."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from mmembed.models.factory import LoraSpec, ModelSpec
from mmembed.models.prompts import PromptConfig

log = logging.getLogger(__name__)


def prompts_given_on_command_line() -> bool:
    """True when the user chose prompts explicitly (`prompt=...` or `prompt.<field>=...` overrides):
    they then win over the prompts saved with an adapter or model (see mmembed.models.factory)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    keys = [override.lstrip("+~").split("=", 1)[0] for override in HydraConfig.get().overrides.task]
    return any(key == "prompt" or key.startswith("prompt.") for key in keys)


def model_given_on_command_line() -> bool:
    """True when the user chose the model explicitly (`model=...` or `model.name_or_path=...`), or when the config
    was composed outside a Hydra run (tests, notebooks: the config is taken as given)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    keys = [override.lstrip("+~").split("=", 1)[0] for override in HydraConfig.get().overrides.task]
    return any(key in ("model", "model.name_or_path") for key in keys)


def base_of_adapter(cfg: DictConfig) -> str:
    """The base to load: `model.name_or_path`, unless an adapter folder records the base it was trained on and the
    user did not name a model. `make train` trains on the label-word base; `src/eval.py adapter=<that run>` then
    evaluates it on that base, not on the config's default."""
    from mmembed.models.model_record import saved_model_record

    configured = str(cfg.model.name_or_path)
    record = saved_model_record(cfg.adapter) if cfg.get("adapter") else None
    recorded = str(record.get("base") or "") if record else ""
    if not recorded or recorded == configured or model_given_on_command_line():
        return configured
    log.info("base model %s, as recorded in %s/mmembed_model.json (name another with model.name_or_path=...)",
             recorded, cfg.adapter)
    return recorded


def model_spec(cfg: DictConfig, explicit_prompts: bool | None = None, inference: bool = False, **changes) -> ModelSpec:
    """`cfg.model` + `cfg.adapter` + `cfg.prompt` (+ `cfg.pooler`) as a ModelSpec; `changes` override fields.

    `inference`: the spec evaluation and corpus embedding load (`model.inference_dtype` when the model
    config has one, instead of the training `dtype`)."""
    from hydra.utils import instantiate

    m = cfg.model
    prompts = PromptConfig.from_mapping(OmegaConf.to_container(cfg.prompt, resolve=True))
    explicit = prompts_given_on_command_line() if explicit_prompts is None else explicit_prompts
    spec = ModelSpec(
        name_or_path=base_of_adapter(cfg),
        dtype=(m.get("inference_dtype") or m.dtype) if inference else m.dtype,
        vision_dtype=m.get("vision_dtype"),
        text_only=bool(m.text_only),
        trust_remote_code=bool(m.trust_remote_code),
        attn_implementation=m.get("attn_implementation"),
        train_attn_implementation=m.get("train_attn_implementation"),
        padding_side=m.get("padding_side", "left"),
        cache_dir=m.get("cache_dir"),
        quantization=m.get("quantization"),
        gradient_checkpointing=bool(m.get("gradient_checkpointing")),
        how_to_get=m.get("how_to_get"),
        adapter=str(cfg.adapter) if cfg.get("adapter") else None,
        merge_adapter=bool(cfg.get("merge_adapter", True)),
        prompts=prompts if explicit else None,
        default_prompts=prompts,
        pooler=instantiate(cfg.pooler) if cfg.get("pooler") else None,
        vision_feature_cache=bool(m.get("vision_feature_cache", False)),
        extension=instantiate(m.extension) if m.get("extension") else None,
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def lora_spec(cfg: DictConfig) -> LoraSpec:
    lora = cfg.get("lora") or {}
    return LoraSpec(
        enabled=bool(lora.get("enabled", False)), r=int(lora.get("r", 64)), alpha=int(lora.get("alpha", 16)),
        dropout=float(lora.get("dropout", 0.05)), target_modules=lora.get("target_modules"),
        cpu_mask_dropout=bool(lora.get("cpu_mask_dropout", True)),
    )
