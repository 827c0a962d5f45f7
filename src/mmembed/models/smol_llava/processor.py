"""The default model's processor: the vision tower's preprocessing and the LLaVA processor that expands
`<image>` into the projector's span of placeholder tokens."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
# mean/std 0.5, not ImageNet's: the packaged weights are a TF port, trained on inputs scaled to [-1, 1]
# (top-1 of both: experiments/README.md#the-vision-towers-normalisation).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224
VISION_PATCH = 32  # 224 px / 7x7 feature map


def build_image_processor():
    """The vision tower's preprocessing: shortest edge to 224 px (bicubic), centre crop 224 x 224."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,  # PIL bicubic
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def build_processor(tokenizer, image_tokens: int | None = None):
    """LLaVA processor: expands each `<image>` into 49 placeholder tokens (or `image_tokens`); 224 px bicubic
    centre crop. LlavaProcessor writes (224 // patch_size)^2 + num_additional_image_tokens placeholders, so a
    span that is no square is one "patch" of 224 px plus image_tokens - 1 additional ones."""
    from transformers import LlavaProcessor

    patch, additional = (VISION_PATCH, 0) if image_tokens is None else (IMAGE_SIZE, image_tokens - 1)
    return LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="full",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=additional,
    )
