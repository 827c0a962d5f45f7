"""Tiny random-weight checkpoints built from configs, saved with save_pretrained, for fast tests.

Each builder writes a folder that `mmembed.models.backbones.load_backbone` loads through the same
code path a user's checkpoint takes. Tokenizers are the real SmolLM2 tokenizer (from the
prepared default model), so prompts tokenise as they would for real.
"""

from __future__ import annotations

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


def build_tiny_smol_llava(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 64-d SmolLlava with the default model's processor (tokenizer + image processor)."""
    from transformers import LlavaProcessor

    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration

    processor = LlavaProcessor.from_pretrained(default_dir)
    tokenizer = processor.tokenizer
    text_config = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **TINY_TEXT,
    )
    config = SmolLlavaConfig(text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = SmolLlavaForConditionalGeneration(config).eval()
    # transformers' generic init (conv std 0.02, BatchNorm scale 0) maps every image to ~1e-21, so no
    # test could tell two images apart: give the tiny tower variance-preserving weights instead.
    with torch.no_grad():
        for module in model.model.vision_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# One tiny checkpoint per supported transformers family. All share the SmolLM2 tokenizer of the
# prepared default model (with each family's image tokens added) and tiny text/vision towers;
# image processors are the PIL ("slow") classes, since torchvision is not installed.
# ---------------------------------------------------------------------------------------------
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


def _save(model, processor, out_dir: str | Path) -> Path:
    randomize_norms(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava_next(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-NeXT in the E5-V (llava-llama-3-8b) layout: CLIP vision tower, anyres tiling, llama text."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = smollm2_tokenizer(default_dir)
    pinpoints = [[TINY_IMAGE, 2 * TINY_IMAGE], [2 * TINY_IMAGE, TINY_IMAGE], [2 * TINY_IMAGE, 2 * TINY_IMAGE]]
    config = LlavaNextConfig(
        vision_config=dict(TINY_CLIP_VISION),
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE},
        crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, removed by the "default" strategy
        chat_template=tokenizer.chat_template,
    )
    torch.manual_seed(seed)
    return _save(LlavaNextForConditionalGeneration(config).eval(), processor, out_dir)


def build_tiny_llava(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """LLaVA-1.5: CLIP vision tower, one 32 px tile -> 16 image tokens, llama text."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = smollm2_tokenizer(default_dir)
    config = LlavaConfig(
        vision_config=dict(TINY_CLIP_VISION),
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(config).eval(), processor, out_dir)


QWEN2_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_tiny_qwen2_vl(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-VL: 14 px patches merged 2x2, M-RoPE text; 56x56..112x112 px images -> 4..16 image tokens."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    from mmembed.models.backbones import without_video_processor

    tokenizer = smollm2_tokenizer(default_dir, QWEN2_VL_TOKENS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_TOKENS}
    head_dim = TINY_TEXT["hidden_size"] // TINY_TEXT["num_attention_heads"]
    text_config = dict(
        model_type="qwen2_vl_text",
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
        **TINY_TEXT,
    )
    vision_config = dict(
        depth=1,
        embed_dim=32,
        hidden_size=TINY_TEXT["hidden_size"],
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    # transformers makes video processors only with torchvision (absent here): save the standard
    # Qwen2VLProcessor config without one, as mmembed loads it in that case.
    processor_cls = Qwen2VLProcessor if is_torchvision_available() else without_video_processor(Qwen2VLProcessor)
    processor = processor_cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    torch.manual_seed(seed)
    return _save(Qwen2VLForConditionalGeneration(config).eval(), processor, out_dir)


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def build_tiny_idefics3(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Idefics3 / SmolVLM layout: SigLIP-style tower on 32 px tiles, pixel shuffle x2 -> 4 tokens per tile."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = smollm2_tokenizer(default_dir, IDEFICS3_TOKENS)
    scale_factor = 2
    vision_config = dict(
        model_type="idefics3_vision",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_IMAGE,
        patch_size=TINY_PATCH,
    )
    config = Idefics3Config(
        vision_config=vision_config,
        text_config=_llama_text_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * TINY_IMAGE},
        max_image_size={"longest_edge": TINY_IMAGE},
        do_image_splitting=True,
    )
    image_seq_len = (TINY_IMAGE // TINY_PATCH) ** 2 // scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=tokenizer.chat_template,
    )
    torch.manual_seed(seed)
    return _save(Idefics3ForConditionalGeneration(config).eval(), processor, out_dir)


def build_tiny_causal_lm(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A plain LlamaForCausalLM with the SmolLM2 tokenizer (text-only backbones)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer(default_dir)
    config_kwargs = _llama_text_config(tokenizer)
    config_kwargs.pop("model_type")
    torch.manual_seed(seed)
    model = randomize_norms(LlamaForCausalLM(LlamaConfig(**config_kwargs)).eval())
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS = {
    "llava_next": build_tiny_llava_next,
    "llava": build_tiny_llava,
    "qwen2_vl": build_tiny_qwen2_vl,
    "idefics3": build_tiny_idefics3,
    "causal_lm": build_tiny_causal_lm,
}
