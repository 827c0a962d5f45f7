"""UniME stage 1: relational knowledge distillation, a pure function of embeddings.

The student does not regress the teacher's vectors (their dimensions differ); it matches the teacher's
*similarity structure* over the batch. With S = E E^T (inputs L2-normalised, so cosine similarities):

    loss = mean_i KL( softmax(S_t[i, :] / tau) || softmax(S_s[i, :] / tau) )

Row i is the distribution anchor i puts over every candidate j of the batch (itself included, as in
UniME's formula). Teacher embeddings are targets computed offline: no gradient ever flows into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.errors import ConfigError
from mmembed.losses.gather import gather_no_grad, gather_with_grad
from mmembed.losses.similarity import scores


def _check(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> None:
    if not tau > 0:
        raise ConfigError(f"distillation temperature tau must be > 0, got {tau}")
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher must be [N, D] matrices with the same N (one row per sentence), "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 similarities lose the small differences a softmax at tau 0.05 amplifies; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _row_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher row) || softmax(student row)), computed from log-probabilities."""
    student_logits, teacher_logits = _float32_at_least(student_logits), _float32_at_least(teacher_logits)
    # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q); batchmean divides by the rows.
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(teacher_logits, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, cross_device: bool = False) -> torch.Tensor:
    """UniME's distillation loss on one process: student [N, Ds], teacher [N, Dt] (row i = sentence i).

    cross_device=True uses the candidates of every rank (see `distributed_relational_kl`); without an
    initialised process group it is the same as False.
    """
    if cross_device:
        return distributed_relational_kl(student, teacher, tau)
    _check(student, teacher, tau)
    teacher = teacher.detach()
    return _row_kl(scores(student, student) / tau, scores(teacher, teacher) / tau)


def distributed_relational_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, group=None) -> torch.Tensor:
    """Relational KL with this rank's rows as anchors and the global batch as candidates.

    Candidate columns are `cat([student_0; ...; student_{W-1}])` (gathered *with* gradient, so every
    rank's loss reaches the rows it scored) and the teacher's rows gathered without (fixed targets):
    row i's distributions are exactly row (rank * N + i) of the single-process matrices on the
    concatenated batch. The loss is the mean over the local rows; with equal local batches the mean
    of the ranks' losses, and DDP's gradient average, equal the single-process loss and gradients
    (tests/losses/test_distillation.py checks both). Every rank must call this with the same N.
    """
    _check(student, teacher, tau)
    teacher = teacher.detach()
    all_student = gather_with_grad(student, group)
    all_teacher = gather_no_grad(teacher, group)  # targets: no graph to keep
    return _row_kl(scores(student, all_student) / tau, scores(teacher, all_teacher) / tau)
