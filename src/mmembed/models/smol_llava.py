"""SmolLlava: the offline default MLLM, a LLaVA-style model in transformers' own conventions.

Vision: EfficientNet-Lite0 (7x7x1280 feature map at 224 px = 49 image tokens); projector: a
two-layer GELU MLP into the LLM's hidden size; LLM: any transformers decoder (SmolLM2-135M).
It mirrors `LlavaForConditionalGeneration`'s layout (`model.vision_tower`,
`model.multi_modal_projector`, `model.language_model`, `lm_head`) so every code path
(embedding, LoRA regexes, save/load, text-only stripping) treats it like the real LLaVA family.
It is its own class only because transformers' timm-backed vision towers need torchvision,
which cannot be installed beside this project's CPU torch (see efficientnet_lite.py).
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mmembed.models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0


@strict
class SmolLlavaConfig(PreTrainedConfig):
    """Config of SmolLlava; `text_config` is the LLM's own config (e.g. a LlamaConfig)."""

    model_type = "mmembed_smol_llava"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 49152
    image_seq_length: int = 49
    image_size: int = 224
    vision_hidden_size: int = HEAD_CHANNELS
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02


class SmolLlavaProjector(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class SmolLlavaPreTrainedModel(PreTrainedModel):
    config: SmolLlavaConfig
    config_class = SmolLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer"]


class SmolLlavaModel(SmolLlavaPreTrainedModel):
    """Vision tower + projector + decoder body; returns the last hidden state, no vocabulary logits."""

    def __init__(self, config: SmolLlavaConfig):
        super().__init__(config)
        self.vision_tower = EfficientNetLite0(num_classes=0)
        self.multi_modal_projector = SmolLlavaProjector(config.vision_hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, image_seq_length, hidden] projected image tokens."""
        if self.vision_tower is None:
            raise RuntimeError("this model was loaded text-only (vision tower dropped); it cannot embed images")
        feature_map = self.vision_tower.forward_features(pixel_values.to(self.multi_modal_projector.linear_1.weight.dtype))
        return self.multi_modal_projector(feature_map.flatten(2).transpose(1, 2))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to locate their placeholder tokens")
            image_features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_id
            if int(mask.sum()) != image_features.shape[0] * image_features.shape[1]:
                raise ValueError(
                    f"{int(mask.sum())} image placeholder tokens for {image_features.shape[0]} images of "
                    f"{image_features.shape[1]} tokens each; render prompts with the processor"
                )
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features.reshape(-1, inputs_embeds.shape[-1]))
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            **kwargs,
        )


class SmolLlavaForConditionalGeneration(SmolLlavaPreTrainedModel, GenerationMixin):
    """SmolLlava with the LM head, for captioning (projector alignment) and generation."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: SmolLlavaConfig):
        super().__init__(config)
        self.model = SmolLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, past_key_values=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
        # Images enter only in the first step; later steps reuse the cache.
        if model_inputs.get("past_key_values") is None or not _cache_has_content(model_inputs["past_key_values"]):
            model_inputs["pixel_values"] = pixel_values
        return model_inputs


def _cache_has_content(cache) -> bool:
    try:
        return cache.get_seq_length() > 0
    except AttributeError:
        return cache is not None
