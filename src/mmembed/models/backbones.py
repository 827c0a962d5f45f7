"""Load a backbone (model + processor) from a hub id or a local folder, one code path for every family.

Supported: LLaVA-NeXT (E5-V's llava-llama-3-8b / royokong/e5-v), LLaVA-1.5, Qwen2-VL / Qwen2.5-VL,
Idefics3 / SmolVLM, plain causal LMs (text only), and mmembed's own offline default (SmolLlava).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneLoadError(MMEmbedError, RuntimeError):
    """A model could not be loaded; the message says what the user can do about it."""


@dataclass
class Backbone:
    """A loaded model with everything the embedder needs to feed it."""

    model: nn.Module  # the full transformers model (ForConditionalGeneration or ForCausalLM)
    processor: object  # a multimodal processor, or a tokenizer for text-only models
    tokenizer: object
    family: str  # "llava_next" | "llava" | "qwen2_vl" | "idefics3" | "smol_llava" | "causal_lm"
    image_token: str | None  # the string the processor expands into image placeholders
    name_or_path: str

    @property
    def body(self) -> nn.Module:
        """The decoder body that returns last hidden states (no LM head): `model.model`."""
        return unwrap(self.model).model

    @property
    def supports_images(self) -> bool:
        return self.image_token is not None and vision_modules(self.model) != {}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


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


def _hub_hint(source: str, err: OSError) -> BackboneLoadError:
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
        raise _hub_hint(source, err) from err
    return VISION_LANGUAGE_TYPES.get(model_type, "causal_lm"), model_type


def load_featurizer(
    name_or_path: str = DEFAULT_MODEL,
    *,
    prompts=None,
    text_only: bool = False,
    trust_remote_code: bool = False,
    padding_side: str = "left",
    cache_dir: str | None = None,
):
    """The model's `Featurizer` (tokenizer, processor, prompt renderer) from its folder, without its weights."""
    from mmembed.models.featurizer import Featurizer

    source = check_model_source(name_or_path, cache_dir, trust_remote_code)
    family, model_type = model_family(source, trust_remote_code)
    try:
        processor = _load_processor_of(family, source, model_type, trust_remote_code)
    except OSError as err:
        raise _hub_hint(source, err) from err
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Featurizer(processor, tokenizer, family, _image_token(family, processor), prompts, source,
                      supports_images=not text_only)


def load_backbone(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    text_only: bool = False,
    attn_implementation: str | None = "sdpa",
    padding_side: str = "left",
    cache_dir: str | None = None,
    quantization_config=None,
    featurizer=None,
    vision_dtype: str | None = None,
) -> Backbone:
    """Load model + processor. `text_only=True` drops the vision tower and projector after loading.

    `vision_dtype` (e.g. float32 beside dtype=bfloat16) keeps the vision tower and projector in their own
    precision: the default model's grounded projector picks each patch's top-k ImageNet classes, and bf16
    rounding of the tower's features flips some picks, while the LLM, where the time goes, runs in `dtype`.

    `featurizer` (from `load_featurizer` on the same folder) reuses its already loaded processor.
    """
    for setting, value in (("dtype", dtype), ("vision_dtype", vision_dtype)):
        if value is not None and value not in DTYPES:
            raise BackboneLoadError(f"model.{setting}={value!r} is not one of {sorted(DTYPES)}")
    if featurizer is None:
        featurizer = load_featurizer(name_or_path, text_only=text_only, trust_remote_code=trust_remote_code,
                                     padding_side=padding_side, cache_dir=cache_dir)
    source = featurizer.name_or_path
    mixed = vision_dtype is not None and vision_dtype != dtype and not text_only
    # Mixed precision loads in the vision dtype, then casts everything else: weights loaded in bf16 and
    # cast up would have lost their float32 digits already.
    kwargs = {"dtype": DTYPES[vision_dtype if mixed else dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:  # e.g. a BitsAndBytesConfig (mmembed.models.quantization)
        kwargs["quantization_config"] = quantization_config
    try:
        model = _load_model(featurizer.family, source, kwargs)
    except OSError as err:
        raise _hub_hint(source, err) from err
    model.eval()
    backbone = Backbone(model, featurizer.processor, featurizer.tokenizer, featurizer.family, featurizer.image_token,
                        source)
    if text_only:
        drop_vision(model)
    elif mixed:
        _cast_all_but_vision(model, DTYPES[dtype])
    return backbone


def _cast_all_but_vision(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer to `dtype`, except those of the vision tower and projector."""
    keep = {id(m) for v in vision_modules(model).values() for m in v.modules()}
    for module in model.modules():
        if id(module) in keep:
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))


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


def _load_model(family: str, source: str, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if family == "smol_llava":
        from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

        return SmolLlavaForConditionalGeneration.from_pretrained(source, **kwargs)
    if family == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return AutoModelForImageTextToText.from_pretrained(source, **kwargs)


def _load_processor_of(family: str, source: str, model_type: str | None, trust_remote_code: bool):
    import transformers
    from transformers import AutoTokenizer

    if family == "smol_llava":
        # LlavaProcessor probes the folder's config with the generic config class, which warns about
        # our model_type although nothing is wrong; silence only that call.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            return transformers.LlavaProcessor.from_pretrained(source)
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


# Attribute names under `model.model` that hold vision-only modules, per transformers family.
_VISION_ATTRS = ("vision_tower", "multi_modal_projector", "visual", "vision_model", "connector", "image_newline")


def vision_modules(model: nn.Module) -> dict[str, nn.Module]:
    body = unwrap(model).model
    return {name: getattr(body, name) for name in _VISION_ATTRS if isinstance(getattr(body, name, None), nn.Module)}


# The vision-to-language projector, per family: LLaVA / LLaVA-NeXT / SmolLlava, Idefics3, Qwen2-VL.
_PROJECTOR_PATHS = ("multi_modal_projector", "connector", "visual.merger")


def projector_module(model: nn.Module) -> nn.Module:
    """The module mapping vision features into the LLM's embedding space (what alignment trains)."""
    body = unwrap(model).model
    for path in _PROJECTOR_PATHS:
        module = body
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(unwrap(model)).__name__} has no vision projector (looked for {_PROJECTOR_PATHS})")


def drop_vision(model: nn.Module) -> list[str]:
    """Free the vision tower and projector (E5-V trains the LLM alone). Returns the dropped names.

    The modules are replaced by None in place, so module paths of the language model (and so
    LoRA adapter keys) stay exactly those of the full model.
    """
    body = unwrap(model).model
    dropped = []
    for name in list(vision_modules(model)):
        setattr(body, name, None)
        dropped.append(name)
    if isinstance(getattr(body, "image_newline", None), torch.Tensor):
        body.image_newline = None
        dropped.append("image_newline")
    log.info("text-only: dropped %s", ", ".join(dropped) or "nothing")
    return dropped

