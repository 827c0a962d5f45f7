"""STS readers: original formats written to tmp_path, plus the real shared copies."""

from __future__ import annotations

import pytest

from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.data.evalsets.sts import read_sick, read_sts12_16, read_stsb

STSB_LINES = [
    "main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\tA girl is brushing her hair.",
    # original release: extra trailing source columns on some lines
    'main-news\theadlines\t2015\t0001\t4.000\tHe said "no"  twice.\tHe refused.\tsrc-a\tsrc-b',
    "main-forums\tdeft\t2014\t0002\t0.000\tA 'quoted\" word\tAnother one",
]


def test_read_stsb_tmp(tmp_path):
    (tmp_path / "sts-test.csv").write_text("\n".join(STSB_LINES) + "\n", encoding="utf-8")
    pairs = read_stsb(tmp_path, "test")
    assert pairs.name == "STSB-test"
    assert pairs.scores == [2.5, 4.0, 0.0]
    assert pairs.sentences1 == ["A girl is styling her hair.", 'He said "no" twice.', "A 'quoted\" word"]
    assert pairs.sentences2 == ["A girl is brushing her hair.", "He refused.", "Another one"]


def test_read_stsb_missing_is_layout_error(tmp_path):
    with pytest.raises(BenchmarkLayoutError) as err:
        read_stsb(tmp_path, "dev")
    assert "sts-dev.csv" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(ValueError):
        read_stsb(tmp_path, "validation")


def test_read_sts12_16_tmp(tmp_path):
    (tmp_path / "STS.input.MSRpar.txt").write_text("a  b\tc d\ne f\tg h\ni\tj\n", encoding="utf-8")
    (tmp_path / "STS.gs.MSRpar.txt").write_text("4.4\n\n0.8\n", encoding="utf-8")  # middle pair unscored
    (tmp_path / "STS2016.input.answer-answer.txt").write_text("x\ty\n", encoding="utf-8")
    (tmp_path / "STS2016.gs.answer-answer.txt").write_text("3\n", encoding="utf-8")
    (tmp_path / "STS.gs.ALL.txt").write_text("1\n2\n", encoding="utf-8")  # no input file: not a subset
    subsets = read_sts12_16(tmp_path)
    assert [s.meta["subset"] for s in subsets] == ["MSRpar", "answer-answer"]
    msr = subsets[0]
    assert msr.sentences1 == ["a b", "i"] and msr.sentences2 == ["c d", "j"] and msr.scores == [4.4, 0.8]
    assert subsets[1].scores == [3.0]


def test_read_sts12_16_incomplete(tmp_path):
    with pytest.raises(BenchmarkLayoutError):
        read_sts12_16(tmp_path / "nope")
    (tmp_path / "STS.input.x.txt").write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(BenchmarkLayoutError, match="STS.gs.x.txt"):
        read_sts12_16(tmp_path)


def test_read_sick_tmp(tmp_path):
    annotated = tmp_path / "SICK_test_annotated.txt"
    annotated.write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        "6\tA b\tC d\t3.3\tNEUTRAL\n7\tE\tF\t4.7\tENTAILMENT\n",
        encoding="utf-8",
    )
    pairs = read_sick(annotated)
    assert pairs.sentences1 == ["A b", "E"] and pairs.scores == [3.3, 4.7]
    full = tmp_path / "SICK.txt"
    full.write_text(
        "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n"
        "1\ta\tb\tNEUTRAL\t1.5\tTRAIN\n2\tc\td\tNEUTRAL\t2.5\tTEST\n3\te\tf\tNEUTRAL\t3.5\tTRIAL\n",
        encoding="utf-8",
    )
    assert read_sick(full, "TEST").sentences1 == ["c"]
    assert read_sick(full, "TRAIN").scores == [1.5]
    with pytest.raises(BenchmarkLayoutError):
        read_sick(tmp_path / "missing.txt")


def test_real_stsb(data_root):
    for version in ("original", "senteval_processed"):
        folder = data_root / "sts" / version / "STSBenchmark"
        test, dev = read_stsb(folder, "test"), read_stsb(folder, "dev")
        assert len(test) == 1379 and len(dev) == 1500
        assert all(0.0 <= s <= 5.0 for s in test.scores)
    assert read_stsb(data_root / "sts/original/STSBenchmark").sentences1[0] == "A girl is styling her hair."


def test_real_sts12(data_root):
    subsets = read_sts12_16(data_root / "sts" / "senteval_processed" / "STS12-en-test")
    sizes = {s.meta["subset"]: len(s) for s in subsets}
    assert sizes == {"MSRpar": 750, "MSRvid": 750, "SMTeuroparl": 459, "surprise.OnWN": 750, "surprise.SMTnews": 399}
    assert sum(sizes.values()) == 3108  # STS.gs.ALL.txt


def test_real_sick(data_root):
    pairs = read_sick(data_root / "sts" / "SICK" / "SICK_test_annotated.txt")
    assert len(pairs) == 4927
    assert pairs.scores[0] == 3.3
