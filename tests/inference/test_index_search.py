"""embed.py / search.py: build image and text indexes with the tiny model, search them back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from mmembed.errors import ConfigError, DataConfigError
from mmembed.inference.cli import main
from mmembed.inference.index import choose_backend, load_index, search, write_index
from tests.conftest import REPO
from tests.scripts import load_script

CAPTIONS = [
    "A black dog runs across a green field.",
    "Two children build a sandcastle on the beach.",
    "A red sports car parked in front of a house.",
    "",  # blank lines are skipped
    "An old man reads a newspaper on a bench.",
]


def embed(model_dir, out, *overrides, run_dir=None):
    """`python src/embed.py model.name_or_path=<model_dir> out=<out> ...`, in this process (Hydra compose
    + the script's run()); returns its summary."""
    script = load_script("src/embed.py", "embed_script")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("embed", [f"model.name_or_path={model_dir}", f"out={out}", "trainer.enable_progress_bar=false",
                                *overrides], return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir or out.parent / f"{out.name}-run")
    return script.run(cfg)


def run(capsys, name: str, *argv) -> tuple[int, str, str]:
    code = main(name, [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def hits(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def image_index(tiny_dir, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("image_index") / "index"
    summary = embed(tiny_dir, out, f"input.images={image_folder}", "batch_size=2")
    assert (summary.inputs, summary.embedded, summary.new, summary.skipped) == (5, 5, 5, 0)
    return out


def test_image_index_files_and_exact_duplicate_query(image_index, image_folder, tiny_dir, capsys, tmp_path):
    index = load_index(image_index)
    paths = sorted(str(p.resolve()) for p in image_folder.iterdir())
    assert [row["path"] for row in index.metadata] == paths
    info = index.info
    assert (info["count"], info["dim"], info["kind"], info["modality"]) == (5, 64, "image", "image")
    assert info["model"] == str(tiny_dir) and info["adapter"] is None
    assert "Summary above image in one word:" in info["prompt"] and info["prompt_config"]["chat_template"] is True
    torch.testing.assert_close(index.vectors.norm(dim=-1), torch.ones(5))
    for target in (paths[1], paths[4]):
        copy = tmp_path / ("query" + target[-4:])  # an exact duplicate under another name
        shutil.copy(target, copy)
        code, out, _ = run(capsys, "search", "--index", image_index, "--image", copy, "--k", 3, "--json")
        assert code == 0
        top = hits(out)
        assert len(top) == 3 and top[0]["path"] == target
        assert top[0]["score"] == pytest.approx(1.0, abs=1e-4) and top[1]["score"] < top[0]["score"] - 1e-4


def test_composed_query_and_table_output(image_index, image_folder, capsys):
    path = min(image_folder.iterdir())
    code, out, _ = run(capsys, "search", "--index", image_index, "--image", path, "--edit", "make it red", "--k", 2)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("query: ") and "make it red" in lines[0]
    assert len(lines) == 3 and lines[1].split()[0] == "1"


@pytest.fixture(scope="module")
def text_index(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_index")
    (folder / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    out = folder / "index"
    assert embed(tiny_dir, out, f"input.texts={folder / 'captions.txt'}").embedded == 4
    return out


def test_text_index_search(text_index, capsys):
    index = load_index(text_index)
    kept = [c for c in CAPTIONS if c]
    assert [r["text"] for r in index.metadata] == kept and [r["line"] for r in index.metadata] == [1, 2, 3, 5]
    for i, caption in enumerate(kept):
        code, out, _ = run(capsys, "search", "--index", text_index, "--text", caption, "--k", 4, "--json")
        assert code == 0
        top = hits(out)
        assert top[0]["id"] == i and top[0]["text"] == caption
        assert [h["score"] for h in top] == sorted((h["score"] for h in top), reverse=True)


def test_exact_and_faiss_backends_agree(text_index, capsys):
    pytest.importorskip("faiss")
    outputs = {}
    for backend in ("exact", "faiss"):
        code, out, _ = run(capsys, "search", "--index", text_index, "--text", "a dog on grass", "--k", 4,
                           "--backend", backend, "--json")
        assert code == 0
        outputs[backend] = hits(out)
    assert [h["id"] for h in outputs["exact"]] == [h["id"] for h in outputs["faiss"]]
    for a, b in zip(outputs["exact"], outputs["faiss"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_prebuilt_faiss_index_is_searched_and_dropped_when_not_asked_for(tiny_dir, text_index, tmp_path, capsys):
    pytest.importorskip("faiss")
    out = tmp_path / "ivf"
    texts = f"input.texts={text_index.parent / 'captions.txt'}"
    embed(tiny_dir, out, texts, "faiss.kind=ivf")
    info = load_index(out).info["faiss"]
    # 4 rows: nlist = min(n, 4*sqrt(n)) = 4 lists, nprobe = min(32, nlist) = 4: every list is scanned
    assert (info["file"], info["kind"], info["options"], info["n"]) == ("faiss.index", "ivf", {"nlist": 4, "nprobe": 4}, 4)
    assert (out / "faiss.index").is_file() and (out / "faiss.index.json").is_file()
    for query in ("a dog on grass", CAPTIONS[2]):
        found = {}
        for backend in ("auto", "exact"):
            code, stdout, _ = run(capsys, "search", "--index", out, "--text", query, "--k", 3, "--backend", backend,
                                  "--json")
            assert code == 0
            found[backend] = hits(stdout)
        assert [h["id"] for h in found["auto"]] == [h["id"] for h in found["exact"]]
        assert [h["score"] for h in found["auto"]] == pytest.approx([h["score"] for h in found["exact"]], abs=1e-5)
    embed(tiny_dir, out, texts)  # faiss.kind=null: the FAISS files would describe nothing asked for
    assert "faiss" not in load_index(out).info and not (out / "faiss.index").exists()


def test_exact_and_faiss_identical_topk_on_many_vectors():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(3000, 48, generator=g), dim=-1)
    queries = F.normalize(torch.randn(25, 48, generator=g), dim=-1)
    s_exact, i_exact = search(vectors, queries, k=10, backend="exact")
    s_faiss, i_faiss = search(vectors, queries, k=10, backend="faiss")
    assert torch.equal(i_exact, i_faiss)
    torch.testing.assert_close(s_exact, s_faiss, atol=1e-5, rtol=0)
    assert torch.equal(i_exact[:, 0], (queries @ vectors.T).argmax(1))


def test_backend_choice_and_small_k_edges():
    assert choose_backend(10) == "exact" and choose_backend(10, "faiss") == "faiss"
    assert choose_backend(10**6, faiss_min_rows=1000) in ("faiss", "exact")
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(10, "annoy")
    scores, ids = search(torch.eye(3), torch.eye(3)[1], k=10)
    assert ids.tolist() == [[1, 0, 2]] or ids[0, 0] == 1
    assert scores.shape == (1, 3)


def test_csv_column_rerun_reuses_and_user_errors(tiny_dir, tmp_path, capsys):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('image,caption\na.jpg,"A dog, running."\nb.jpg,A cat sleeps.\n')
    out = tmp_path / "csv_index"
    assert embed(tiny_dir, out, f"input.csv={csv_file}", "input.column=caption").new == 2
    index = load_index(out)
    assert [r["text"] for r in index.metadata] == ["A dog, running.", "A cat sleeps."]
    assert index.metadata[0]["fields"]["image"] == "a.jpg"
    # The same command again: every input is in a finished shard, nothing is embedded twice.
    again = embed(tiny_dir, out, f"input.csv={csv_file}", "input.column=caption")
    assert (again.new, again.embedded) == (0, 2)
    assert torch.equal(load_index(out).vectors, index.vectors)
    with pytest.raises(DataConfigError, match=r"no column 'text'.*caption"):
        embed(tiny_dir, tmp_path / "x", f"input.csv={csv_file}", "input.column=text")
    code, _, err = run(capsys, "search", "--index", tmp_path, "--text", "x")
    assert code == 2 and "not an mmembed index" in err
    code, _, err = run(capsys, "search", "--index", out, "--image", tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err


def test_out_folder_of_other_settings_or_an_old_index_is_refused(tiny_dir, image_index, image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"other settings \(kind differ.*overwrite=true"):
        embed(tiny_dir, image_index, f"input.images={image_folder}", "kind=cir_target")
    old = tmp_path / "old"
    write_index(old, torch.eye(2), [{"id": 0}, {"id": 1}], {})
    with pytest.raises(ConfigError, match="not built from shards; pass overwrite=true"):
        embed(tiny_dir, old, f"input.images={image_folder}")
    replaced = embed(tiny_dir, old, f"input.images={image_folder}", "overwrite=true")
    assert replaced.embedded == 5 and len(load_index(old)) == 5
    with pytest.raises(ConfigError, match="exactly one of input.images"):
        embed(tiny_dir, tmp_path / "y", f"input.images={image_folder}", f"input.texts={tmp_path}")


def test_write_index_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match="metadata rows"):
        write_index(tmp_path, torch.zeros(3, 4), [{"id": 0}], {})
