"""Bad text input: empty, NaN, non-UTF-8, missing columns, malformed files, long texts; property tests."""

from __future__ import annotations

import csv

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmembed.data.text_pairs import first_invalid_utf8, load_text_pairs
from mmembed.errors import DataConfigError, SkipCounter
from tests.data.fake_featurizer import text_pair_collator


def write_bytes(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_empty_blank_and_nan_cells_are_skipped_and_counted(tmp_path):
    f = write_bytes(tmp_path / "holes.csv", b"sent0,sent1,hard_neg\na,b,c\n,b,c\nd,   ,f\ng,h,\n\"\",x,y\nNA,null,nan\n")
    skips = SkipCounter()
    ds = load_text_pairs(f, skips=skips)
    # "NA", "null", "nan" are sentences: only empty cells are missing values.
    assert ds.to_list() == [{"sent0": "a", "sent1": "b", "hard_neg": "c"}, {"sent0": "NA", "sent1": "null", "hard_neg": "nan"}]
    assert skips.count == 4 and skips.reasons == {"empty or missing text": 4}
    assert [row for row, _ in skips.examples] == ["row 1", "row 2", "row 3", "row 4"]
    with pytest.raises(DataConfigError, match=r"holes.csv.*row 1 has an empty or missing text"):
        load_text_pairs(f, on_error="raise")


def test_json_nulls_nan_and_numbers(tmp_path):
    lines = [
        '{"sent0": "a", "sent1": "b"}',
        '{"sent0": null, "sent1": "b"}',
        '{"sent0": "c", "sent1": NaN}',
        '{"sent0": "d"}',
        '{"sent0": "e", "sent1": "f"}',
    ]
    f = write_bytes(tmp_path / "p.jsonl", "\n".join(lines).encode())
    skips = SkipCounter()
    assert [r["sent0"] for r in load_text_pairs(f, skips=skips)] == ["a", "e"]
    assert skips.count == 3


def test_numbers_in_csv_are_text(tmp_path):
    f = write_bytes(tmp_path / "n.csv", b"sent0,sent1\n1,2.50\n007,3\n")
    assert load_text_pairs(f).to_list() == [{"sent0": "1", "sent1": "2.50"}, {"sent0": "007", "sent1": "3"}]


def test_non_utf8_raise_names_file_offset_and_line(tmp_path):
    f = write_bytes(tmp_path / "latin1.csv", "sent0,sent1\nok,fine\ncaf\u00e9,b\n".encode("latin-1"))
    assert first_invalid_utf8(f) == (len(b"sent0,sent1\nok,fine\ncaf"), 3)
    with pytest.raises(DataConfigError, match=r"latin1.csv: not valid UTF-8 at byte 23 \(line 3\)"):
        load_text_pairs(f, on_error="raise")


def test_non_utf8_skip_drops_and_counts_only_the_bad_rows(tmp_path):
    data = "sent0,sent1\nok,fine\ncaf\u00e9,b\nna\u00efve,c\n".encode("latin-1") + "\u00fcber,gut\n".encode()
    f = write_bytes(tmp_path / "mixed.csv", data)
    skips = SkipCounter()
    ds = load_text_pairs(f, skips=skips)
    assert ds.to_list() == [{"sent0": "ok", "sent1": "fine"}, {"sent0": "\u00fcber", "sent1": "gut"}]
    assert skips.reasons == {"invalid UTF-8": 2}


def test_non_utf8_json_is_an_error_even_when_skipping(tmp_path):
    f = write_bytes(tmp_path / "bad.jsonl", b'{"sent0": "caf\xe9", "sent1": "b"}\n')
    with pytest.raises(DataConfigError, match="JSON training files must be UTF-8"):
        load_text_pairs(f)


def test_first_invalid_utf8_across_chunk_borders(tmp_path):
    text = ("x" * 5 + "\u20ac") * 50  # 3-byte characters straddle every chunk border
    f = write_bytes(tmp_path / "u.csv", text.encode() + b"\n\xff")
    for chunk in (1, 2, 3, 4, 7, 1 << 20):
        assert first_invalid_utf8(f, chunk_size=chunk) == (len(text.encode()) + 1, 2)
    good = write_bytes(tmp_path / "g.csv", text.encode())
    assert all(first_invalid_utf8(good, chunk_size=c) is None for c in (1, 2, 5))
    cut = write_bytes(tmp_path / "c.csv", "\u20ac".encode()[:2])  # the file ends inside a character
    assert first_invalid_utf8(cut, chunk_size=1) == (0, 1)


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    f = write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbfsent0,sent1\na,b\n")
    assert load_text_pairs(f).to_list() == [{"sent0": "a", "sent1": "b"}]


def test_missing_columns_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(DataConfigError, match=r"expected columns sent0,sent1.*found \['premise', 'sent0'\]"):
        load_text_pairs(write_bytes(tmp_path / "cols.csv", b"sent0,premise\na,b\n"))
    with pytest.raises(DataConfigError, match=r"cannot parse .*fields.csv"):
        load_text_pairs(write_bytes(tmp_path / "fields.csv", b"sent0,sent1\na,b\nc,d,e,f\n"))
    with pytest.raises(DataConfigError, match=r"cannot parse .*broken.jsonl"):
        load_text_pairs(write_bytes(tmp_path / "broken.jsonl", b'{"sent0": "a", "sent1": \n'))
    with pytest.raises(DataConfigError, match="mixes file formats"):
        load_text_pairs([write_bytes(tmp_path / "a.csv", b"sent0,sent1\na,b\n"), write_bytes(tmp_path / "b.jsonl", b"")])
    with pytest.raises(DataConfigError, match="on_error"):
        load_text_pairs(str(tmp_path / "a.csv"), on_error="ignore")


def test_long_texts_are_truncated_and_counted():
    cut, _ = text_pair_collator(max_tokens=5)
    out = cut([{"sent0": "short", "sent1": "much longer", "hard_neg": "x"}, {"sent0": "abcdefgh", "sent1": "y", "hard_neg": "z"}])
    assert out["features"]["inputs"] == ["short", "abcde", "much ", "y", "x", "z"]
    assert out["truncated"] == 2


def test_long_texts_with_the_real_tokenizer(tiny_smol_llava_dir):
    from transformers import AutoTokenizer

    from mmembed.models.prompts import truncate_to_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_smol_llava_dir)
    long = " ".join(["word"] * 200)
    collate, featurizer = text_pair_collator(max_tokens=32)
    featurizer.truncate = lambda texts, n: truncate_to_tokens(texts, tokenizer, n)
    out = collate([{"sent0": long, "sent1": "A short one.", "hard_neg": "Another."}])
    assert out["truncated"] == 1
    assert len(tokenizer(out["features"]["inputs"][0], add_special_tokens=False)["input_ids"]) == 32
    assert out["features"]["inputs"][1:] == ["A short one.", "Another."]


# ---- property-based tests ----
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=1, max_size=8))
def test_csv_round_trip_keeps_exactly_the_complete_rows(tmp_path_factory, rows):
    """Any texts (commas, quotes, newlines, unicode, "NA") written by Python's csv module read back
    exactly; rows with an empty or blank text are exactly the ones skipped."""
    path = tmp_path_factory.mktemp("csv") / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["sent0", "sent1", "hard_neg"])
        writer.writerows(rows)
    skips = SkipCounter()
    got = [tuple(r.values()) for r in load_text_pairs(str(path), skips=skips)]
    expected = [r for r in rows if all(t.strip() for t in r)]
    assert got == expected
    assert skips.count == len(rows) - len(expected)
    if len(expected) < len(rows):
        with pytest.raises(DataConfigError, match="row"):
            load_text_pairs(str(path), on_error="raise")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_arbitrary_csv_bytes_give_rows_or_our_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "x.csv"
    path.write_bytes(b"sent0,sent1\n" + data)
    for on_error in ("skip", "raise"):
        try:
            ds = load_text_pairs(str(path), on_error=on_error)
        except DataConfigError:
            continue
        for row in ds:
            assert all(isinstance(v, str) and v.strip() for v in row.values())


ROW = st.fixed_dictionaries({"sent0": TEXT, "sent1": TEXT}, optional={"hard_neg": st.one_of(st.none(), TEXT)})


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(ROW, min_size=1, max_size=6), use_neg=st.booleans(), limit=st.integers(1, 10))
def test_collator_layout_and_truncation_count(rows, use_neg, limit):
    collate, featurizer = text_pair_collator(max_tokens=limit, use_hard_negatives=use_neg)
    out = collate(rows)
    # Hard negatives are used when the rows carry the column; a missing one is its row's positive, masked.
    with_neg = use_neg and all("hard_neg" in r for r in rows)
    originals = [r["sent0"] for r in rows] + [r["sent1"] for r in rows]
    expected = [t[:limit] for t in originals]
    if with_neg:
        expected += [r["hard_neg"][:limit] if r["hard_neg"] else r["sent1"][:limit] for r in rows]
    cut_negatives = sum(len(r["hard_neg"]) > limit for r in rows if r.get("hard_neg")) if "hard_neg" in rows[0] else 0
    assert out["batch_size"] == len(rows) and out["features"]["sizes"] == [len(rows)] * (3 if with_neg else 2)
    assert featurizer.calls == [expected]
    assert out["truncated"] == sum(len(t) > limit for t in originals) + cut_negatives
    if with_neg and not all(r["hard_neg"] for r in rows):
        assert out["features"]["hard_negative_valid"].tolist() == [bool(r["hard_neg"]) for r in rows]


def test_collator_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        text_pair_collator()[0]([])


def test_sts_gold_scores_nan_or_out_of_range(tmp_path):
    from mmembed.data.evalsets import sts

    folder = tmp_path / "STSBenchmark"
    folder.mkdir()
    rows = [
        ("main-captions", "MSRvid", "2012test", "0001", "5.000", "A man plays.", "A man is playing."),
        ("main-captions", "MSRvid", "2012test", "0002", "nan", "A cat.", "A dog."),
        ("main-captions", "MSRvid", "2012test", "0003", "7.5", "One.", "Two."),
        ("main-captions", "MSRvid", "2012test", "0004", "2.5", "Three.", "Four."),
    ]
    (folder / "sts-test.csv").write_text("".join("\t".join(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"sts-test.csv: gold score nan of pair 1 is not a number in \[0, 5\]"):
        sts.read_stsb(str(folder), split="test")
