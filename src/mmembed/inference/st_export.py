"""Export a (merged) model as a sentence-transformers folder: `SentenceTransformer(folder).encode(...)` gives
mmembed's vectors with no mmembed code.

What sentence-transformers 6 does natively carries the whole recipe, so the folder ships no Python:
- the weights are `export_merged`'s (adapter folded in), loaded by ST's `Transformer` as the family's
  transformers base model (`AutoModel`: the decoder body, whose `last_hidden_state` mmembed pools);
- the prompts: ST renders every input as a chat message through `apply_chat_template`; we hand it
  (in `processing_kwargs`, so the tokenizer's own chat template stays as mmembed's prompts expect it) a
  Jinja template that writes mmembed's rendered strings character for character: the text prompt around
  a text, the image prompt for an image, the cir_query prompt for an image + text pair (E5-V's literal
  Llama-3 `format`, BOS and suffix included, since we render them with mmembed's own `PromptRenderer`);
- left padding (`processing_kwargs`), no special tokens added (mmembed writes BOS into the string);
- `Pooling(pooling_mode="lasttoken")` (or "mean" for MeanPooler), then `Normalize()`.

mmembed's prompts have one text prompt (no query/document split), so `encode_query` and
`encode_document` give the same vectors; ST's `prompts` stay empty.

The offline default family (smol_llava) is mmembed's own architecture (EfficientNet tower, grounded
projector) that transformers cannot load without code: by default its folder holds the merged language model
alone (a standard Llama that transformers loads natively), so it encodes texts only; opt-in `remote_code`
keeps the whole model and copies its modeling code into the folder (remote_code.py), for
`SentenceTransformer(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mmembed.errors import ConfigError
from mmembed.inference.export import EXPORT_FILE, ExportTargetError, export_merged
from mmembed.inference.model_card import write_model_card
from mmembed.models.backbones import DEFAULT_MODEL
from mmembed.models.prompts import PromptConfig, PromptRenderer, saved_prompts

log = logging.getLogger(__name__)

SMOL_LLAVA_TYPE = "mmembed_smol_llava"
_SENTINEL = "MMEMBEDSENTINEL"  # where a text goes, when splitting a rendered prompt into before / after
_PROBES = ("A dog.", "  two  spaces ", "line\nbreak {braces} {{ jinja }} \"quotes\" ü")


def export_sentence_transformers(
    out_dir: str | Path,
    adapter: str | Path | None,
    model: str | Path = DEFAULT_MODEL,
    dtype: str = "float32",
    prompts: PromptConfig | Mapping | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    remote_code: bool = False,
) -> Path:
    """Merge `adapter` into `model` (export_merged) and add the sentence-transformers modules to the folder.

    Returns the folder; `SentenceTransformer(str(folder))` loads it. Images are encoded too where ST drives
    the family's processor (every transformers family). smol_llava: by default the folder holds its language
    model, for texts only; remote_code=True keeps the whole model and ships its modeling code (remote_code.py),
    loaded with `SentenceTransformer(folder, trust_remote_code=True)`, for images too.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportTargetError(f"{out} exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)")
    pooling = _pooling_mode(adapter)  # refuse what ST cannot express before the merge
    merged = export_merged(out, adapter, model=model, dtype=dtype, prompts=prompts,
                           trust_remote_code=trust_remote_code, overwrite=overwrite, model_card=False)
    provenance = json.loads((merged / EXPORT_FILE).read_text())
    renderer = _renderer(merged)  # before the folder changes below: mmembed's own loader reads it as exported
    smol = json.loads((merged / "config.json").read_text()).get("model_type") == SMOL_LLAVA_TYPE
    text_only = smol and not remote_code
    if text_only:
        _language_model_only(merged)
    elif smol:
        from mmembed.inference.remote_code import add_remote_code

        add_remote_code(merged)
    images = not text_only and renderer.image_token is not None
    if not images:
        _tokenizer_alone(merged)
    _write_st_modules(merged, chat_template(renderer, images=images), pooling, images=images,
                      trust_remote_code=smol and remote_code)
    provenance.update({"format": "sentence_transformers", "pooling": pooling,
                       "modalities": ["text", "image", "image+text"] if images else ["text"]})
    if text_only:
        provenance["text_only_reason"] = (
            "the base model's vision tower and projector are mmembed's own architecture (SmolLlava), which "
            "transformers does not load without code: this folder holds its language model, for texts "
            "(`--trust-remote-code` ships the code instead)")
    if smol and remote_code:
        provenance["trust_remote_code"] = True
    (merged / EXPORT_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    write_model_card(merged, adapter)
    return merged


# ---- the prompts, as a chat template ST applies ----
def split_prompt(renderer: PromptRenderer, kind: str) -> tuple[str, str]:
    """(before, after) with render(kind, text) == before + text + after for every text; a chat template
    that rewrites the text (e.g. strips it) cannot be split so, and is refused rather than drifting."""
    rendered = renderer.render(kind, _SENTINEL)
    if rendered.count(_SENTINEL) != 1:
        raise ConfigError(f"the {kind!r} prompt does not keep its text verbatim; it cannot be exported")
    before, after = rendered.split(_SENTINEL)
    for text in _PROBES:
        if renderer.render(kind, text) != before + text + after:
            raise ConfigError(f"the {kind!r} prompt changes the text it wraps ({text!r}); it cannot be exported")
    return before, after


def chat_template(renderer: PromptRenderer, images: bool = True) -> str:
    """A Jinja chat template writing mmembed's prompt for the user message: text -> the text prompt, image ->
    the image prompt, image + text -> cir_query. Other roles (ST's system-message `prompt`) are ignored."""
    q = json.dumps  # a JSON string literal (ASCII, backslash escapes) is a valid Jinja string literal
    text_before, text_after = split_prompt(renderer, "text")
    parts = [
        "{%- set ns = namespace(text=none, image=false) -%}",
        "{%- for message in messages if message['role'] == 'user' -%}",
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}",
        "{%- else -%}{%- for part in message['content'] -%}",
        "{%- if part['type'] == 'image' -%}{%- set ns.image = true -%}",
        "{%- elif part['type'] == 'text' -%}{%- set ns.text = part['text'] -%}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}{%- endfor -%}",
    ]
    if images:
        cir_before, cir_after = split_prompt(renderer, "cir_query")
        parts += [
            "{%- if ns.image and ns.text is not none -%}{{ " + q(cir_before) + " ~ ns.text ~ " + q(cir_after) + " }}",
            "{%- elif ns.image -%}{{ " + q(renderer.render("image")) + " }}",
            "{%- else -%}{{ " + q(text_before) + " ~ ns.text ~ " + q(text_after) + " }}{%- endif -%}",
        ]
    else:
        parts.append("{{ " + q(text_before) + " ~ ns.text ~ " + q(text_after) + " }}")
    return "".join(parts)


def _renderer(folder: Path) -> PromptRenderer:
    from mmembed.models.backbones import load_featurizer

    featurizer = load_featurizer(str(folder), prompts=saved_prompts(folder))
    return featurizer.renderer


# ---- the modules ----
def _pooling_mode(adapter) -> str:
    """ST's pooling mode for the pooler the adapter was trained with (its mmembed_model.json record)."""
    from mmembed.models.model_record import saved_model_record

    record = saved_model_record(adapter) or {}
    if record.get("extension"):
        raise ConfigError(f"the adapter uses the model extension {record['extension'].get('_target_')}, which "
                          "sentence-transformers cannot express; export it with --format merged")
    target = str((record.get("pooler") or {}).get("_target_", "mmembed.models.pooling.LastTokenPooler"))
    modes = {"LastTokenPooler": "lasttoken", "MeanPooler": "mean"}
    name = target.rpartition(".")[2]
    if name not in modes:
        raise ConfigError(f"the pooler {target} has no sentence-transformers Pooling mode (only last token and "
                          "mean do); export it with --format merged")
    return modes[name]


def _write_st_modules(folder: Path, template: str, pooling: str, images: bool, trust_remote_code: bool) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    kwargs = dict(transformer_task="feature-extraction",
                  processing_kwargs={"chat_template": {"chat_template": template}, "text": {"padding_side": "left"}})
    if trust_remote_code:  # the load-time switch is the user's: these kwargs are not saved with the module
        kwargs.update({f"{part}_kwargs": {"trust_remote_code": True} for part in ("model", "config", "processor")})
    try:
        transformer = Transformer(str(folder), **kwargs)
    except OSError as err:
        if "video processor" in str(err):  # Qwen2-VL's processor: transformers builds it only with torchvision
            raise ConfigError("sentence-transformers loads this model's processor (Qwen2-VL) only with torchvision "
                              "installed (its video processor needs it); install torchvision, or use --format merged"
                              ) from err
        raise
    if "message" not in transformer.modality_config:
        raise ConfigError(f"sentence-transformers found no chat-message input for {folder}; cannot export prompts")
    if images:
        # Multimodal processors read images from typed content parts ({"type": "image", ...}); ST infers the
        # "flat" message format (content = the input itself) for some of them, which they cannot read.
        config = {name: dict(params) for name, params in transformer.modality_config.items()}
        config["message"]["format"] = "structured"
        transformer = Transformer(str(folder), modality_config=config,
                                  module_output_name=transformer.module_output_name, **kwargs)
    st = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling),
                                      Normalize()])
    # The root already holds export_merged's checkpoint (the ForConditionalGeneration layout mmembed loads):
    # write the Transformer module's config only, not ST's re-save of the base model under another layout.
    transformer.save = lambda path, *args, **kwargs: transformer.save_config(path)
    st.save(str(folder), create_model_card=False)


def _language_model_only(folder: Path) -> None:
    """Replace a SmolLlava checkpoint in `folder` by its language model as a LlamaForCausalLM (+ tokenizer)."""
    from transformers import AutoModelForCausalLM

    from mmembed.models.backbones import load_backbone

    backbone = load_backbone(str(folder))
    body = backbone.model.model
    lm = AutoModelForCausalLM.from_config(body.language_model.config)
    lm.model.load_state_dict(body.language_model.state_dict())
    lm.to(next(body.language_model.parameters()).dtype)
    lm.tie_weights()
    keep = {EXPORT_FILE, "mmembed_prompts.json"}
    with tempfile.TemporaryDirectory() as tmp:
        lm.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        for path in folder.iterdir():
            if path.name not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in Path(tmp).iterdir():
            shutil.move(str(path), folder / path.name)


def _tokenizer_alone(folder: Path) -> None:
    """A text-only folder's tokenizer may still name a multimodal processor class (e.g. one cut from the
    default model); AutoProcessor, which ST uses, would then look for an image processor: drop the name."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.pop("processor_class", None) is not None:
        path.write_text(json.dumps(config, indent=2) + "\n")
