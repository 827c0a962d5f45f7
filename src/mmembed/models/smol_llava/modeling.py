"""SmolLlava: the offline default MLLM, a LLaVA-style model in transformers' own conventions.

Vision: EfficientNet-Lite0 (7x7x1280 feature map at 224 px = 49 image tokens); projector
(`projector_type`): "mlp", a two-layer GELU MLP into the LLM's hidden size (folders without the field),
"grounded", the tower's ImageNet head reading each token as a mixture of the LLM's own embeddings
of the class names (grounded_projector.py), or "label_words", the head's top-k class names written as
the LLM's own word tokens, with masked holes for the unused span (label_word_projector.py);
LLM: any transformers decoder (SmolLM2-135M).
Precomputed tower outputs (`vision_features=`, e.g. from vision_feature_cache.py) replace `pixel_values`.
It mirrors `LlavaForConditionalGeneration`'s layout (`model.vision_tower`,
`model.multi_modal_projector`, `model.language_model`, `lm_head`) so every code path
(embedding, LoRA regexes, save/load, text-only stripping) treats it like the real LLaVA family.
It is its own class only because transformers' timm-backed vision towers need torchvision,
which cannot be installed beside this project's CPU torch (see efficientnet_lite.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.grounded import GroundedProjector
from mmembed.models.smol_llava.projectors.label_words import LabelWordProjector
from mmembed.models.smol_llava.tower import HEAD_CHANNELS, EfficientNetLite0

PROJECTOR_TYPES = ("mlp", "grounded", "label_words")


@strict
class SmolLlavaConfig(PreTrainedConfig):
    """Config of SmolLlava; `text_config` is the LLM's own config (e.g. a LlamaConfig)."""

    model_type = "mmembed_smol_llava"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 49152
    image_seq_length: int = 49
    # Average-pool the tower's 7x7 feature map to image_grid x image_grid before the projector (None: keep
    # the full map). 3 gives 9 image tokens instead of 49: a contrastive alignment step measured ~1.8x
    # cheaper on the 2-core CPU (experiments/README.md). image_seq_length must be image_grid**2.
    image_grid: int | None = None
    image_size: int = 224
    vision_hidden_size: int = HEAD_CHANNELS
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    # "mlp" | "grounded" | "label_words"; the "mlp" default keeps folders written before the field existed loadable.
    projector_type: str = "mlp"
    # The grounded projector's settings (see grounded_projector.GroundedProjector); unused by "mlp".
    # grounded_num_classes is also the label-word projector's class count.
    grounded_num_classes: int = 1000
    grounded_top_k: int = 5
    grounded_temperature: float = 1.0
    grounded_token_scale: float = 1.0
    grounded_pool: str = "patch"
    grounded_renormalize: bool = False
    grounded_mlp_weight: float = 1.0
    grounded_learn_mlp_weight: bool = True
    # The label-word projector's settings (label_word_projector.LabelWordProjector): names per image, the
    # template their text follows (a record: its token ids are saved with the weights), and the sizes of
    # the saved token-id tables. image_seq_length is the span that holds the longest label text.
    label_top_k: int = 3
    label_template: str = "a photo of {}"
    label_max_name_tokens: int = 1
    label_prefix_length: int = 0
    label_separator_length: int = 1


class SmolLlavaProjector(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def build_projector(config: SmolLlavaConfig) -> nn.Module:
    """The projector `config.projector_type` names (the grounded one wraps the MLP as its learned path)."""
    mlp = SmolLlavaProjector(config.vision_hidden_size, config.text_config.hidden_size)
    if config.projector_type == "mlp":
        return mlp
    if config.projector_type == "label_words":
        return LabelWordProjector(
            config.vision_hidden_size, config.grounded_num_classes, seq_length=config.image_seq_length,
            max_name_tokens=config.label_max_name_tokens, top_k=config.label_top_k,
            prefix_length=config.label_prefix_length, separator_length=config.label_separator_length, mlp=mlp,
        )
    if config.projector_type != "grounded":
        raise ConfigError(f"projector_type={config.projector_type!r} in the model config: expected one of {PROJECTOR_TYPES}")
    return GroundedProjector(
        config.vision_hidden_size, config.text_config.hidden_size, num_classes=config.grounded_num_classes,
        top_k=config.grounded_top_k, temperature=config.grounded_temperature,
        token_scale=config.grounded_token_scale, pool=config.grounded_pool,
        renormalize=config.grounded_renormalize, mlp=mlp, mlp_weight=config.grounded_mlp_weight,
        learn_mlp_weight=config.grounded_learn_mlp_weight,
    )


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
        # tensor the checkpoint provided): fresh grounded projectors start with the MLP path at zero
        # output, so the grounded path alone is used until alignment trains it.
        if isinstance(module, GroundedProjector):
            init.normal_(module.class_table, std=self.config.initializer_range)
            init.constant_(module.mlp_weight, self.config.grounded_mlp_weight)
        if isinstance(module, LabelWordProjector):
            init.constant_(module.mlp_weight, 1.0)
        if isinstance(module, (GroundedProjector, LabelWordProjector)) and module.mlp is not None:
            init.zeros_(module.mlp.linear_2.weight)
            init.zeros_(module.mlp.linear_2.bias)


class SmolLlavaModel(SmolLlavaPreTrainedModel):
    """Vision tower + projector + decoder body; returns the last hidden state, no vocabulary logits."""

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

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, vision_hidden_size, h, w]: the (frozen during alignment) tower's feature map,
        what `vision_features=` takes precomputed and vision_feature_cache.py stores."""
        if self.vision_tower is None:
            raise RuntimeError("this model was loaded text-only (vision tower dropped); it cannot embed images")
        return self.vision_tower.forward_features(pixel_values.to(self._projector_dtype()))

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, H, W] or the tower's feature map [B, C, h, w] -> [B, image_seq_length, hidden] image tokens."""
        return self.project_images(pixel_values, vision_features)[0]

    def project_images(
        self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image tokens, valid [B, image_seq_length] or None): valid is False at the label-word projector's
        holes, the span positions its label text does not fill; None when every position is a token."""
        if (pixel_values is None) == (vision_features is None):
            raise ValueError("pass exactly one of pixel_values or vision_features")
        if self.multi_modal_projector is None:
            raise RuntimeError("this model was loaded text-only (projector dropped); it cannot embed images")
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        if vision_features.dim() != 4 or vision_features.shape[1] != self.config.vision_hidden_size:
            raise ValueError(f"vision_features of shape {tuple(vision_features.shape)}: expected the tower's "
                             f"[batch, {self.config.vision_hidden_size}, h, w] feature map")
        tokens = self._projector_inputs(vision_features)
        if isinstance(self.multi_modal_projector, LabelWordProjector):
            return self.multi_modal_projector(tokens, self.get_input_embeddings())
        return self.multi_modal_projector(tokens), None

    def image_holes(self, input_ids: torch.Tensor, vision_features: torch.Tensor) -> torch.Tensor | None:
        """[B, T] True where a placeholder token is a hole (see project_images), or None without holes: the
        label choice alone, from the tower's feature map, without embedding the words."""
        if not isinstance(self.multi_modal_projector, LabelWordProjector):
            return None
        _, valid = self.multi_modal_projector.label_ids(self._projector_inputs(vision_features))
        return _holes(input_ids, self.config.image_token_id, valid)

    def _projector_inputs(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The tower's map [B, C, h, w] -> the projector's input vectors [B, positions, C], in its dtype."""
        vision_features = vision_features.to(self._projector_dtype())
        if self.config.image_grid:
            # adaptive pooling is exact averaging over (overlapping, for 7 -> 3) windows of the map
            vision_features = F.adaptive_avg_pool2d(vision_features, self.config.image_grid)
        return vision_features.flatten(2).transpose(1, 2)

    def _projector_dtype(self) -> torch.dtype:
        return next(self.multi_modal_projector.parameters()).dtype

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
                attention_mask, position_ids = _without_holes(
                    _holes(input_ids, self.config.image_token_id, valid), attention_mask, position_ids)
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
        if (self.config.projector_type == "label_words" and not is_first_iteration and kwargs.get("use_cache", True)
                and mask is not None and model_inputs.get("position_ids") is None):
            # Decoding steps count the attended tokens only, as the prefill did (SmolLlavaModel.forward takes
            # the image holes out there; generate() put them into the mask that every step extends).
            model_inputs["position_ids"] = _positions(mask)[:, -model_inputs["input_ids"].shape[1]:]
        return model_inputs

    def generate(self, *args, **kwargs):
        # The label-word projector's holes must stay out of attention in every decoding step, not only the
        # prefill: they go into the attention mask that generation extends step by step.
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        is_label_words = isinstance(self.model.multi_modal_projector, LabelWordProjector)
        if is_label_words and input_ids is not None and kwargs.get("pixel_values") is not None:
            # run the tower once: its feature map serves both the holes here and the prefill's image tokens
            kwargs["vision_features"] = self.model.get_vision_features(kwargs.pop("pixel_values"))
        if is_label_words and input_ids is not None and kwargs.get("vision_features") is not None:
            holes = self.model.image_holes(input_ids, kwargs["vision_features"])
            mask = kwargs.get("attention_mask")
            kwargs["attention_mask"] = (torch.ones_like(input_ids) if mask is None else mask) * ~holes
        return super().generate(*args, **kwargs)


def _holes(input_ids: torch.Tensor, image_token_id: int, valid: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the placeholder positions whose image token is not valid (in placeholder order)."""
    holes = torch.zeros_like(input_ids, dtype=torch.bool)
    holes[input_ids == image_token_id] = ~valid.reshape(-1).to(input_ids.device)
    return holes


def _without_holes(holes: torch.Tensor, attention_mask: torch.Tensor | None,
                   position_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask and position ids of a sequence whose holes [B, T] are taken out: the holes leave
    attention and take no position, so the LLM reads the label text exactly as if it were written into the
    prompt. The mask may be wider than the inputs (a cached prefix before them: prefix.py); given position
    ids are taken to count every input column, as the prefix cache's and plain arange positions do."""
    width = holes.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones_like(holes, dtype=torch.long)
    cached = attention_mask.shape[1] - width
    full = torch.cat([holes.new_zeros(holes.shape[0], cached), holes], dim=1) if cached else holes
    attention_mask = attention_mask * ~full
    if position_ids is None:
        return attention_mask, _positions(attention_mask)[:, cached:]
    return attention_mask, (position_ids - holes.long().cumsum(-1)).clamp(min=0)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count attended tokens only (padding and holes take none)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
