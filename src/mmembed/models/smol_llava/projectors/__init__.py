"""The default model's vision-to-LLM projectors: the registry that config.json's `projector_type` names.

Each entry is a `ProjectorKind` (projectors/base.py): the projector's typed settings (config.json's fields and
their defaults), how its module is built from a config, the recipe folder it is assembled into and what
assembly fills in (class names, the tower's head, the span the processor writes). Modeling and assembly ask
the kind and the module (`projector.uses_holes`, `kind.assembly_fields(...)`), never the type's name.

Adding a projector: one file in this folder (its `Projector` module, settings and `ProjectorKind`), one entry
in PROJECTORS below, and a conf/model YAML (`name_or_path: default:<name>`) if users should pick it.
"""

from __future__ import annotations

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.base import AssemblyParts, Projector, ProjectorKind
from mmembed.models.smol_llava.projectors.grounded import GroundedKind
from mmembed.models.smol_llava.projectors.label_words import LabelWordKind
from mmembed.models.smol_llava.projectors.mlp import MLPKind

# "mlp" is also what a folder written before config.json had a projector_type loads as (the config's default).
PROJECTORS: dict[str, ProjectorKind] = {"mlp": MLPKind(), "grounded": GroundedKind(), "label_words": LabelWordKind()}


def projector_kind(projector_type: str) -> ProjectorKind:
    """The registry entry `projector_type` names; a clear one-line error for any other name."""
    if projector_type not in PROJECTORS:
        raise ConfigError(f"projector_type={projector_type!r}: expected one of {sorted(PROJECTORS)}")
    return PROJECTORS[projector_type]


__all__ = ["PROJECTORS", "AssemblyParts", "Projector", "ProjectorKind", "projector_kind"]
