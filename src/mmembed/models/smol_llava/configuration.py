"""SmolLlava's config: the fields every SmolLlava has; the projector's own settings are its kind's
(projectors/, e.g. grounded_top_k), saved beside these in config.json and read back by that kind."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from mmembed.models.smol_llava.tower import HEAD_CHANNELS


@strict
class SmolLlavaConfig(PreTrainedConfig):
    """Config of SmolLlava; `text_config` is the LLM's own config (e.g. a LlamaConfig).

    Keyword arguments beyond these fields (a projector's settings) are kept as attributes and saved."""

    model_type = "mmembed_smol_llava"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 49152
    # Placeholder tokens per image: the projector's output span (49 = the tower's 7x7 map).
    image_seq_length: int = 49
    # Average-pool the tower's 7x7 feature map to image_grid x image_grid before the projector (None: keep
    # the full map). 3 gives 9 image tokens instead of 49, a cheaper alignment step (9 vs 49 tokens measured:
    # experiments/README.md#grounded-base-on-the-flickr8k-1k-test-and-9-vs-49-image-tokens-2026-12-02).
    # image_seq_length must be image_grid**2.
    image_grid: int | None = None
    image_size: int = 224
    vision_hidden_size: int = HEAD_CHANNELS
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    # A key of projectors.PROJECTORS; the "mlp" default keeps folders written before the field existed loadable.
    projector_type: str = "mlp"
