"""MM-GEM (arXiv 2405.19333) on any LLaVA-style model: one LLM that embeds texts and captions images.

What the paper fixes, and how it maps onto a loaded LLaVA-style model (SmolLlava, LLaVA):
- Text embedding: the last hidden state of an added special token `[EMB]` appended to the text
  (`prompt=mmgem`: the raw text + "[EMB]", no chat template; the last-token pooler reads it). The
  token's input-embedding row is new; it trains through peft's `trainable_token_indices` (only that
  row, saved in the adapter folder, never the whole 49k x 576 table).
- Image embedding: a light projection h1 of the pooled vision features; it never enters the LLM.
- Captioning: the pooled vision tokens through a second light projection h2 become the LLM's prefix.
  h2 is the model's own vision-to-LLM projector (the default's grounded projector, LLaVA's MLP), so
  captioning starts from an aligned prefix.
Both paths read the projector's input (the tower's tokens, exactly what the model's own
`get_image_features` hands its projector), so the vision tower, its feature selection and the
vision feature cache work unchanged. `MMGEMVisionHeads` replaces the projector in place and holds the
PoolAggregator, h1 and h2; peft's `modules_to_save` trains and saves the whole of it with the adapter.

Our choices where the paper is silent (configurable in conf/model/mmgem.yaml): a g x g = 3 x 3 average-
pooled prefix (9 tokens instead of the default's 49), h1 a two-layer GELU MLP into the LLM's hidden size,
the `[EMB]` row initialised to the mean input embedding (deterministic: an untrained model embeds the
same way on every machine), h1 from a fixed seed.

Routing: an image input featurised without tokens (`MMGEMFeaturizer.featurize_images` of a plain image
gives `pixel_values` only) is embedded by h1; every input with tokens (texts, composed image + text
queries, `image_embedding: llm`) goes through the LLM and the pooler, E5-V style.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.errors import ConfigError
from mmembed.models.backbones import projector_module, unwrap
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.featurizer import Featurizer
from mmembed.models.mmgem.heads import MMGEMVisionHeads, global_route, region_route

IMAGE_EMBEDDINGS = ("h1", "llm")
TRAINABLE_PARTS = ("emb", "h1", "h2")
# Prompt kinds whose inputs are a lone image (no text): the dual tower embeds these with h1.
IMAGE_ONLY_KINDS = ("image", "cir_target", "fiq_target")


@dataclass
class MMGEMExtension:
    """`model.extension` of conf/model/mmgem.yaml: what turns a loaded LLaVA-style model into MM-GEM.

    The model factory calls `prepare_processor()` before it builds the featurizer (of `featurizer_class`),
    `prepare_model()` right after the weights load (before a saved adapter attaches, whose keys expect the new
    token row and heads), `lora_options()` when fresh LoRA is added, and `embedder()` last."""

    emb_token: str = "[EMB]"
    grid: int = 3
    pool_mode: str = "avg"
    image_embedding: str = "h1"
    seed: int = 0
    # What trains: the [EMB] row ("emb"), the image-embedding head ("h1"), the caption-prefix head ("h2").
    # An arm of the conflict ablation trains only what its objective reaches (conf/arm/): a trainable part
    # that gets no gradient makes DDP fail at the second step.
    train: tuple[str, ...] = TRAINABLE_PARTS

    def __post_init__(self):
        if self.image_embedding not in IMAGE_EMBEDDINGS:
            raise ConfigError(f"model.extension.image_embedding={self.image_embedding!r}: expected one of {IMAGE_EMBEDDINGS}")
        self.train = tuple(self.train)
        unknown = sorted(set(self.train) - set(TRAINABLE_PARTS))
        if unknown or not self.train:
            raise ConfigError(f"model.extension.train={list(self.train)}: a non-empty subset of {list(TRAINABLE_PARTS)}")
        if self.grid < 1:
            raise ConfigError(f"model.extension.grid={self.grid} must be >= 1")

    # ---- featurizer: the [EMB] token and a g*g image placeholder run ----
    def prepare_processor(self, processor, tokenizer, supports_images: bool) -> None:
        """Add [EMB] to the tokenizer and make the processor write g*g placeholders, in place, before the
        factory builds the featurizer (of `featurizer_class`) from them."""
        if self.emb_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [self.emb_token]},
                                         replace_extra_special_tokens=False)
        if supports_images and hasattr(processor, "patch_size"):
            # LlavaProcessor writes (size // patch_size)^2 placeholders per image (+ CLS - CLS under the
            # "default" feature selection): size // g as the patch gives exactly g*g, matching the prefix.
            size = _image_side(processor.image_processor)
            processor.patch_size = size // self.grid
            if getattr(processor, "vision_feature_select_strategy", None) == "full":
                # no CLS token to count: a label-word base writes its span as 1 patch + extra tokens
                processor.num_additional_image_tokens = 0

    @property
    def featurizer_class(self) -> type[Featurizer]:
        return MMGEMFeaturizer if self.image_embedding == "h1" else Featurizer

    def emb_token_id(self, tokenizer) -> int:
        return int(tokenizer.convert_tokens_to_ids(self.emb_token))

    # ---- model: a row for [EMB], the heads in the projector's place ----
    def prepare_model(self, model: nn.Module, tokenizer) -> nn.Module:
        inner = unwrap(model)
        embeddings = inner.get_input_embeddings()
        if embeddings.num_embeddings < len(tokenizer):
            with torch.no_grad():
                mean = embeddings.weight.mean(dim=0)
            inner.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                inner.get_input_embeddings().weight[self.emb_token_id(tokenizer)] = mean
        body = inner.model
        if isinstance(getattr(body, "multi_modal_projector", None), nn.Module) and not isinstance(
                body.multi_modal_projector, MMGEMVisionHeads):
            if getattr(inner.config, "image_grid", None):
                raise ConfigError("model=mmgem pools the tower's tokens itself: use a model folder without image_grid")
            h2 = projector_module(model)
            if getattr(h2, "uses_holes", False):  # e.g. the label-word projector: ids through the LLM's table
                raise ConfigError(f"model=mmgem needs a projector that maps pooled features to tokens (an MLP); "
                                  f"{type(h2).__name__} writes label words with holes: use model.name_or_path=default "
                                  "or default:mlp, not the label-word base")
            vision_dim = getattr(inner.config, "vision_hidden_size", None) or _first_linear(h2).in_features
            hidden = inner.get_input_embeddings().embedding_dim
            body.multi_modal_projector = MMGEMVisionHeads(h2, vision_dim, hidden, self.grid, self.pool_mode, self.seed)
        return model

    def lora_options(self, model: nn.Module, tokenizer) -> dict:
        """peft LoraConfig extras: train and save the [EMB] row and the heads with the adapter."""
        embed_name = _module_name(unwrap(model), unwrap(model).get_input_embeddings())
        options = {}
        if "emb" in self.train:
            options["trainable_token_indices"] = {embed_name.rsplit(".", 1)[-1]: [self.emb_token_id(tokenizer)]}
        if isinstance(getattr(unwrap(model).model, "multi_modal_projector", None), MMGEMVisionHeads) and \
                {"h1", "h2"} & set(self.trained_heads()):
            options["modules_to_save"] = ["multi_modal_projector"]
        return options

    def trained_heads(self) -> list[str]:
        """The heads that train: those in `train` that the recipe reaches (h1 only embeds images when
        image_embedding is "h1")."""
        return [h for h in ("h1", "h2") if h in self.train and (h != "h1" or self.image_embedding == "h1")]

    def finalize_trainable(self, model: nn.Module) -> None:
        """After LoRA: freeze the heads' trainable copies that nothing trains (modules_to_save copies both)."""
        frozen = [h for h in ("h1", "h2") if h not in self.trained_heads()]
        for name, parameter in model.named_parameters():
            if "multi_modal_projector" in name and any(f".{head}." in name for head in frozen):
                parameter.requires_grad_(False)

    def embedder(self, backbone, pooler, featurizer: Featurizer) -> MLLMEmbedder:
        return MMGEMEmbedder(backbone, pooler=pooler, featurizer=featurizer)


class MMGEMFeaturizer(Featurizer):
    """A lone image becomes `pixel_values` only (no prompt, no tokens): the dual tower's h1 embeds it."""

    def featurize_images(self, images, texts=None, kind: str = "image", category: str | None = None):
        if texts is not None or kind not in IMAGE_ONLY_KINDS:
            return super().featurize_images(images, texts, kind=kind, category=category)
        self._check_images()
        return {"pixel_values": self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]}


class MMGEMEmbedder(MLLMEmbedder):
    """MLLMEmbedder whose token-less image inputs are embedded by h1 of the pooled tower features, and
    whose `embed_regions` embeds one box per image by h1 of its RoI-pooled region vector."""

    @torch.no_grad()
    def embed_regions(self, images, boxes) -> torch.Tensor:
        """[B, D] unit vectors of one box per image ((x1, y1, x2, y2) in that image's pixels)."""
        images = list(images)
        inputs = self.featurizer.featurize_images(images)
        return self(**inputs, region_boxes=normalised_boxes(images, boxes, self.featurizer))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        boxes = inputs.pop("region_boxes", None)  # [B, 4] normalised (NaN rows: whole images), see region_route
        if boxes is not None:
            with region_route(self.backbone.body, boxes):
                return self.forward(**inputs)
        if "input_ids" in inputs:
            return super().forward(**inputs)
        body, device = self.backbone.body, self.device
        with global_route(body):
            features = body.get_image_features(**{k: v.to(device) for k, v in inputs.items()})
        # LLaVA returns a ModelOutput whose pooler_output holds the projector's output; SmolLlava the tensor
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features]).unsqueeze(1)
        return F.normalize(features[:, 0].float(), dim=-1)


def normalised_boxes(images, boxes, featurizer: Featurizer) -> torch.Tensor:
    """[B, 4]: each image's pixel box mapped through the featurizer's preprocessing (region_boxes.py);
    a None box (the whole image) becomes a row of NaN."""
    from mmembed.models.mmgem.region_boxes import processed_box

    if len(boxes) != len(images):
        raise ValueError(f"one box per image: {len(boxes)} boxes for {len(images)} images")
    image_processor = featurizer.processor.image_processor
    nan = (float("nan"),) * 4
    return torch.tensor([nan if box is None else processed_box(box, image.size, image_processor)
                         for image, box in zip(images, boxes)], dtype=torch.float32)


def _image_side(image_processor) -> int:
    """The side of the square the processor resizes (or crops) images to; dicts and transformers' SizeDict alike."""
    for size in (getattr(image_processor, "crop_size", None), getattr(image_processor, "size", None)):
        if isinstance(size, int):
            return size
        for key in ("height", "shortest_edge"):
            side = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if side:
                return int(side)
    raise ConfigError(f"cannot read the image size of {type(image_processor).__name__} to place g*g image tokens")


def _first_linear(projector: nn.Module) -> nn.Linear:
    linear = next((m for m in projector.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise ConfigError(f"cannot read the input size of the projector {type(projector).__name__}")
    return linear


def _module_name(root: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in root.named_modules() if module is target)
