"""Two processes (two pytest-xdist workers, two jobs of a sweep) may both find no default model and
assemble it at once; the one that finishes second must keep the first one's copy, which the first may
already be reading, and leave no temporary folder behind."""

from __future__ import annotations

from pathlib import Path

from mmembed.models.smol_llava import assembly


def _write_prepared(folder: Path, who: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(who)
    (folder / assembly.MARKER).write_text("{}")


def test_the_copy_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    target = assembly.default_model_dir(tmp_path)

    def assemble_while_another_process_finishes(folder, projector_type):
        _write_prepared(folder, "ours")
        _write_prepared(target, "theirs")  # the other process renamed its copy into place meanwhile

    monkeypatch.setattr(assembly, "assemble_default_model", assemble_while_another_process_finishes)
    assert assembly.ensure_default_model(tmp_path) == target
    assert (target / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_partial_copy_is_replaced(tmp_path, monkeypatch):
    target = assembly.default_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("interrupted")  # no marker: an older or broken build
    monkeypatch.setattr(assembly, "assemble_default_model", lambda folder, projector_type: _write_prepared(folder, "new"))
    assert assembly.ensure_default_model(tmp_path) == target
    assert (target / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
