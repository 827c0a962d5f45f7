"""The mini-MMEB builder leaves rows holding an evaluation sentence out of its train files, the sentence
inside an instruction-prefixed query included, and counts them (counts.json, README).

Two small builds (`limit=2`) of the shared data: one with nothing held out, one holding out three sentences
picked from the first build's train rows: a Flickr8k caption that appears only inside text->image queries
("Find me an everyday image that matches the given caption: <caption>"), a caption that is a whole
image->text positive, and an easy-VQA question (after "...with the following question: "). The second
build must lack exactly the rows holding them, keep every other row and leave the eval files unchanged.
"""

from __future__ import annotations

import json

import pytest

from mmembed.data.evalsets.caption_splits import normalise_caption
from mmembed.prep.mini_mmeb.build import build_mini_mmeb
from mmembed.prep.mini_mmeb.heldout import configured_heldout
from tests.conftest import REPO

pytestmark = pytest.mark.slow

DATA_ROOT = REPO.parent / "shared" / "data"
T2I = "Find me an everyday image that matches the given caption: "
VQA = "Represent the given image with the following question: "


def _rows(out) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted((out / "train").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    import os

    data_root = os.environ.get("MMEMBED_DATA", str(DATA_ROOT))
    base = tmp_path_factory.mktemp("mini_mmeb")
    plain = build_mini_mmeb(data_root, base / "plain", limit=2, heldout=frozenset())
    rows = _rows(base / "plain")
    t2i_caption = rows["Flickr8k_t2i"][0]["qry"].removeprefix(T2I)
    i2t_caption = rows["Flickr8k_i2t"][-1]["pos_text"]
    question = next(r["qry"].split(VQA, 1)[1] for r in rows["easy-VQA"] if VQA in r["qry"])
    planted = [t2i_caption, i2t_caption, question]
    held = build_mini_mmeb(data_root, base / "held", limit=2,
                           heldout=frozenset(normalise_caption(s) for s in planted))
    return base, plain, held, rows, planted


def _holds_planted(row: dict, planted: list[str]) -> bool:
    """Independent of the filter: exact cells, or a cell ending with the sentence after the instruction."""
    cells = [row["qry"], row["pos_text"], row["neg_text"]]
    return any(cell == s or cell.endswith(": " + s) or cell.endswith(":\n" + s) for cell in cells for s in planted)


def test_rows_holding_a_held_out_sentence_are_not_written(builds):
    base, plain, held, rows, planted = builds
    after = _rows(base / "held")
    for name, before in rows.items():
        expected = [r for r in before if not _holds_planted(r, planted)]
        assert after[name] == expected, name
        assert held["heldout_dropped"][name] == len(before) - len(expected)
        assert held["train"][name] == len(expected)
    dropped = held["heldout_dropped"]
    # the caption inside the text->image instructions went, and so did each of the three sentences' rows
    assert dropped["Flickr8k_t2i"] >= 1 and dropped["Flickr8k_i2t"] >= 1 and dropped["easy-VQA"] >= 1
    assert not any(planted[0] in r["qry"] for r in after["Flickr8k_t2i"])
    assert sum(plain["heldout_dropped"].values()) == 0


def test_counts_and_readme_report_the_dropped_rows(builds):
    base, _, held, _, _ = builds
    counts = json.loads((base / "held" / "counts.json").read_text())
    assert counts["heldout_dropped"] == held["heldout_dropped"]
    total = sum(held["heldout_dropped"].values())
    assert f"Left out of the train files: {total} rows holding a sentence of an evaluation set" in (
        base / "held" / "README.md").read_text()


def test_eval_files_are_untouched(builds):
    base = builds[0]
    for path in sorted((base / "plain" / "eval").glob("*.jsonl")):
        assert (base / "held" / "eval" / path.name).read_bytes() == path.read_bytes()


def test_default_held_out_set_is_conf_heldout():
    """Without `heldout=`, the builder reads conf/heldout/local.yaml's sets: STS-B test and Flickr8k test sentences."""
    import os

    sentences = configured_heldout(os.environ.get("MMEMBED_DATA", str(DATA_ROOT)))
    assert normalise_caption("A girl is styling her hair") in sentences  # STS-B test, first pair (as read)
    assert normalise_caption("The dogs are in the snow in front of a fence .") in sentences  # Flickr8k test
    assert len(sentences) > 20000
