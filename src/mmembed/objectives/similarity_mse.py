"""Distillation by regression of the teacher's cosines: loss = mean over pairs i != j of (S_s[i, j] - S_t[i, j])^2.

The same cached teacher, data and batch as UniME's relational KL (`RelationalDistillation`); only the match
differs. A softmax at a low tau keeps the teacher's few nearest texts of each row (at tau 0.05 and 48 texts, 98%
of its mass stays on the row's own column: experiments/unime_stage1.md); this loss weights every pair alike, so
the student learns the teacher's graded similarities, the quantity STS scores. Not UniME's loss: an
alternative for its stage 1 (conf/objective/distillation_mse.yaml).
"""

from __future__ import annotations

import torch

from mmembed.losses.distillation import similarity_mse
from mmembed.objectives.distillation import TeacherDistillation


class SimilarityMSE(TeacherDistillation):
    name = "distillation_mse"

    def match(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return similarity_mse(student, teacher)
