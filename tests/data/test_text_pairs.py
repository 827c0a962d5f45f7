"""SimCSE-format text pairs: formats, columns, bad rows, truncation and seeded shuffling."""

from __future__ import annotations

import pytest

from mmembed.data.text_pairs import DataConfigError, load_text_pairs
from mmembed.objectives import TextPairInfoNCE
from tests.data.fake_featurizer import CharFeaturizer, text_pair_collator


def write(path, text):
    path.write_text(text)
    return str(path)


def test_reads_simcse_triplets_and_pairs(tmp_path):
    triplets = write(tmp_path / "nli_for_simcse.csv", 'sent0,sent1,hard_neg\n"A, b",B,C\nD,E,F\n')
    ds = load_text_pairs(triplets)
    assert ds.column_names == ["sent0", "sent1", "hard_neg"]
    assert ds[0] == {"sent0": "A, b", "sent1": "B", "hard_neg": "C"}
    pairs = write(tmp_path / "pairs.jsonl", '{"sent0": "x", "sent1": "y", "extra": 1}\n')
    assert load_text_pairs(pairs).column_names == ["sent0", "sent1"]


def test_real_snli_triplets(data_root):
    files = [str(data_root / "nli" / f"snli_{s}_simcse_triplets.csv") for s in ("dev", "test")]
    ds = load_text_pairs(files)
    assert len(ds) == 2943 + 2921
    assert ds[0]["sent0"] == "Two women are embracing while holding to go packages ."
    assert ds[0]["hard_neg"] == "The men are fighting outside a deli ."


def test_missing_file_names_the_setting(tmp_path):
    with pytest.raises(DataConfigError, match="data.train_files.*MMEMBED_DATA"):
        load_text_pairs(str(tmp_path / "absent.csv"))


def test_missing_columns(tmp_path):
    bad = write(tmp_path / "bad.csv", "premise,hypothesis\na,b\n")
    with pytest.raises(DataConfigError, match="expected columns sent0,sent1"):
        load_text_pairs(bad)


def test_empty_texts_skipped_or_raised(tmp_path):
    f = write(tmp_path / "holes.csv", "sent0,sent1,hard_neg\na,b,c\n,b,c\nd,   ,f\ng,h,i\n")
    assert [r["sent0"] for r in load_text_pairs(f)] == ["a", "g"]
    with pytest.raises(DataConfigError, match="row 1"):
        load_text_pairs(f, on_error="raise")


def test_collator_groups_and_truncates():
    collate, featurizer = text_pair_collator(max_tokens=3)
    out = collate([{"sent0": "aaaa", "sent1": "bbbb", "hard_neg": "cccc"}, {"sent0": "dddd", "sent1": "e", "hard_neg": "f"}])
    assert out["batch_size"] == 2 and out["features"]["sizes"] == [2, 2, 2] and out["truncated"] == 4
    assert featurizer.calls == [["aaa", "ddd", "bbb", "e", "ccc", "f"]]
    no_neg, _ = text_pair_collator(use_hard_negatives=False)
    assert no_neg([{"sent0": "a", "sent1": "b", "hard_neg": "c"}])["features"]["sizes"] == [1, 1]


def test_rows_without_a_hard_negative_get_a_masked_placeholder():
    collate, featurizer = text_pair_collator()
    out = collate([{"sent0": "a", "sent1": "b", "hard_neg": "c"}, {"sent0": "d", "sent1": "e", "hard_neg": None}])
    assert featurizer.calls == [["a", "d", "b", "e", "c", "e"]]  # the placeholder is the row's positive
    assert out["features"]["hard_negative_valid"].tolist() == [True, False]


def test_seeded_shuffling_is_reproducible(tmp_path):
    from mmembed.data.sources.text_pairs import TextPairSource
    from mmembed.lit.datamodule import TrainingDataModule

    rows = "".join(f"s{i},p{i},n{i}\n" for i in range(40))
    f = write(tmp_path / "t.csv", "sent0,sent1,hard_neg\n" + rows)

    def order(seed):
        dm = TrainingDataModule(TextPairSource(f), featurizer=CharFeaturizer(), objective=TextPairInfoNCE(),
                                batch_size=8, max_text_tokens=None, shuffle_seed=seed)
        dm.setup("fit")
        return [b["features"]["inputs"][:8] for b in dm.train_dataloader()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(x for batch in order(1) for x in batch) == sorted(f"s{i}" for i in range(40))
