"""results.md states the tie convention of the scores it reports, and the statement matches the code."""

from __future__ import annotations

import torch

from mmembed.evaluation.report import results_markdown
from mmembed.metrics.mmeb import hit_at_1
from mmembed.metrics.ranking import best_positive_ranks

TIES_LINE = ("- ties: a candidate scoring exactly as high as the query's best positive does not rank above it "
             "(retrieval, CIR, zero-shot); MMEB counts a tie with the gold as a hit (its argmax takes the first "
             "maximum, the gold at index 0)")


def test_results_md_states_the_tie_convention():
    results = {"model": "m", "adapter": None, "started": "t", "batch_size": 4, "benchmarks": {
        "toy": {"metrics": {"R@1": 50.0}, "protocol": {"task": "retrieval"}, "wall_time_s": 1}}}
    lines = results_markdown(results).splitlines()
    assert TIES_LINE in lines
    assert lines.index(TIES_LINE) < lines.index("## toy (retrieval, 1 s)")  # stated once, in the header


def test_the_stated_tie_convention_is_what_the_scores_do():
    # Candidates 0 and 1 are the same vector; 0 is the query's positive, 1 is not: rank 0 (a hit at R@1).
    cand = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ranks = best_positive_ranks(torch.tensor([[1.0, 0.0]]), cand, torch.tensor([[0, 0]]))
    assert ranks.tolist() == [0]
    # MMEB: the gold (column 0) tied with another candidate is a hit; strictly below one is not.
    assert hit_at_1(torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.6, 0.1]])).tolist() == [True, False]
