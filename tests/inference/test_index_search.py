"""embed.py / search.py: build image and text indexes with the tiny model, search them back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from mmembed.inference.cli import main
from mmembed.inference.index import choose_backend, load_index, search, write_index

CAPTIONS = [
    "A black dog runs across a green field.",
    "Two children build a sandcastle on the beach.",
    "A red sports car parked in front of a house.",
    "",  # blank lines are skipped
    "An old man reads a newspaper on a bench.",
]


def run(capsys, name: str, *argv) -> tuple[int, str, str]:
    code = main(name, [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def hits(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def image_index(tiny_dir, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("image_index")
    assert main("embed", ["--model", str(tiny_dir), "--images", str(image_folder), "--out", str(out),
                          "--batch-size", "2", "--overwrite"]) == 0
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
    path = sorted(image_folder.iterdir())[0]
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
    assert main("embed", ["--model", str(tiny_dir), "--texts", str(folder / "captions.txt"), "--out", str(out)]) == 0
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


def test_csv_column_and_user_errors(tiny_dir, tmp_path, capsys):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('image,caption\na.jpg,"A dog, running."\nb.jpg,A cat sleeps.\n')
    out = tmp_path / "csv_index"
    code, _, _ = run(capsys, "embed", "--model", tiny_dir, "--csv", csv_file, "--column", "caption", "--out", out)
    assert code == 0
    index = load_index(out)
    assert [r["text"] for r in index.metadata] == ["A dog, running.", "A cat sleeps."]
    assert index.metadata[0]["fields"]["image"] == "a.jpg"
    code, _, err = run(capsys, "embed", "--model", tiny_dir, "--csv", csv_file, "--column", "caption", "--out", out)
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "embed", "--model", tiny_dir, "--csv", csv_file, "--column", "text", "--out", tmp_path / "x")
    assert code == 2 and "no column 'text'" in err and "caption" in err
    code, _, err = run(capsys, "search", "--index", tmp_path, "--text", "x")
    assert code == 2 and "not an mmembed index" in err
    code, _, err = run(capsys, "search", "--index", out, "--image", tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err


def test_write_index_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match="metadata rows"):
        write_index(tmp_path, torch.zeros(3, 4), [{"id": 0}], {})
