"""Load a backbone (model + processor) from a hub id or a local folder, one code path for every family.

Supported: LLaVA-NeXT (E5-V's llava-llama-3-8b / royokong/e5-v), LLaVA-1.5, Qwen2-VL / Qwen2.5-VL,
Idefics3 / SmolVLM, plain causal LMs (text only), and mmembed's own offline default (SmolLlava).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mmembed.models.model_sources import DEFAULT_MODEL, BackboneLoadError, hub_hint, load_processor_parts

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A loaded model with everything the embedder needs to feed it."""

    model: nn.Module  # the full transformers model (ForConditionalGeneration or ForCausalLM)
    processor: object  # a multimodal processor, or a tokenizer for text-only models
    tokenizer: object
    family: str  # "llava_next" | "llava" | "qwen2_vl" | "idefics3" | "smol_llava" | "causal_lm"
    image_token: str | None  # the string the processor expands into image placeholders
    name_or_path: str

    @property
    def body(self) -> nn.Module:
        """The decoder body that returns last hidden states (no LM head): `model.model`."""
        return unwrap(self.model).model

    @property
    def supports_images(self) -> bool:
        return self.image_token is not None and vision_modules(self.model) != {}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def load_featurizer(
    name_or_path: str = DEFAULT_MODEL,
    *,
    prompts=None,
    text_only: bool = False,
    trust_remote_code: bool = False,
    padding_side: str = "left",
    cache_dir: str | None = None,
):
    """The model's `Featurizer` (tokenizer, processor, prompt renderer) from its folder, without its weights."""
    from mmembed.models.featurizer import Featurizer

    parts = load_processor_parts(name_or_path, trust_remote_code=trust_remote_code, padding_side=padding_side,
                                 cache_dir=cache_dir)
    return Featurizer(parts.processor, parts.tokenizer, parts.family, parts.image_token, prompts, parts.source,
                      supports_images=not text_only)


def load_backbone(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    text_only: bool = False,
    attn_implementation: str | None = "sdpa",
    padding_side: str = "left",
    cache_dir: str | None = None,
    quantization_config=None,
    featurizer=None,
    vision_dtype: str | None = None,
) -> Backbone:
    """Load model + processor. `text_only=True` drops the vision tower and projector after loading.

    `vision_dtype` (e.g. float32 beside dtype=bfloat16) keeps the vision tower and projector in their own
    precision: the default model's grounded projector picks each patch's top-k ImageNet classes, and bf16
    rounding of the tower's features flips some picks, while the LLM, where the time goes, runs in `dtype`.

    `featurizer` (from `load_featurizer` on the same folder) reuses its already loaded processor.
    """
    for setting, value in (("dtype", dtype), ("vision_dtype", vision_dtype)):
        if value is not None and value not in DTYPES:
            raise BackboneLoadError(f"model.{setting}={value!r} is not one of {sorted(DTYPES)}")
    if featurizer is None:
        featurizer = load_featurizer(name_or_path, text_only=text_only, trust_remote_code=trust_remote_code,
                                     padding_side=padding_side, cache_dir=cache_dir)
    source = featurizer.name_or_path
    mixed = vision_dtype is not None and vision_dtype != dtype and not text_only
    # Mixed precision loads in the vision dtype, then casts everything else: weights loaded in bf16 and
    # cast up would have lost their float32 digits already.
    kwargs = {"dtype": DTYPES[vision_dtype if mixed else dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:  # e.g. a BitsAndBytesConfig (mmembed.models.quantization)
        kwargs["quantization_config"] = quantization_config
    try:
        model = _load_model(featurizer.family, source, kwargs)
    except OSError as err:
        raise hub_hint(source, err) from err
    model.eval()
    backbone = Backbone(model, featurizer.processor, featurizer.tokenizer, featurizer.family, featurizer.image_token,
                        source)
    if text_only:
        drop_vision(model)
    elif mixed:
        _cast_all_but_vision(model, DTYPES[dtype])
    return backbone


def _cast_all_but_vision(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer to `dtype`, except those of the vision tower and projector."""
    keep = {id(m) for v in vision_modules(model).values() for m in v.modules()}
    for module in model.modules():
        if id(module) in keep:
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))


def _load_model(family: str, source: str, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if family == "smol_llava":
        from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

        return SmolLlavaForConditionalGeneration.from_pretrained(source, **kwargs)
    if family == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return AutoModelForImageTextToText.from_pretrained(source, **kwargs)


# Attribute names under `model.model` that hold vision-only modules, per transformers family.
_VISION_ATTRS = ("vision_tower", "multi_modal_projector", "visual", "vision_model", "connector", "image_newline")


def vision_modules(model: nn.Module) -> dict[str, nn.Module]:
    body = unwrap(model).model
    return {name: getattr(body, name) for name in _VISION_ATTRS if isinstance(getattr(body, name, None), nn.Module)}


# The vision-to-language projector, per family: LLaVA / LLaVA-NeXT / SmolLlava, Idefics3, Qwen2-VL.
_PROJECTOR_PATHS = ("multi_modal_projector", "connector", "visual.merger")


def projector_module(model: nn.Module) -> nn.Module:
    """The module mapping vision features into the LLM's embedding space (what alignment trains)."""
    body = unwrap(model).model
    for path in _PROJECTOR_PATHS:
        module = body
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(unwrap(model)).__name__} has no vision projector (looked for {_PROJECTOR_PATHS})")


def drop_vision(model: nn.Module) -> list[str]:
    """Free the vision tower and projector (E5-V trains the LLM alone). Returns the dropped names.

    The modules are replaced by None in place, so module paths of the language model (and so
    LoRA adapter keys) stay exactly those of the full model.
    """
    body = unwrap(model).model
    dropped = []
    for name in list(vision_modules(model)):
        setattr(body, name, None)
        dropped.append(name)
    if isinstance(getattr(body, "image_newline", None), torch.Tensor):
        body.image_newline = None
        dropped.append("image_newline")
    log.info("text-only: dropped %s", ", ".join(dropped) or "nothing")
    return dropped

