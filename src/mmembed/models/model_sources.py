"""Where a model comes from: a name ("default", a hub id, a folder) -> a checked source, its family and its
processor (tokenizer + image processor) -- everything known before any weight loads."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import MMEmbedError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"  # the name that selects the offline SmolLlava default
SMOL_LLAVA_TYPE = "mmembed_smol_llava"
VISION_LANGUAGE_TYPES = {
    "llava_next": "llava_next",
    "llava": "llava",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    SMOL_LLAVA_TYPE: "smol_llava",
}

class BackboneLoadError(MMEmbedError, RuntimeError):
    """A model could not be loaded; the message says what the user can do about it."""


def _read_model_type(path: Path) -> str | None:
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("model_type")


def resolve_name_or_path(name_or_path: str, cache_dir: str | None = None) -> str:
    """Map "default" to the prepared offline model folder (building it once), "default:<projector>" to that
    projector recipe's folder (e.g. "default:label_words", "default:mlp"); leave others alone."""
    if name_or_path == DEFAULT_MODEL or name_or_path.startswith(DEFAULT_MODEL + ":"):
        from mmembed.models.smol_llava.assembly import DEFAULT_PROJECTOR, ensure_default_model

        projector = name_or_path.partition(":")[2] or DEFAULT_PROJECTOR
        return str(ensure_default_model(cache_dir, projector_type=projector))
    return name_or_path


def check_model_source(name_or_path: str, cache_dir: str | None = None, trust_remote_code: bool = False) -> str:
    """The loadable source for `name_or_path` ("default" -> the prepared folder), refusing bad folders early."""
    source = resolve_name_or_path(str(name_or_path), cache_dir)
    local = Path(source).expanduser()
    if not local.exists() and (local.is_absolute() or source.startswith((".", "~"))):
        raise BackboneLoadError(f"model folder {local} does not exist")
    if local.exists() and not local.is_dir():
        raise BackboneLoadError(f"model.name_or_path={source!r} is a file; pass the model's folder")
    if local.is_dir() and not (local / "config.json").is_file():
        raise BackboneLoadError(
            f"{local} has no config.json: model.name_or_path must be a `save_pretrained` folder or a hub id"
        )
    _refuse_remote_code(local, trust_remote_code)
    return str(local) if local.is_dir() else source


def hub_hint(source: str, err: OSError) -> BackboneLoadError:
    return BackboneLoadError(
        f"could not load {source!r}: {err}\nIf it is a hub id and this machine has no network, download it "
        "where there is one and pass the local folder instead: model.name_or_path=/path/to/folder"
    )


def model_family(source: str, trust_remote_code: bool = False) -> tuple[str, str | None]:
    """(family, model_type) of a checked source (see `check_model_source`)."""
    local = Path(source)
    try:
        model_type = _read_model_type(local) if local.is_dir() else _hub_model_type(source, trust_remote_code)
    except OSError as err:
        raise hub_hint(source, err) from err
    return VISION_LANGUAGE_TYPES.get(model_type, "causal_lm"), model_type


@dataclass
class ProcessorParts:
    """A model's processor side, loaded from its source: what a Featurizer is built from."""

    processor: object  # a multimodal processor, or a tokenizer for text-only models
    tokenizer: object
    family: str
    image_token: str | None
    source: str  # the checked source (a local folder or a hub id)


def load_processor_parts(
    name_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "left", cache_dir: str | None = None
) -> ProcessorParts:
    """The model's tokenizer and processor from its folder, without its weights."""
    source = check_model_source(name_or_path, cache_dir, trust_remote_code)
    family, model_type = model_family(source, trust_remote_code)
    try:
        processor = _load_processor_of(family, source, model_type, trust_remote_code)
    except OSError as err:
        raise hub_hint(source, err) from err
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ProcessorParts(processor, tokenizer, family, _image_token(family, processor), source)


def _refuse_remote_code(local: Path, trust_remote_code: bool) -> None:
    if trust_remote_code or not local.is_dir():
        return
    config = json.loads((local / "config.json").read_text()) if (local / "config.json").is_file() else {}
    if config.get("auto_map") or any(local.glob("*.py")):
        raise BackboneLoadError(
            f"{local} ships its own Python code (auto_map / *.py). mmembed does not run model code from a "
            "folder unless you allow it for this model: model.trust_remote_code=true"
        )


def _hub_model_type(name: str, trust_remote_code: bool) -> str | None:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).model_type


def _load_processor_of(family: str, source: str, model_type: str | None, trust_remote_code: bool):
    import transformers
    from transformers import AutoTokenizer

    if family == "smol_llava":
        # LlavaProcessor probes the folder's config with the generic config class, which warns about
        # our model_type although nothing is wrong; silence only that call.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            return transformers.LlavaProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        finally:
            transformers.logging.set_verbosity(verbosity)
    if family == "causal_lm":
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    return _load_processor(source, model_type, trust_remote_code)


def _load_processor(source: str, model_type: str | None, trust_remote_code: bool):
    """AutoProcessor, or -- where its video sub-processor needs the absent torchvision (Qwen2-VL,
    Qwen2.5-VL, SmolVLM) -- the same processor class without one. Images and text work as usual."""
    import transformers
    from transformers import AutoProcessor
    from transformers.models.auto.auto_mappings import PROCESSOR_MAPPING_NAMES
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ImportError, AttributeError, TypeError):
        processor_cls = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
        if (
            is_torchvision_available()
            or processor_cls is None
            or "video_processor" not in processor_cls.get_attributes()
        ):
            raise
    log.info("torchvision is not installed: loading %s without its video processor", processor_cls.__name__)
    return without_video_processor(processor_cls).from_pretrained(source)


def without_video_processor(processor_cls: type) -> type:
    """`processor_cls` minus its `video_processor` sub-processor (transformers builds video processors
    with torchvision only). Same class name, so `save_pretrained` writes a standard processor config."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        processor_cls.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
        )

    return type(processor_cls.__name__, (processor_cls,), {"__init__": __init__, "__module__": __name__})


def _image_token(family: str, processor) -> str | None:
    if family == "causal_lm":
        return None
    if family == "qwen2_vl":
        # Qwen2-VL's processor expands <|image_pad|>; the vision markers around it belong in the prompt.
        return "<|vision_start|><|image_pad|><|vision_end|>"
    return getattr(processor, "image_token", "<image>")
