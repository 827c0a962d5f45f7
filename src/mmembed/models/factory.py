"""The one model factory: model + adapter + prompts + pooler, for training, evaluation, inference and export.

`src/train.py` and `src/eval.py` (through `mmembed.run.config.model_spec`), `Embedder.from_pretrained`
and `export_merged` all describe what they want as a `ModelSpec` and call `build_embedder`.

Prompt precedence (the first that is set wins):
  1. explicit prompts (`prompt=...` / `prompt.<field>=...` on the command line, `prompts=` in Python);
  2. the prompts saved with the adapter (`mmembed_prompts.json`, written by training);
  3. the prompts saved with the model folder (written by `export_merged`);
  4. the configuration's default prompt group (Python: E5-V's prompts).
So an adapter is evaluated with the prompts it was trained with unless you say otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mmembed.errors import ConfigError
from mmembed.models.backbones import BackboneLoadError, load_backbone, projector_module
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.featurizer import Featurizer
from mmembed.models.model_record import fill_from_record
from mmembed.models.model_sources import load_processor_parts
from mmembed.models.prompts import PromptConfig, saved_prompts

log = logging.getLogger(__name__)


@dataclass
class LoraSpec:
    enabled: bool = True
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | None = None
    cpu_mask_dropout: bool = True  # mmembed/models/lora_dropout.py


@dataclass
class ModelSpec:
    """Everything that decides which model, weights, prompts and pooling an embedder has."""

    name_or_path: str = "default"
    dtype: str = "float32"
    vision_dtype: str | None = None  # the vision tower + projector's own precision (None: dtype)
    text_only: bool = False
    trust_remote_code: bool = False
    attn_implementation: str | None = "sdpa"
    # What a trainable embedder loads instead (None: attn_implementation); e.g. eager on CPU, where sdpa's
    # backward is slow for short sequences (conf/model/smol_llava.yaml)
    train_attn_implementation: str | None = None
    padding_side: str = "left"
    cache_dir: str | None = None
    quantization: str | None = None
    gradient_checkpointing: bool = False
    how_to_get: str | None = None  # said when the folder is missing (e.g. the command that writes it)
    adapter: str | None = None
    merge_adapter: bool = True
    prompts: PromptConfig | None = None  # explicit: wins over everything
    default_prompts: PromptConfig = field(default_factory=PromptConfig)  # used when nothing is saved
    pooler: object | None = None  # a mmembed.models.pooling pooler; None = last token (E5-V)
    # Frozen vision tower's feature maps computed once per distinct image and reused (cache_dir/vision_features)
    vision_feature_cache: bool = False
    # A model extension (e.g. mmembed.models.mmgem.extension.MMGEMExtension, conf/model/mmgem.yaml): adds tokens to
    # the featurizer, modules to the loaded model, LoRA options, and picks the embedder class.
    extension: object | None = None


def resolve_prompts(spec: ModelSpec, model_folder: str | None = None) -> tuple[PromptConfig, str]:
    """The prompts `spec` selects and where they came from ("explicit" | "adapter" | "model" | "default")."""
    saved_adapter = saved_prompts(spec.adapter) if spec.adapter else None
    saved_model = saved_prompts(model_folder) if model_folder else None
    if spec.prompts is not None:
        if saved_adapter is not None and saved_adapter != spec.prompts:
            log.warning("adapter %s was trained with other prompts than the ones given explicitly: %s vs %s",
                        spec.adapter, saved_adapter, spec.prompts)
        return spec.prompts, "explicit"
    if saved_adapter is not None:
        return saved_adapter, "adapter"
    if saved_model is not None:
        return saved_model, "model"
    return spec.default_prompts, "default"


def build_featurizer(spec: ModelSpec) -> Featurizer:
    """The spec's featurizer (tokenizer, processor, resolved prompts), without loading any weights.

    Built once, with its final prompts and class: the extension adjusts the processor before, not a copy after."""
    fill_from_record(spec)  # an adapter folder names the extension and pooler it was trained with
    try:
        parts = load_processor_parts(spec.name_or_path, trust_remote_code=spec.trust_remote_code,
                                     padding_side=spec.padding_side, cache_dir=spec.cache_dir)
    except BackboneLoadError as err:
        if spec.how_to_get:
            raise BackboneLoadError(f"{err}; {spec.how_to_get}") from err
        raise
    supports_images = not spec.text_only and parts.image_token is not None
    featurizer_class = Featurizer
    if spec.extension is not None:
        spec.extension.prepare_processor(parts.processor, parts.tokenizer, supports_images)
        featurizer_class = spec.extension.featurizer_class
    prompts, source = resolve_prompts(spec, parts.source)
    featurizer = featurizer_class(parts.processor, parts.tokenizer, parts.family, parts.image_token, prompts,
                                  parts.source, supports_images=supports_images)
    where = {"explicit": "given explicitly", "adapter": "saved with the adapter", "model": "saved with the model",
             "default": "the configured default"}[source]
    log.info("prompts %s; a text renders as %r", where, featurizer.renderer.render("text", "<sent>"))
    return featurizer


def refuse_extension_adapter(adapter: str) -> None:
    """An adapter that trained added token rows or whole modules (MM-GEM's [EMB] row and heads) only fits
    a base prepared the same way: say so instead of peft's missing-key error."""
    import json
    from pathlib import Path

    config_file = Path(adapter) / "adapter_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("trainable_token_indices") or config.get("modules_to_save"):
        raise ConfigError(f"adapter {adapter} trained new token rows or modules ({config.get('trainable_token_indices')}, "
                          f"{config.get('modules_to_save')}): load it with the model extension it was trained with, "
                          "e.g. model=mmgem prompt=mmgem")


def build_embedder(
    spec: ModelSpec,
    featurizer: Featurizer | None = None,
    trainable: bool = False,
    lora: LoraSpec | None = None,
    train_projector: bool = False,
) -> MLLMEmbedder:
    """Backbone -> (saved adapter) -> (fresh LoRA and/or a trainable projector when training) -> embedder."""
    fill_from_record(spec)
    from mmembed.models.lora import apply_lora, load_adapter
    from mmembed.models.quantization import prepare_for_kbit_training, quantization_config

    quantization = quantization_config(spec.quantization)  # refuses 4bit without CUDA + bitsandbytes, first
    featurizer = featurizer or build_featurizer(spec)
    backbone = load_backbone(
        featurizer.name_or_path,
        dtype=spec.dtype, trust_remote_code=spec.trust_remote_code, text_only=spec.text_only,
        attn_implementation=(spec.train_attn_implementation if trainable and spec.train_attn_implementation
                             else spec.attn_implementation),
        padding_side=spec.padding_side, cache_dir=spec.cache_dir,
        quantization_config=quantization, featurizer=featurizer, vision_dtype=spec.vision_dtype,
    )
    extension = spec.extension
    if extension is not None:  # before a saved adapter attaches: its keys expect what the extension adds
        backbone.model = extension.prepare_model(backbone.model, featurizer.tokenizer)
    if quantization is not None and trainable:
        backbone.model = prepare_for_kbit_training(backbone.model, spec.gradient_checkpointing)
    if spec.gradient_checkpointing and trainable:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.adapter:
        if extension is None:
            refuse_extension_adapter(spec.adapter)
        backbone.model = load_adapter(backbone.model, spec.adapter, merge=spec.merge_adapter)
    if trainable and lora is not None and lora.enabled:
        if spec.adapter and not spec.merge_adapter:
            raise ConfigError("training on top of an unmerged adapter: set merge_adapter=true")
        extras = extension.lora_options(backbone.model, featurizer.tokenizer) if extension is not None else {}
        backbone.model = apply_lora(backbone.model, lora.r, lora.alpha, lora.dropout, lora.target_modules,
                                    cpu_mask_dropout=lora.cpu_mask_dropout, **extras)
        if extension is not None:
            extension.finalize_trainable(backbone.model)
    if trainable and train_projector:
        if spec.text_only:
            raise ConfigError("train_projector=true needs the vision modules: set model.text_only=false")
        if lora is None or not lora.enabled:
            backbone.model.requires_grad_(False)  # projector alignment: the projector alone learns
        projector_module(backbone.model).requires_grad_(True)
    if spec.vision_feature_cache:
        from mmembed.models.vision_feature_cache import install_tower_cache

        install_tower_cache(backbone.model, spec.cache_dir)
    if extension is not None:
        return extension.embedder(backbone, spec.pooler, featurizer)
    return MLLMEmbedder(backbone, pooler=spec.pooler, featurizer=featurizer)
