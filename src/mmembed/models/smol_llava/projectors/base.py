"""What every projector of the default model is and says about itself (see projectors/__init__.py).

Two halves per projector:
- the module (`Projector`): the tower's feature vectors [B, N, C] -> image tokens [B, L, hidden] and, for a
  projector whose image span has unused positions ("holes"), which positions hold a token;
- its kind (`ProjectorKind`): the settings saved in config.json (a typed `ProjectorSettings` dataclass whose
  defaults are the only ones), how to build the module from a config, and what assembly needs to fill a
  fresh default-model folder (class names, the tower's head, the span length the processor writes).
Modeling and assembly ask these objects; neither tests which projector it holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mmembed.errors import ConfigError


class Projector(nn.Module):
    """Base of the default model's projector modules; the plain ones only implement `forward(features)`."""

    # True when some image-span positions can be holes (see `valid_positions`): generation then keeps them out
    # of the attention mask in every decoding step.
    uses_holes: ClassVar[bool] = False

    def project(self, features: torch.Tensor, embed_tokens: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, N, C] -> (tokens [B, L, hidden], valid [B, L] or None when every position holds a token)."""
        return self(features), None

    def valid_positions(self, features: torch.Tensor) -> torch.Tensor | None:
        """[B, L] bool, False at holes, without embedding anything; None for a projector without holes."""
        return None

    def init_fresh(self, std: float) -> None:
        """Initialise what transformers' generic init does not know (a fresh model only: loading skips it)."""


@dataclass(frozen=True)
class ProjectorSettings:
    """Base of a projector's typed settings: the field names are config.json's keys, the defaults the only ones."""

    @classmethod
    def from_config(cls, config) -> ProjectorSettings:
        """The settings a (possibly older) config holds; a field it lacks takes its default."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        return cls(**values)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(f.type))
            value = getattr(self, f.name)
            if expected and (not isinstance(value, expected) or (isinstance(value, bool) and f.type != "bool")):
                raise ConfigError(f"{f.name}={value!r} in the model config: expected a {f.type}")

    def config_fields(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NoSettings(ProjectorSettings):
    pass


@dataclass
class AssemblyParts:
    """The pretrained parts assembly hands a projector kind: the LLM's tokenizer and input embeddings, the
    ImageNet class names (when the kind asks for them) and the tower's ImageNet head (once loaded)."""

    tokenizer: object
    embeddings: torch.Tensor
    class_names: list[str] | None = None
    class_list: str = ""  # where the class names came from, for the provenance record
    classifier: nn.Linear | None = None


class ProjectorKind:
    """One registry entry: a projector's name, recipe folder, settings and assembly steps."""

    name: ClassVar[str]
    recipe: ClassVar[str]  # the assembled default-model folder's name under the cache directory
    settings: ClassVar[type[ProjectorSettings]] = NoSettings
    # settings a user may override when assembling (`assemble_default_model(..., **overrides)`)
    tunable: ClassVar[tuple[str, ...]] = ()
    needs_class_names: ClassVar[bool] = False
    uses_holes: ClassVar[bool] = False

    def build(self, config) -> Projector:
        """The fresh module for a SmolLlavaConfig (vision_hidden_size, text_config.hidden_size, settings)."""
        raise NotImplementedError

    def assembly_fields(self, parts: AssemblyParts, overrides: dict) -> dict:
        """The config.json fields of a freshly assembled folder: its settings (defaults, then overrides) and any
        common field it decides (e.g. image_seq_length)."""
        self.check_overrides(overrides)
        return self.settings(**overrides).config_fields()

    def check_overrides(self, overrides: dict) -> None:
        if set(overrides) - set(self.tunable):
            raise ConfigError(f"projector settings {sorted(overrides)} for projector_type={self.name!r}; "
                              f"it takes {sorted(self.tunable)}")

    def load_pretrained(self, projector: Projector, parts: AssemblyParts, config) -> None:
        """Copy pretrained knowledge (the tower's head, class-name tables) into a freshly built projector."""

    def processor_image_tokens(self, config) -> int | None:
        """Placeholder tokens per image the processor writes (None: the tower's 7 x 7 grid)."""
        return None

    def describe(self, parts: AssemblyParts, seed: int) -> str:
        """One line for the folder's provenance record."""
        raise NotImplementedError
