"""UniME stage 1: relational knowledge distillation, a pure function of embeddings.

The student does not regress the teacher's vectors (their dimensions differ); it matches the teacher's
*similarity structure* over the batch. With S = E E^T (inputs L2-normalised, so cosine similarities):

    loss = mean_i KL( softmax(S_t[i, :] / tau) || softmax(S_s[i, :] / tau) )

Row i is the distribution anchor i puts over every candidate j of the batch (itself included, as in
UniME's formula; `exclude_self=True` drops that column, whose cosine is 1 for both models and, at a low
tau, holds nearly all of the teacher's mass). Teacher embeddings are targets computed offline: no
gradient ever flows into them.

`similarity_mse` is the graded alternative: the mean squared difference of the two cosine matrices off
the diagonal, every pair weighted alike rather than the nearest few that a softmax at a low tau keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.errors import ConfigError
from mmembed.losses.gather import gather_no_grad, gather_with_grad, rank_and_world
from mmembed.losses.similarity import scores


def _check(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> None:
    if not tau > 0:
        raise ConfigError(f"distillation temperature tau must be > 0, got {tau}")
    _check_rows(student, teacher)


def _check_rows(student: torch.Tensor, teacher: torch.Tensor) -> None:
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


def _without_self(similarities: torch.Tensor, first_row: int = 0) -> torch.Tensor:
    """[N, M] rows x candidates -> [N, M - 1]: row i's own column (first_row + i: rank * N under the global
    candidates of `distributed_relational_kl`, 0 on one process's batch) removed, so no -inf enters a softmax."""
    n = similarities.shape[0]
    keep = torch.ones_like(similarities, dtype=torch.bool)
    keep[torch.arange(n), first_row + torch.arange(n)] = False
    return similarities[keep].view(n, -1)


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, cross_device: bool = False,
                  exclude_self: bool = False) -> torch.Tensor:
    """UniME's distillation loss on one process: student [N, Ds], teacher [N, Dt] (row i = sentence i).

    cross_device=True uses the candidates of every rank (see `distributed_relational_kl`); without an
    initialised process group it is the same as False.
    """
    if cross_device:
        return distributed_relational_kl(student, teacher, tau, exclude_self=exclude_self)
    _check(student, teacher, tau)
    teacher = teacher.detach()
    s_student, s_teacher = scores(student, student), scores(teacher, teacher)
    if exclude_self:
        s_student, s_teacher = _without_self(s_student), _without_self(s_teacher)
    return _row_kl(s_student / tau, s_teacher / tau)


def distributed_relational_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, group=None,
                              exclude_self: bool = False) -> torch.Tensor:
    """Relational KL with this rank's rows as anchors and the global batch as candidates.

    Candidate columns are `cat([student_0; ...; student_{W-1}])` (gathered *with* gradient, so every
    rank's loss reaches the rows it scored) and the teacher's rows gathered without (fixed targets):
    row i's distributions are exactly row (rank * N + i) of the single-process matrices on the
    concatenated batch. The loss is the mean over the local rows; with equal local batches the mean
    of the ranks' losses, and DDP's gradient average, equal the single-process loss and gradients
    (tests/losses/test_distillation.py checks both). Every rank must call this with the same N.
    """
    _check(student, teacher, tau)
    s_student, s_teacher = _global_similarities(student, teacher, group)
    if exclude_self:
        first_row = rank_and_world(group)[0] * student.shape[0]
        s_student, s_teacher = _without_self(s_student, first_row), _without_self(s_teacher, first_row)
    return _row_kl(s_student / tau, s_teacher / tau)


def _global_similarities(student: torch.Tensor, teacher: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows against every rank's candidates: student (with gradient) and teacher (fixed targets)."""
    teacher = teacher.detach()
    all_student = gather_with_grad(student, group)
    all_teacher = gather_no_grad(teacher, group)  # targets: no graph to keep
    return scores(student, all_student), scores(teacher, all_teacher)


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor, group=None) -> torch.Tensor:
    """mean over pairs i != j of (S_s[i, j] - S_t[i, j])^2, this rank's rows against the global batch.

    Inputs are L2-normalised embeddings (S holds cosines). As in `distributed_relational_kl`, the candidates
    are gathered with gradient, so with equal local batches the mean of the ranks' losses and DDP's averaged
    gradients equal the single-process loss and gradients on the concatenated batch.
    """
    _check_rows(student, teacher)
    s_student, s_teacher = _global_similarities(student, teacher, group)
    first_row = rank_and_world(group)[0] * student.shape[0]
    s_student, s_teacher = _without_self(s_student, first_row), _without_self(s_teacher, first_row)
    return (s_student - s_teacher).pow(2).mean()  # `scores` works in float32 at least
