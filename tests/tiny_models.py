"""Tiny random-weight checkpoints built from configs, saved with save_pretrained, for fast tests.

One table entry per supported family (TINY_FAMILIES: config factory, model class, processor factory) and one
generic builder, `build_tiny(family, default_dir, out_dir)`. Each folder loads through
`mmembed.models.backbones.load_backbone`, the code path a user's checkpoint takes. Every family shares the real
SmolLM2 tokenizer of the default model (with the family's own special tokens added), so prompts tokenise as
they would for real; image processors are the PIL ("slow") classes, since torchvision is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
TINY_CLIP_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,  # 4x4 = 16 patches (+ CLS)
    projection_dim=32,
)
TINY_IMAGE = TINY_CLIP_VISION["image_size"]
TINY_PATCH = TINY_CLIP_VISION["patch_size"]


def smollm2_tokenizer(default_dir: str | Path, extra_special_tokens: list[str] | None = None):
    """The real SmolLM2 tokenizer (49152 tokens + `<image>`), with `extra_special_tokens` added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_dir)
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    return tokenizer


def _llama_text_config(tokenizer, **overrides) -> dict:
    config = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_TEXT,
    )
    config.update(overrides)
    return config


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every RMSNorm/LayerNorm weight random values (fresh models have all ones).

    With unit weights the final norm cannot change a state's direction, so a test comparing
    normalised embeddings could not tell a pre-norm hidden state from the post-norm one.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    return model


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family's tiny checkpoint; factories import transformers lazily (collection stays fast)."""

    config: Callable  # (tokenizer) -> the model's config
    model_class: Callable[[], type]  # () -> the ForConditionalGeneration / ForCausalLM class
    processor: Callable | None  # (tokenizer, default_dir) -> processor; None: the tokenizer alone (text-only)
    special_tokens: tuple[str, ...] = ()
    init: Callable = randomize_norms  # (model) -> None: weights a test needs beyond the fresh init


def build_tiny(family: str, default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Build TINY_FAMILIES[family] with torch.manual_seed(seed) and save model + processor to out_dir."""
    spec = TINY_FAMILIES[family]
    tokenizer = smollm2_tokenizer(default_dir, list(spec.special_tokens))
    config = spec.config(tokenizer)
    processor = spec.processor(tokenizer, default_dir) if spec.processor else tokenizer
    torch.manual_seed(seed)
    model = spec.model_class()(config).eval()
    spec.init(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# ---- smol_llava: mmembed's default model, with the default model's own processor ----
def _smol_llava_config(tokenizer):
    from mmembed.models.smol_llava.configuration import SmolLlavaConfig

    text_config = _llama_text_config(tokenizer, tie_word_embeddings=True)
    return SmolLlavaConfig(text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _smol_llava_class():
    from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

    return SmolLlavaForConditionalGeneration


def _smol_llava_processor(tokenizer, default_dir):
    from transformers import LlavaProcessor

    return LlavaProcessor.from_pretrained(default_dir)


def _variance_preserving_tower(model) -> None:
    # transformers' generic init (conv std 0.02, BatchNorm scale 0) maps every image to ~1e-21, so no
    # test could tell two images apart: give the tiny tower variance-preserving weights instead.
    with torch.no_grad():
        for module in model.model.vision_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)


# ---- LLaVA-NeXT in the E5-V (llava-llama-3-8b) layout: CLIP vision tower, anyres tiling, llama text ----
PINPOINTS = [[TINY_IMAGE, 2 * TINY_IMAGE], [2 * TINY_IMAGE, TINY_IMAGE], [2 * TINY_IMAGE, 2 * TINY_IMAGE]]


def _llava_config(config_class: str, **extra):
    def make(tokenizer):
        import transformers

        return getattr(transformers, config_class)(
            vision_config=dict(TINY_CLIP_VISION), text_config=_llama_text_config(tokenizer),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
            vision_feature_layer=-2, **extra)

    return make


def _llava_next_processor(tokenizer, default_dir):
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE},
        image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, removed by the "default" strategy
        chat_template=tokenizer.chat_template)


# ---- LLaVA-1.5: CLIP vision tower, one 32 px tile -> 16 image tokens, llama text ----
def _llava_processor(tokenizer, default_dir):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template)


# ---- Qwen2-VL: 14 px patches merged 2x2, M-RoPE text; 56x56..112x112 px images -> 4..16 image tokens ----
QWEN2_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen2_vl_config(tokenizer):
    from transformers import Qwen2VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_TOKENS}
    head_dim = TINY_TEXT["hidden_size"] // TINY_TEXT["num_attention_heads"]
    text_config = _llama_text_config(
        tokenizer, model_type="qwen2_vl_text",
        rope_parameters={"rope_type": "default", "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]})
    vision_config = dict(depth=1, embed_dim=32, hidden_size=TINY_TEXT["hidden_size"], num_heads=2, mlp_ratio=2,
                         patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])


def _qwen2_vl_processor(tokenizer, default_dir):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    from mmembed.models.model_sources import without_video_processor

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, merge_size=2, temporal_patch_size=2)
    # transformers makes video processors only with torchvision (absent here): save the standard
    # Qwen2VLProcessor config without one, as mmembed loads it in that case.
    processor_cls = Qwen2VLProcessor if is_torchvision_available() else without_video_processor(Qwen2VLProcessor)
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)


# ---- Idefics3 / SmolVLM: SigLIP-style tower on 32 px tiles, pixel shuffle x2 -> 4 tokens per tile ----
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
IDEFICS3_SCALE = 2


def _idefics3_config(tokenizer):
    from transformers import Idefics3Config

    vision_config = dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=TINY_IMAGE, patch_size=TINY_PATCH)
    return Idefics3Config(vision_config=vision_config, text_config=_llama_text_config(tokenizer),
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=IDEFICS3_SCALE)


def _idefics3_processor(tokenizer, default_dir):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * TINY_IMAGE}, max_image_size={"longest_edge": TINY_IMAGE}, do_image_splitting=True)
    image_seq_len = (TINY_IMAGE // TINY_PATCH) ** 2 // IDEFICS3_SCALE**2
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
                             chat_template=tokenizer.chat_template)


# ---- a plain LlamaForCausalLM (text-only backbones): the tokenizer is its processor ----
def _causal_lm_config(tokenizer):
    from transformers import LlamaConfig

    config_kwargs = _llama_text_config(tokenizer)
    config_kwargs.pop("model_type")
    return LlamaConfig(**config_kwargs)


def _transformers_class(name: str) -> Callable[[], type]:
    def get() -> type:
        import transformers

        return getattr(transformers, name)

    return get


TINY_FAMILIES: dict[str, TinyFamily] = {
    "smol_llava": TinyFamily(_smol_llava_config, _smol_llava_class, _smol_llava_processor,
                             init=_variance_preserving_tower),
    "llava_next": TinyFamily(_llava_config("LlavaNextConfig", image_grid_pinpoints=PINPOINTS),
                             _transformers_class("LlavaNextForConditionalGeneration"), _llava_next_processor),
    "llava": TinyFamily(_llava_config("LlavaConfig"), _transformers_class("LlavaForConditionalGeneration"),
                        _llava_processor),
    "qwen2_vl": TinyFamily(_qwen2_vl_config, _transformers_class("Qwen2VLForConditionalGeneration"),
                           _qwen2_vl_processor, special_tokens=tuple(QWEN2_VL_TOKENS)),
    "idefics3": TinyFamily(_idefics3_config, _transformers_class("Idefics3ForConditionalGeneration"),
                           _idefics3_processor, special_tokens=tuple(IDEFICS3_TOKENS)),
    "causal_lm": TinyFamily(_causal_lm_config, _transformers_class("LlamaForCausalLM"), None),
}
# The transformers families (every one but mmembed's own default model), as tests/models/test_backbones.py runs them.
TRANSFORMERS_FAMILIES = tuple(family for family in TINY_FAMILIES if family != "smol_llava")
