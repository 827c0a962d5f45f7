"""SmolLlava: the offline default MLLM, a LLaVA-style model in transformers' own conventions.

Vision: EfficientNet-Lite0 (7x7x1280 feature map at 224 px = 49 image tokens); projector: the entry of the
registry in projectors/ that `config.projector_type` names ("mlp", "grounded", "label_words"; a projector may
leave holes in the image span, taken out of attention here: holes.py); LLM: any transformers decoder
(SmolLM2-135M).
Precomputed tower outputs (`vision_features=`, e.g. from vision_feature_cache.py) replace `pixel_values`.
It mirrors `LlavaForConditionalGeneration`'s layout (`model.vision_tower`,
`model.multi_modal_projector`, `model.language_model`, `lm_head`) so every code path
(embedding, LoRA regexes, save/load, text-only stripping) treats it like the real LLaVA family.
It is its own class only because transformers' timm-backed vision towers need torchvision,
which cannot be installed beside this project's CPU torch (see tower.py).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mmembed.models.smol_llava.configuration import SmolLlavaConfig
from mmembed.models.smol_llava.holes import attended_positions, holes_of, without_holes
from mmembed.models.smol_llava.image_path import SmolLlavaImagePath
from mmembed.models.smol_llava.projectors import Projector, projector_kind
from mmembed.models.smol_llava.tower import EfficientNetLite0

__all__ = ["SmolLlavaConfig", "SmolLlavaForConditionalGeneration", "SmolLlavaModel", "build_projector"]


def build_projector(config: SmolLlavaConfig) -> nn.Module:
    """The projector `config.projector_type` names in the registry (projectors/__init__.py)."""
    return projector_kind(config.projector_type).build(config)


class SmolLlavaPreTrainedModel(PreTrainedModel):
    config: SmolLlavaConfig
    config_class = SmolLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # Runs after the projector's children got the generic init (and, when loading, skips every
        # tensor the checkpoint provided): the projector sets what only it knows (e.g. a zero learned path).
        if isinstance(module, Projector):
            module.init_fresh(self.config.initializer_range)


class SmolLlavaModel(SmolLlavaImagePath, SmolLlavaPreTrainedModel):
    """Vision tower + projector + decoder body; returns the last hidden state, no vocabulary logits.
    Pixels or tower features -> image tokens: image_path.py."""

    def __init__(self, config: SmolLlavaConfig):
        super().__init__(config)
        self.vision_tower = EfficientNetLite0(num_classes=0)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        cache=None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None or vision_features is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to locate their placeholder tokens")
            image_features, valid = self.project_images(pixel_values, vision_features)
            image_features = image_features.to(inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_id
            if int(mask.sum()) != image_features.shape[0] * image_features.shape[1]:
                raise ValueError(
                    f"{int(mask.sum())} image placeholder tokens for {image_features.shape[0]} images of "
                    f"{image_features.shape[1]} tokens each; render prompts with the processor"
                )
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features.reshape(-1, inputs_embeds.shape[-1]))
            if valid is not None:
                attention_mask, position_ids = without_holes(
                    holes_of(input_ids, self.config.image_token_id, valid), attention_mask, position_ids)
        # transformers 5.x renamed the decoder's `past_key_values` argument to `cache` (the old name warns).
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            kwargs["cache"] = cache
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
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
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            vision_features=vision_features,
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

    def prepare_inputs_for_generation(self, input_ids, vision_features=None, is_first_iteration=False, **kwargs):
        # Images enter only in the prefill step; later steps reuse the cache. transformers drops
        # pixel_values after prefill itself; precomputed tower features (vision_features) likewise here.
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["vision_features"] = vision_features
        mask = kwargs.get("attention_mask")
        if (projector_kind(self.config.projector_type).uses_holes and not is_first_iteration and kwargs.get("use_cache", True)
                and mask is not None and model_inputs.get("position_ids") is None):
            # Decoding steps count the attended tokens only, as the prefill did (SmolLlavaModel.forward takes
            # the image holes out there; generate() put them into the mask that every step extends).
            model_inputs["position_ids"] = attended_positions(mask)[:, -model_inputs["input_ids"].shape[1]:]
        return model_inputs

    def generate(self, *args, **kwargs):
        # The label-word projector's holes must stay out of attention in every decoding step, not only the
        # prefill: they go into the attention mask that generation extends step by step.
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        uses_holes = self.model.uses_holes
        if uses_holes and input_ids is not None and kwargs.get("pixel_values") is not None:
            # run the tower once: its feature map serves both the holes here and the prefill's image tokens
            kwargs["vision_features"] = self.model.get_vision_features(kwargs.pop("pixel_values"))
        if uses_holes and input_ids is not None and kwargs.get("vision_features") is not None:
            holes = self.model.image_holes(input_ids, kwargs["vision_features"])
            mask = kwargs.get("attention_mask")
            kwargs["attention_mask"] = (torch.ones_like(input_ids) if mask is None else mask) * ~holes
        return super().generate(*args, **kwargs)

