"""Ship the default model's modeling code (mmembed.models.smol_llava) inside an exported folder, for
transformers' `trust_remote_code`: opt-in (`--trust-remote-code`), so a folder holds Python only when asked.

transformers loads remote code from flat files in the model folder, importing one another relatively, with no
package of their own: each source file is copied as `smol_llava_<name>.py` with its mmembed imports rewritten
to those files (mmembed.errors' ConfigError becomes a small local class), and config.json's `auto_map` names
the classes. The code is copied from the installed mmembed, so the folder runs exactly what mmembed runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mmembed.models.smol_llava as smol_llava

PREFIX = "smol_llava_"
# module under mmembed.models.smol_llava -> the flat file's stem (without PREFIX)
SOURCES = {
    "configuration": "configuration.py", "modeling": "modeling.py", "image_path": "image_path.py",
    "holes": "holes.py", "tower": "tower.py",
    "projectors": "projectors/__init__.py", "projectors.base": "projectors/base.py",
    "projectors.grounded": "projectors/grounded.py", "projectors.label_words": "projectors/label_words.py",
    "projectors.mlp": "projectors/mlp.py",
}
ERRORS = '''"""mmembed.errors.ConfigError, for the copied modeling code."""\n\n\nclass ConfigError(ValueError):
    """A setting to fix."""\n'''
AUTO_MAP = {
    "AutoConfig": f"{PREFIX}configuration.SmolLlavaConfig",
    "AutoModel": f"{PREFIX}modeling.SmolLlavaModel",
    "AutoModelForImageTextToText": f"{PREFIX}modeling.SmolLlavaForConditionalGeneration",
}


def _flat(module: str) -> str:
    return PREFIX + module.replace(".", "_")


def _rewrite(source: str) -> str:
    def local(match: re.Match) -> str:
        return f"from .{_flat(match.group(1))} import"

    source = re.sub(r"from mmembed\.models\.smol_llava\.([\w.]+) import", local, source)
    source = source.replace("from mmembed.errors import", f"from .{PREFIX}errors import")
    if re.search(r"^\s*(from|import)\s+mmembed", source, re.M):
        raise RuntimeError("copied SmolLlava code still imports mmembed; update mmembed.inference.remote_code")
    return source


def add_remote_code(folder: str | Path) -> list[str]:
    """Copy the SmolLlava modeling code into `folder` and point config.json's auto_map at it; returns the files."""
    folder, root = Path(folder), Path(smol_llava.__file__).parent
    written = []
    for module, relative in SOURCES.items():
        name = _flat(module) + ".py"
        (folder / name).write_text(_rewrite((root / relative).read_text(encoding="utf-8")), encoding="utf-8")
        written.append(name)
    (folder / f"{PREFIX}errors.py").write_text(ERRORS, encoding="utf-8")
    written.append(f"{PREFIX}errors.py")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = AUTO_MAP
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return written
