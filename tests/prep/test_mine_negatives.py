"""Offline hard-negative mining for MMEB training files: the selection rule against a brute force with a
planted false negative, and the command on the tiny model writing rows stage 2 then trains on."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from mmembed.data.mmeb_train import read_mmeb_train
from mmembed.prep.mine_negatives import hardest_negatives, main
from tests.objectives.test_hard_negative_objective import _train_folder


def _brute_force(q, t, positive, beta):
    picks = []
    for i in range(q.shape[0]):
        own = float(q[i] @ t[positive[i]])
        left = [(float(q[i] @ t[j]), j) for j in range(t.shape[0]) if j != positive[i] and float(q[i] @ t[j]) <= own + beta]
        picks.append(max(left)[1] if left else -1)
    return picks


def test_hardest_negative_skips_the_positive_and_false_negatives():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=-1)
    positive = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    t[4] = F.normalize(q[0] + 1e-3, dim=0)  # a planted false negative for query 0: far above its positive
    picked = hardest_negatives(q, t, positive, beta=0.1)
    assert picked.tolist() == _brute_force(q, t, positive, 0.1)
    assert picked[0] != 4 and all(p != positive[i] for i, p in enumerate(picked.tolist()))
    assert hardest_negatives(q, t, positive, beta=-10.0).tolist() == [-1] * 9  # everything filtered


def test_command_writes_negatives_that_stage2_reads(tiny_smol_llava_dir, tmp_path, capsys):
    folder, images = _train_folder(tmp_path, n=6)
    out = tmp_path / "mined.jsonl"
    code = main(["--files", str(folder / "mixed.jsonl"), "--image-root", str(images), "--out", str(out),
                 "--model", str(tiny_smol_llava_dir)])
    assert code == 0 and '"mined": 6' in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    original = [json.loads(line) for line in (folder / "mixed.jsonl").read_text().splitlines()]
    assert [r["qry"] for r in rows] == [r["qry"] for r in original]
    for row in rows:  # a mined negative is another row's target, never the row's own
        assert (row["neg_text"], row["neg_image_path"]) != (row["pos_text"], row["pos_image_path"])
        assert (row["neg_text"], row["neg_image_path"]) in {(r["pos_text"], r["pos_image_path"]) for r in original}
    read = read_mmeb_train([str(out)], images)
    assert all(r["neg"] is not None for r in read)
