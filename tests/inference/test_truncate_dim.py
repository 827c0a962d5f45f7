"""truncate_dim (Matryoshka at inference): Embedder, evaluation, corpus embedding and FAISS indexes at d < D."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

from mmembed.errors import ConfigError
from mmembed.inference import Embedder
from mmembed.inference.index import IndexFormatError, load_index
from mmembed.inference.truncation import truncate
from tests.conftest import REPO
from tests.inference.conftest import noise_image
from tests.inference.test_index_search import embed, hits, run
from tests.scripts import load_script

TEXTS = ["a black dog runs on grass", "two kids on a beach", "a red car", "an old man reads", "a red car"]


def manual(full: torch.Tensor, d: int) -> torch.Tensor:
    head = full[:, :d]
    return head / head.norm(dim=1, keepdim=True)


def test_truncated_vectors_equal_a_manual_truncation_of_full_vectors(tiny_embedder):
    full = tiny_embedder.encode(texts=TEXTS)
    assert full.shape == (5, tiny_embedder.model_dim) and tiny_embedder.dim == 64
    images = [noise_image(i) for i in range(2)]
    full_images = tiny_embedder.encode(images=images)
    for d in (1, 8, 33):
        per_call = tiny_embedder.encode(texts=TEXTS, truncate_dim=d)
        small = Embedder(tiny_embedder.embedder, truncate_dim=d, prefix_cache=False, channels_last=False)
        assert (small.dim, small.model_dim, small.truncate_dim) == (d, 64, d)
        made = small.encode(texts=TEXTS)
        assert torch.equal(per_call, manual(full, d)), d
        assert torch.allclose(made, manual(full, d), atol=1e-6)  # (no prefix cache here: float sums reorder)
        assert torch.allclose(made.norm(dim=1), torch.ones(5), atol=1e-6)
        assert torch.equal(tiny_embedder.encode(images=images, truncate_dim=d), manual(full_images, d))
        assert small.encode(texts=TEXTS, to_numpy=True).shape == (5, d)
    assert torch.equal(tiny_embedder.encode(texts=TEXTS, truncate_dim=64), full)  # a call may ask for the full size


def test_truncate_keeps_full_size_vectors_and_zero_heads_finite():
    v = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    assert truncate(v, None) is v and truncate(v, 6) is v
    assert torch.equal(truncate(torch.zeros(1, 6), 2), torch.zeros(1, 2))


@pytest.mark.parametrize("bad", [0, -3, 65, 2.5, True, "16"])
def test_truncate_dim_outside_1_to_model_dim_is_one_clear_error(tiny_embedder, bad):
    with pytest.raises(ConfigError, match=r"truncate_dim=.*expected an integer from 1 to the model's embedding size 64"):
        Embedder(tiny_embedder.embedder, truncate_dim=bad)
    with pytest.raises(ConfigError, match="embedding size 64"):
        tiny_embedder.encode(texts=TEXTS, truncate_dim=bad)


def test_from_pretrained_takes_truncate_dim(tiny_dir, tiny_embedder):
    loaded = Embedder.from_pretrained(tiny_dir, truncate_dim=16)
    assert "dim=16 (of 64)" in repr(loaded)
    assert torch.equal(loaded.encode(texts=TEXTS), manual(tiny_embedder.encode(texts=TEXTS), 16))
    with pytest.raises(ConfigError, match="truncate_dim=128"):
        Embedder.from_pretrained(tiny_dir, truncate_dim=128)


def _small_stsb(data_root, folder, rows: int = 40):
    """The first `rows` test pairs of the shared STS-B copy, in its own layout (sts-test.csv)."""
    source = data_root / "sts" / "senteval_processed" / "STSBenchmark" / "sts-test.csv"
    folder.mkdir()
    lines = source.read_text(encoding="utf-8").splitlines()[:rows]
    (folder / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_eval_at_truncate_dim_gives_the_spearman_of_truncated_vectors(tiny_dir, data_root, tmp_path):
    from mmembed.data.evalsets.sts import read_stsb

    stsb = _small_stsb(data_root, tmp_path / "stsb")
    script = load_script("src/eval.py", "eval_script_truncate")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=sts", "eval.benchmarks.sts12=null", "eval.benchmarks.sickr=null",
                               f"eval.benchmarks.stsb.path={stsb}", f"model.name_or_path={tiny_dir}",
                               f"paths.output_dir={tmp_path / 'out'}", "progress=false", "truncate_dim=8"])
    results = script.main.__wrapped__(cfg)
    # brute force: the same model and prompts at full size (truncate_dim=null), truncated by hand
    cfg.truncate_dim = None
    plain = script.build_eval_embedder(cfg)
    assert plain.truncate_dim is None and plain.dim == 64
    pairs = read_stsb(stsb, "test")
    full = plain.encode(texts=pairs.sentences1), plain.encode(texts=pairs.sentences2)
    e1, e2 = manual(full[0], 8), manual(full[1], 8)
    brute = 100 * spearmanr((e1 * e2).sum(dim=1).numpy(), pairs.scores).statistic
    untruncated = 100 * spearmanr((full[0] * full[1]).sum(dim=1).numpy(), pairs.scores).statistic
    got = results["benchmarks"]["stsb"]["metrics"]["spearman"]  # rounded to 4 decimals
    assert got == pytest.approx(brute, abs=5.1e-5) and abs(brute - untruncated) > 1e-2  # truncation changed it
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (saved["truncate_dim"], saved["embedding_dim"]) == (8, 8)


def test_faiss_index_at_128_of_576_dims_is_4_5_times_smaller(tmp_path):
    faiss_index = pytest.importorskip("mmembed.inference.faiss_index")
    from mmembed.inference.faiss_files import read_index, write_index

    full = torch.nn.functional.normalize(torch.randn(2000, 576, generator=torch.Generator().manual_seed(0)), dim=1)
    sizes = {}
    for d in (576, 128):
        index = faiss_index.build_index(truncate(full, d).numpy(), "flat")
        path = write_index(index, tmp_path / f"{d}.faiss")
        assert read_index(path, expected_d=d).d == d
        sizes[d] = path.stat().st_size
    # a flat file is a fixed header + n*d float32: the vector payloads differ by exactly 576/128 = 4.5
    header = sizes[576] - 2000 * 576 * 4
    assert header == sizes[128] - 2000 * 128 * 4 and 0 < header < 100
    assert sizes[576] / sizes[128] > 4.499


@pytest.mark.slow
def test_corpus_index_at_truncate_dim_records_it_and_searches_at_it(tiny_dir, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(TEXTS[:4]) + "\n")
    out = tmp_path / "index"
    summary = embed(tiny_dir, out, f"input.texts={captions}", "truncate_dim=16", "faiss.kind=flat")
    assert summary.dim == 16
    index = load_index(out)
    assert index.vectors.shape == (4, 16) and (index.info["dim"], index.info["truncate_dim"]) == (16, 16)
    assert index.info["faiss"]["d"] == 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dim"] == 16 and {s["dim"] for s in manifest["shards"]} == {16}
    assert {s["settings"]["truncate_dim"] for s in manifest["shards"]} == {16}
    # the stored vectors are the truncation of the full ones (an index of the same corpus without truncate_dim)
    embed(tiny_dir, tmp_path / "full", f"input.texts={captions}")
    full = load_index(tmp_path / "full").vectors
    assert full.shape == (4, 64) and torch.allclose(index.vectors, manual(full, 16), atol=1e-6)
    # search.py embeds the query at the index's truncate_dim by itself ...
    code, stdout, _ = run(capsys, "search", "--index", out, "--text", TEXTS[2], "--k", 2, "--json")
    assert code == 0 and hits(stdout)[0]["id"] == 2
    # ... and a query embedder of another size fails in one line, before embedding
    code, _, err = run(capsys, "search", "--index", out, "--text", TEXTS[2], "--truncate-dim", 32)
    assert code == 2 and err.strip().splitlines()[-1] == ("error: queries have dimension 32, the index 16: embed the queries with "
                                          "truncate_dim=16, as the index was")
    with pytest.raises(IndexFormatError, match="dimension 64, the index 16"):
        index.search(full[:1])
    # a rerun at another size does not reuse the 16-d shards
    with pytest.raises(ConfigError, match="truncate_dim differ"):
        embed(tiny_dir, out, f"input.texts={captions}", "truncate_dim=8")
    np.testing.assert_array_equal(load_index(out).vectors.numpy(), index.vectors.numpy())
