"""src/embed.py on Lightning: 2 gloo ranks = 1 process, resume after a kill, unreadable inputs, encodings.

The tiny SmolLlava (random weights) throughout. Shards are cut from the corpus order independently of
the number of ranks, so a shard's batches, and hence its vectors, are the same on 1 or 2 processes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mmembed.errors import BadImageError
from mmembed.inference import Embedder, shard_assembly, shards
from mmembed.inference.cli import read_corpus
from mmembed.inference.index import load_index
from tests.conftest import REPO
from tests.distributed import ddp_subprocess_env
from tests.inference.conftest import noise_image
from tests.inference.test_index_search import embed

TEXTS = ["a dog runs on the beach", "two cats", "a red car parked outside a small house", "snow",
         "an old man reads a newspaper on a bench in the park", "boats", "a child flies a kite"]


def embed_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "src" / "embed.py"), "trainer.enable_progress_bar=false", *args],
                          cwd=REPO, env=ddp_subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def ddp_args(model_dir, texts, out, run_dir) -> list[str]:
    return ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            f"model.name_or_path={model_dir}", f"input.texts={texts}", f"out={out}", "shard_size=2",
            "batch_size=2", f"hydra.run.dir={run_dir}"]


def manifest(out) -> dict:
    return json.loads((out / shards.MANIFEST).read_text())


def shard_inputs(out) -> dict[int, list[int]]:
    """rank -> the input ids its shards hold, in shard order."""
    by_rank: dict[int, list[int]] = {}
    for record in manifest(out)["shards"]:
        by_rank.setdefault(record["rank"], []).extend(r["input_id"] for r in shards.read_shard(out, record, False)[1])
    return by_rank


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(TEXTS[:3] + [""] + TEXTS[3:]) + "\n")  # line 4 is blank: skipped
    return path


@pytest.fixture(scope="module")
def single(tiny_smol_llava_dir, texts_file, tmp_path_factory):
    """One process, 7 texts in 4 shards of 2 (the reference every other run must equal)."""
    out = tmp_path_factory.mktemp("single") / "out"
    summary = embed(tiny_smol_llava_dir, out, f"input.texts={texts_file}", "shard_size=2", "batch_size=2")
    assert (summary.inputs, summary.embedded, summary.new, summary.shards) == (7, 7, 7, 4)
    return out


def test_one_process_index_is_in_input_order(single):
    index = load_index(single)
    assert [r["text"] for r in index.metadata] == TEXTS
    assert [r["line"] for r in index.metadata] == [1, 2, 3, 5, 6, 7, 8]
    assert [r["id"] for r in index.metadata] == list(range(7))
    m = manifest(single)
    assert m["counts"] == {"inputs": 7, "embedded": 7, "skipped": 0, "new": 7, "shards": 4}
    assert [r["input_range"] for r in m["shards"]] == [[0, 2], [2, 4], [4, 6], [6, 7]]
    for record in m["shards"]:
        assert shards.verify_shard(single, record) is None
        assert record["sha256"]["vectors"] == shards.sha256_file(single / record["vectors"])


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_then_resume_with_an_idle_rank(tiny_smol_llava_dir, texts_file, single,
                                                                        tmp_path):
    out = tmp_path / "ddp"
    proc = embed_cli(*ddp_args(tiny_smol_llava_dir, texts_file, out, tmp_path / "run1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = load_index(single), load_index(out)
    assert two.metadata == one.metadata
    torch.testing.assert_close(two.vectors, one.vectors, atol=1e-6, rtol=0)
    # 7 inputs on 2 ranks: shards 0 and 2 on rank 0 (4 inputs), 1 and 3 on rank 1 (3); none lost or repeated.
    assert shard_inputs(out) == {0: [0, 1, 4, 5], 1: [2, 3, 6]}
    assert sorted(p.name for p in out.glob("shard-*.json")) == ["shard-0-0.json", "shard-0-2.json",
                                                                "shard-1-1.json", "shard-1-3.json"]
    # One more line: a single shard to do, so rank 1 has no batch at all; the 7 finished inputs are reused.
    more = tmp_path / "more.txt"
    more.write_text(texts_file.read_text() + "a new line at the end\n")
    proc = embed_cli(*ddp_args(tiny_smol_llava_dir, more, out, tmp_path / "run2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    index = load_index(out)
    assert [r["text"] for r in index.metadata] == [*TEXTS, "a new line at the end"]
    assert manifest(out)["counts"] == {"inputs": 8, "embedded": 8, "skipped": 0, "new": 1, "shards": 5}
    assert shard_inputs(out) == {0: [0, 1, 4, 5, 7], 1: [2, 3, 6]}
    assert torch.equal(index.vectors[:7], two.vectors)
    embedder = Embedder.from_pretrained(tiny_smol_llava_dir, prompts=manifest(out)["prompt_config"])
    torch.testing.assert_close(index.vectors[7:], embedder.encode(texts=["a new line at the end"]), atol=1e-6, rtol=0)


def test_killed_after_one_shard_resumes_to_the_uninterrupted_result(tiny_smol_llava_dir, texts_file, single,
                                                                   tmp_path, monkeypatch):
    write_shard = shards.write_shard

    def write_then_die(*args, **kwargs):
        write_shard(*args, **kwargs)
        raise RuntimeError("killed after the first shard")

    out = tmp_path / "out"
    args = (f"input.texts={texts_file}", "shard_size=2", "batch_size=2")
    monkeypatch.setattr(shards, "write_shard", write_then_die)
    with pytest.raises(RuntimeError, match="killed after the first shard"):
        embed(tiny_smol_llava_dir, out, *args)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["shard-0-0.json", "shard-0-0.jsonl", "shard-0-0.safetensors"]
    (out / "shard-0-1.safetensors.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    resumed = embed(tiny_smol_llava_dir, out, *args)
    assert (resumed.new, resumed.embedded, resumed.shards) == (5, 7, 4)
    reference, index = load_index(single), load_index(out)
    assert index.metadata == reference.metadata and torch.equal(index.vectors, reference.vectors)
    assert not (out / "shard-0-1.safetensors.tmp").exists()
    assert [r["name"] for r in manifest(out)["shards"]] == ["shard-0-0", "shard-0-2", "shard-0-3", "shard-0-4"]
    # A shard whose file no longer matches its sha256 is embedded again, and only that one.
    damaged = out / "shard-0-3.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    repaired = embed(tiny_smol_llava_dir, out, *args)
    assert (repaired.new, repaired.embedded) == (2, 7)
    assert torch.equal(load_index(out).vectors, reference.vectors)
    assert not damaged.exists() and (out / "shard-0-5.safetensors").is_file()


@pytest.fixture
def messy_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"this is not an image")
    (folder / "empty.jpg").write_bytes(b"")
    for i in range(4):
        noise_image(i, size=(40 + 8 * i, 48)).save(folder / f"img{i}.png")
    return folder.resolve()  # the index records resolved paths


@pytest.mark.slow  # two embedding runs, each decoding in a DataLoader worker process
def test_unreadable_images_are_skipped_listed_and_embedded_once_fixed(tiny_smol_llava_dir, messy_images, tmp_path):
    out = tmp_path / "out"
    args = (f"input.images={messy_images}", "shard_size=3", "batch_size=2", "num_workers=1")  # decoded in a worker
    first = embed(tiny_smol_llava_dir, out, *args)
    assert (first.inputs, first.embedded, first.skipped) == (6, 4, 2)
    skipped = [json.loads(line) for line in (out / shards.SKIPPED).read_text().splitlines()]
    assert [(s["input_id"], s["path"]) for s in skipped] == [(0, str(messy_images / "broken.png")),
                                                            (1, str(messy_images / "empty.jpg"))]
    assert skipped[0]["reason"].startswith("unreadable: not an image") and skipped[1]["reason"] == "empty: zero-byte file"
    before = load_index(out)
    assert [r["path"] for r in before.metadata] == [str(messy_images / f"img{i}.png") for i in range(4)]
    noise_image(9).save(messy_images / "broken.png")  # the user fixes one file
    second = embed(tiny_smol_llava_dir, out, *args)
    assert (second.new, second.embedded, second.skipped) == (2, 5, 1)  # the two skipped ones were tried again
    after = load_index(out)
    assert [r["path"] for r in after.metadata] == [str(messy_images / n) for n in
                                                   ("broken.png", "img0.png", "img1.png", "img2.png", "img3.png")]
    assert torch.equal(after.vectors[1:], before.vectors)
    assert [json.loads(line)["path"] for line in (out / shards.SKIPPED).read_text().splitlines()] == [
        str(messy_images / "empty.jpg")]
    embedder = Embedder.from_pretrained(tiny_smol_llava_dir, prompts=manifest(out)["prompt_config"])
    torch.testing.assert_close(after.vectors[0], embedder.encode(images=[messy_images / "broken.png"])[0],
                               atol=1e-6, rtol=0)


def test_on_error_raise_stops_at_the_first_unreadable_image(tiny_smol_llava_dir, messy_images, tmp_path):
    with pytest.raises(BadImageError, match=r"broken\.png: unreadable.*on_error=skip") as err:
        embed(tiny_smol_llava_dir, tmp_path / "out", f"input.images={messy_images}", "on_error=raise")
    assert err.value.source == str(messy_images / "broken.png")
    assert not list((tmp_path / "out").glob("shard-*"))


@pytest.mark.slow  # a src/embed.py process (Python, Hydra and Lightning start-up)
def test_text_file_not_utf8_is_one_clear_cli_error(tiny_smol_llava_dir, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("plain line\ncafé au lait\n".encode("latin-1"))
    proc = embed_cli(f"model.name_or_path={tiny_smol_llava_dir}", f"input.texts={bad}", f"out={tmp_path / 'out'}",
                     f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert f"input.texts={bad} is not valid UTF-8: byte offset 14 (line 2)" in output
    assert "input.encoding=" in output and "Traceback" not in output
    assert read_corpus(texts=str(bad), encoding="latin-1").items == ["plain line", "café au lait"]


def test_read_corpus_line_numbers_bom_crlf_and_tsv(tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_bytes(b"\xef\xbb\xbfone\r\n\r\n two \rthree")
    corpus = read_corpus(texts=str(texts))
    assert corpus.items == ["one", " two ", "three"]
    assert corpus.rows == [{"line": 1, "text": "one"}, {"line": 3, "text": " two "}, {"line": 4, "text": "three"}]
    tsv = tmp_path / "t.tsv"
    tsv.write_text('id\tcaption\n7\t"a, b"\n8\tc\n')
    corpus = read_corpus(csv=str(tsv), delimiter="\\t")
    assert corpus.items == ["a, b", "c"] and corpus.rows[1] == {"row": 1, "text": "c", "fields": {"id": "8", "caption": "c"}}


def test_assemble_takes_each_current_input_once_in_corpus_order(tmp_path):
    rows = [{"line": n, "text": t} for n, t in ((1, "a"), (2, "b"), (3, "c"))]

    def meta(*ids):
        return [{"input_id": i, "modality": "text", **rows[i]} for i in ids]

    stale = {"input_id": 1, "modality": "text", "line": 2, "text": "old b"}  # line 2 held another text then
    first = shards.write_shard(tmp_path, 0, 0, torch.tensor([[1.0, 0], [0, 1.0]]), [*meta(2), stale], [], (0, 3), {})
    second = shards.write_shard(tmp_path, 1, 1, torch.tensor([[0.6, 0.8], [0.8, 0.6]]), meta(0, 2), [], (0, 3), {})
    with pytest.raises(RuntimeError, match=r"1 inputs \(positions \[1\]\.\.\.\) are in no shard"):
        shard_assembly.assemble(tmp_path, rows, [first, second], dim=2)
    skip = shards.write_shard(tmp_path, 0, 2, torch.zeros(0, 2), [], [{"input_id": 1, **rows[1], "reason": "x"}],
                              (1, 2), {})
    got = shard_assembly.assemble(tmp_path, rows, [second, first, skip], dim=2)
    # input 2 is in two shards: taken once (from the lower k); the stale row is left out
    assert got.rows == [{"id": 0, **rows[0]}, {"id": 1, **rows[2]}]
    assert got.skipped == [{"input_id": 1, **rows[1], "reason": "x"}]
    assert torch.equal(got.vectors, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    assert shards.verify_shard(tmp_path, first) is None
    metadata = tmp_path / "shard-0-0.jsonl"
    metadata.write_text(metadata.read_text().replace("old b", "old B"))
    assert shards.verify_shard(tmp_path, first) == "shard-0-0.jsonl does not match its sha256"
