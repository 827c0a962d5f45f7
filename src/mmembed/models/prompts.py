"""E5-V prompts: the one place a model input string is built, for training and evaluation alike.

Templates come from config (`conf/prompt/*.yaml`) as a `PromptConfig`; `PromptRenderer.render`
fills the placeholders, wraps the body either in a literal `format` (a paper's released string, e.g.
E5-V's Llama-3 turn) or in the tokenizer's chat template, optionally puts the BOS token in front, and
appends an optional suffix. Nothing else in the project concatenates prompt strings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)

SENT = "<sent>"
BODY = "{}"  # where a literal `format` takes the rendered body
IMAGE = "<image>"
CATEGORY = "<category>"

# Written beside adapters (by training) and exported models, so every loader renders the prompts
# the weights were trained with.
PROMPTS_FILE = "mmembed_prompts.json"

# The kinds of input an embedding prompt can wrap: plain text, plain image, and E5-V's composed
# image retrieval pairs (CIRR: query = reference image + edit text, target = candidate image;
# FashionIQ: the same with a garment category).
KINDS = ("text", "image", "cir_query", "cir_target", "fiq_query", "fiq_target")


@dataclass(frozen=True)
class PromptConfig:
    """Prompt templates and how to wrap them.

    The template defaults are E5-V's bodies (kongds/E5-V retrieval.py, llava-llama-3 branch) character
    for character, including their trailing spaces, leading spaces and the "desribe" typo, so numbers
    stay comparable with the paper. The wrapping defaults to the tokenizer's chat template; E5-V's own
    literal Llama-3 wrapping is `format` + `bos` in conf/prompt/e5v.yaml.
    """

    text: str = "<sent>\nSummary above sentence in one word: "
    image: str = "<image>\nSummary above image in one word: "
    cir_query: str = '<image>Modify this image with "<sent>", desribe modified image in one word:'
    cir_target: str = "<image>\n Describe this image in one word:"
    fiq_query: str = (
        "<image> change the style of this <category> to <sent>\n "
        "Desribe this modified <category> in one word based on its style:"
    )
    fiq_target: str = "<image>\n Describe this <category> in one word based on its style:"
    # Wrap the body as a user turn with the tokenizer's chat template (when it has one).
    chat_template: bool = True
    # System message for the chat template; None keeps the template's own default.
    system: str | None = None
    # Appended after the rendered prompt.
    suffix: str = ""
    # A literal wrapping with exactly one "{}" where the body goes, used instead of the chat template:
    # papers release fixed strings (E5-V's Llama-3 turn keeps the body's trailing space and ends with
    # " \n", which Llama-3's own template, trimming the content, does not reproduce).
    format: str | None = None
    # Put the tokenizer's BOS token in front. Papers call their processors with the default
    # add_special_tokens=True, which adds it; our featurizers tokenize with add_special_tokens=False,
    # so it must be in the string. Skipped when the wrapped string already starts with it (a chat
    # template that writes its own BOS).
    bos: bool = False

    def __post_init__(self):
        if self.format is not None:
            if not isinstance(self.format, str) or self.format.count(BODY) != 1:
                found = self.format.count(BODY) if isinstance(self.format, str) else 0
                raise ConfigError(
                    f"prompt.format must contain exactly one {BODY!r} (where the prompt body goes); "
                    f"found {found} in {self.format!r}"
                )
            if self.system is not None:
                raise ConfigError(
                    "prompt.system is set but prompt.format replaces the chat template, so it would be "
                    "ignored; write the system turn into prompt.format, or set prompt.format=null"
                )
        if not isinstance(self.bos, bool):
            raise ConfigError(f"prompt.bos must be true or false, got {self.bos!r}")

    @classmethod
    def from_mapping(cls, mapping) -> PromptConfig:
        """From config or a saved mmembed_prompts.json; settings a file predates keep their defaults."""
        unknown = sorted(set(mapping) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown prompt settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**dict(mapping))


class PromptRenderer:
    """Renders E5-V prompts for one tokenizer/model (its image token, its chat template)."""

    def __init__(self, config: PromptConfig, tokenizer=None, image_token: str | None = IMAGE):
        self.config = config
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.use_chat = bool(
            config.format is None and config.chat_template and getattr(tokenizer, "chat_template", None)
        )
        self.bos_token = self._bos_token() if config.bos else ""

    def _bos_token(self) -> str:
        bos = getattr(self.tokenizer, "bos_token", None)
        if not bos:
            raise ConfigError("prompt.bos=true but this model's tokenizer has no BOS token; set prompt.bos=false")
        # A BOS written into the string must tokenize as the BOS the processor would add, followed by
        # the same ids; SentencePiece tokenizers that prefix "▁" only to the start of the text
        # (Metaspace prepend_scheme="first") lose that prefix after it. Say so instead of drifting.
        probe = (self.config.format or BODY).split(BODY)[0] + "A dog."
        written = self.tokenizer(bos + probe, add_special_tokens=False)["input_ids"]
        added = [self.tokenizer.bos_token_id] + self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        if written != added:
            log.warning(
                "prompt.bos: %r tokenizes differently after a written BOS %r (%s vs %s); inputs will not "
                "match the released recipe token for token",
                *(probe, bos, written, added),
            )
        return bos

    def template(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown prompt kind {kind!r}; expected one of {KINDS}")
        return getattr(self.config, kind)

    def render(self, kind: str, text: str | None = None, category: str | None = None) -> str:
        """The exact model input string for one item of `kind`."""
        body = self.template(kind)
        if SENT in body:
            if text is None:
                raise ValueError(f"the {kind!r} prompt needs a text")
            body = body.replace(SENT, text)
        if CATEGORY in body:
            if category is None:
                raise ValueError(f"the {kind!r} prompt needs a category")
            body = body.replace(CATEGORY, category)
        return self.user_turn(body, what=f"{kind!r} prompts") + self.config.suffix

    def user_turn(self, body: str, what: str = "this prompt") -> str:
        """`body` (with <image> placeholders) as the model sees it: the model's image token, wrapped
        as a user turn (the literal `format`, else the chat template when used), ending where the
        assistant's answer begins, with the BOS token in front when asked for."""
        if IMAGE in body:
            if self.image_token is None:
                raise ValueError(f"this model has no image token; it cannot render {what}")
            body = body.replace(IMAGE, self.image_token)
        if self.config.format is not None:
            # Split rather than str.format: texts and templates may hold braces of their own.
            before, after = self.config.format.split(BODY)
            body = before + body + after
        elif self.use_chat:
            messages = [{"role": "user", "content": body}]
            if self.config.system is not None:
                messages.insert(0, {"role": "system", "content": self.config.system})
            body = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.bos_token and not body.startswith(self.bos_token):
            body = self.bos_token + body
        return body

    def render_many(
        self, kind: str, texts: Sequence[str | None] | None = None, n: int | None = None, category: str | None = None
    ) -> list[str]:
        if texts is None:
            return [self.render(kind, category=category) for _ in range(n or 0)]
        return [self.render(kind, t, category=category) for t in texts]


def truncate_to_tokens(texts: Sequence[str], tokenizer, max_tokens: int | None) -> list[str]:
    """Cut each raw text to its first `max_tokens` tokens *before* templating (E5-V uses 32),
    so the prompt's instruction is never truncated away."""
    if not max_tokens:
        return list(texts)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    out = []
    for text, tok in zip(texts, ids):
        # Keep the original string when nothing was cut: decoding can alter spacing.
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(text if len(full) <= max_tokens else tokenizer.decode(tok, skip_special_tokens=True))
    return out


def save_prompts(config: PromptConfig, folder: str | Path) -> Path:
    path = Path(folder) / PROMPTS_FILE
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return path


def saved_prompts(*folders: str | Path | None) -> PromptConfig | None:
    """The prompt config saved in the first of `folders` that has one (adapter before model), else None."""
    for folder in folders:
        if folder is not None and (Path(folder) / PROMPTS_FILE).is_file():
            return PromptConfig.from_mapping(json.loads((Path(folder) / PROMPTS_FILE).read_text()))
    return None
