"""The held-out filter finds an evaluation sentence wrapped in an instruction (MMEB's text->image queries put the
caption after "...the given caption: "), not only a cell that is the sentence itself."""

from __future__ import annotations

from mmembed.data.evalsets.caption_splits import normalise_caption
from mmembed.data.heldout import drop_heldout_rows, holds

HELDOUT = frozenset(normalise_caption(s) for s in ("A dog runs across the grass .", "Two men play chess"))


def test_instruction_prefixed_cells_hold_the_sentence():
    assert holds("A dog runs  across the grass .", HELDOUT)
    assert holds("Find me an everyday image that matches the given caption: A dog runs across the grass .", HELDOUT)
    assert holds("<|image_1|> Represent the given image with the following question:\nTwo men play chess", HELDOUT)
    # a sentence that merely contains a held-out one, or a different ending, is not held out
    assert not holds("Find me an everyday image that matches the given caption: a dog runs across the grass . ok",
                     HELDOUT)
    assert not holds("the given caption: a cat sleeps", HELDOUT)


def test_rows_with_a_wrapped_sentence_are_dropped():
    rows = [{"qry": "Find me an everyday image that matches the given caption: Two men play chess", "pos": "<image>"},
            {"qry": "Find me an everyday image that matches the given caption: a cat sleeps", "pos": "<image>"},
            {"qry": "<image> Represent the given image.", "pos": "a dog runs across the grass ."}]
    kept, dropped = drop_heldout_rows(rows, ["qry", "pos"], HELDOUT)
    assert dropped == 2 and kept == [rows[1]]
