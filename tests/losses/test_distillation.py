"""UniME's relational KL (and its variants: without each text's own column; the cosine MSE): hand-computed
values, fixed points, where the gradient goes, and 2-process DDP.

The distributed check follows tests/losses/test_distributed_infonce.py: each of 2 gloo ranks holds half
of a global batch of 8, the ranks' losses and DDP-averaged gradients must equal one process on the
concatenated batch (float64, atol 1e-10), and a gather *without* gradient must give wrong gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmembed.errors import ConfigError
from mmembed.losses.distillation import _row_kl, distributed_relational_kl, relational_kl, similarity_mse
from tests.losses.helpers import IN_DIM, TinyEncoder, grads_of, max_abs_diff, run_distributed

ATOL = 1e-10

STUDENT = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # unit rows
TEACHER = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]


def _hand_relational_kl(student: list[list[float]], teacher: list[list[float]], tau: float,
                        exclude_self: bool = False) -> float:
    """The formula written out with Python floats: S = E E^T, row softmax at tau, KL(teacher || student)."""

    def softmax_rows(emb):
        rows = []
        for i, a in enumerate(emb):
            logits = [sum(x * y for x, y in zip(a, b)) / tau for j, b in enumerate(emb) if not (exclude_self and i == j)]
            z = sum(math.exp(v) for v in logits)
            rows.append([math.exp(v) / z for v in logits])
        return rows

    p_t, p_s = softmax_rows(teacher), softmax_rows(student)
    kls = [sum(p * math.log(p / q) for p, q in zip(pt, ps)) for pt, ps in zip(p_t, p_s)]
    return sum(kls) / len(kls)


@pytest.mark.parametrize("tau", [0.5, 0.05])
def test_matches_hand_computation_on_3x2(tau):
    expected = _hand_relational_kl(STUDENT, TEACHER, tau)
    got = relational_kl(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), tau)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tau", [0.5, 0.05])
def test_without_self_matches_hand_computation_and_differs_from_with_self(tau):
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    got = relational_kl(s, t, tau, exclude_self=True).item()
    assert got == pytest.approx(_hand_relational_kl(STUDENT, TEACHER, tau, exclude_self=True), rel=1e-12)
    assert got != pytest.approx(relational_kl(s, t, tau).item(), rel=1e-3)


def test_without_self_at_low_tau_keeps_the_relational_signal():
    # With the own column kept, a low tau puts nearly all of both softmaxes on it, so even a student whose
    # relations are unrelated to the teacher's scores a small loss; without it, the disagreement is the loss.
    g = torch.Generator().manual_seed(4)
    teacher = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    student = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=-1)
    with_self, without_self = (relational_kl(student, teacher, 0.01, exclude_self=e).item() for e in (False, True))
    assert with_self < 0.05 and without_self > 40  # 0.031 vs 43.5



def test_similarity_mse_hand_value():
    # Off-diagonal cosines, student: s01 0, s02 .6, s12 .8; teacher: .8, 0, .6. Squared differences .64, .36,
    # .04, each pair counted in both rows: mean over the 6 entries = 2 * 1.04 / 6.
    got = similarity_mse(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64))
    assert got.item() == pytest.approx(2 * 1.04 / 6, rel=1e-12)


def test_similarity_mse_is_zero_for_the_same_relations_in_other_dimensions_and_reaches_the_student_only():
    g = torch.Generator().manual_seed(5)
    teacher = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    student = (torch.cat([teacher, torch.zeros(5, 5, dtype=torch.float64)], dim=1) @ q).requires_grad_()
    loss = similarity_mse(student, teacher.clone().requires_grad_())
    assert loss.item() == pytest.approx(0.0, abs=1e-20)
    moved = F.normalize(student.detach() + 0.3 * torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    moved.requires_grad_()
    teacher_leaf = teacher.clone().requires_grad_()
    similarity_mse(moved, teacher_leaf).backward()
    assert teacher_leaf.grad is None and moved.grad.abs().sum().item() > 1e-4


def test_hand_value_pinned():
    # tau 0.5 on the 3x2 example; the value of the explicit formula (also checked above), pinned so a
    # change in the formula itself (e.g. reversing the KL's arguments) fails even if both sides change.
    # Row 0 by hand: p_t = softmax([2, 1.6, 0]) = [.5538, .3712, .0750], p_s = softmax([2, 0, 1.2]) =
    # [.6311, .0854, .2836], KL = 0.3733; rows 1 and 2 likewise; mean 0.23644.
    assert _hand_relational_kl(STUDENT, TEACHER, 0.5) == pytest.approx(0.2364408, abs=1e-6)
    assert _hand_relational_kl(TEACHER, STUDENT, 0.5) == pytest.approx(0.2043536, abs=1e-6)  # KL is not symmetric


def test_zero_when_student_equals_teacher_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    assert relational_kl(e, e.clone(), 0.05).item() == pytest.approx(0.0, abs=1e-12)
    other = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    assert relational_kl(e, other, 0.05).item() > 1e-3


def test_only_relations_matter_not_dimensions():
    # A rotated (and wider) student with the same similarity matrix as the teacher has zero loss.
    g = torch.Generator().manual_seed(1)
    teacher = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    student = torch.cat([teacher, torch.zeros(5, 5, dtype=torch.float64)], dim=1) @ q
    assert relational_kl(student, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_reaches_the_student_only():
    student = F.normalize(torch.tensor(STUDENT), dim=-1).requires_grad_()
    teacher = torch.tensor(TEACHER).requires_grad_()
    relational_kl(student, teacher, 0.5).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum().item() > 1e-4


def test_low_precision_inputs_are_computed_in_float32():
    s, t = torch.tensor(STUDENT, dtype=torch.bfloat16), torch.tensor(TEACHER, dtype=torch.bfloat16)
    loss = relational_kl(s, t, 0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_hand_relational_kl(STUDENT, TEACHER, 0.5), rel=1e-2)


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_temperature_must_be_positive(tau):
    with pytest.raises(ConfigError, match="tau must be > 0"):
        relational_kl(torch.tensor(STUDENT), torch.tensor(TEACHER), tau)


def test_row_counts_must_match():
    with pytest.raises(ValueError, match="same N"):
        relational_kl(torch.tensor(STUDENT), torch.tensor(TEACHER[:2]), 0.5)


def test_cross_device_without_process_group_is_the_local_loss():
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    assert relational_kl(s, t, 0.5, cross_device=True).item() == relational_kl(s, t, 0.5).item()


# ---- 2 gloo processes vs one process on the concatenated batch ----

GLOBAL = 8
TAU = 0.1


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Student input features and fixed (offline) teacher embeddings of a global batch of 8, dim 6."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(GLOBAL, IN_DIM, generator=g, dtype=torch.float64)
    teacher = F.normalize(torch.randn(GLOBAL, 6, generator=g, dtype=torch.float64), dim=-1)
    return x, teacher


def _no_grad_gather_loss(student, teacher):
    """The classic mistake: candidates from a plain all_gather, only the local slice keeping its graph."""
    rank, world = dist.get_rank(), dist.get_world_size()
    parts = [torch.empty_like(student) for _ in range(world)]
    dist.all_gather(parts, student.detach())
    parts[rank] = student
    t_parts = [torch.empty_like(teacher) for _ in range(world)]
    dist.all_gather(t_parts, teacher)
    return _row_kl(student @ torch.cat(parts).T / TAU, teacher @ torch.cat(t_parts).T / TAU)


def _mean_grads_over_ranks(model) -> dict[str, torch.Tensor]:
    for p in model.parameters():  # what DDP does: sum over ranks, divide by world size
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    return grads_of(model)


VARIANTS = {
    "without_self": lambda s, t: distributed_relational_kl(s, t, TAU, exclude_self=True),
    "mse": lambda s, t: similarity_mse(s, t),
}


def _worker(rank: int, world: int) -> dict:
    x, teacher = _inputs()
    x, teacher = x.chunk(world)[rank], teacher.chunk(world)[rank]
    out = {}
    for name in ("with_grad", "without_grad"):
        model = TinyEncoder()
        student = model(x)
        if name == "with_grad":
            loss = distributed_relational_kl(student, teacher, TAU)
        else:
            loss = _no_grad_gather_loss(student, teacher)
        loss.backward()
        out[f"loss_{name}"] = loss.item()
        out[f"grads_{name}"] = _mean_grads_over_ranks(model)
    # relational_kl(cross_device=True) is the same code path
    model = TinyEncoder()
    out["loss_flag"] = relational_kl(model(x), teacher, TAU, cross_device=True).item()
    # cross_device=False stays on this rank's batch under a process group: its own column is i, not rank * N + i
    out["local_without_self"] = relational_kl(TinyEncoder()(x), teacher, TAU, exclude_self=True).item()
    for name, loss_of in VARIANTS.items():  # each row's own column is at a different global index per rank
        model = TinyEncoder()
        loss = loss_of(model(x), teacher)
        loss.backward()
        out[f"loss_{name}"] = loss.item()
        out[f"grads_{name}"] = _mean_grads_over_ranks(model)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_distributed(_worker, tmp_path_factory.mktemp("dist_distill"))


@pytest.fixture(scope="module")
def single() -> dict:
    x, teacher = _inputs()
    model = TinyEncoder()
    loss = relational_kl(model(x), teacher, TAU)
    loss.backward()
    out = {"loss": loss.item(), "grads": grads_of(model)}
    for name, loss_of in VARIANTS.items():
        model = TinyEncoder()
        loss = loss_of(model(x), teacher)
        loss.backward()
        out[f"loss_{name}"], out[f"grads_{name}"] = loss.item(), grads_of(model)
    return out


@pytest.mark.distributed
def test_two_process_loss_equals_single_process(ranks, single):
    assert sum(r["loss_with_grad"] for r in ranks) / 2 == pytest.approx(single["loss"], abs=ATOL)
    assert sum(r["loss_flag"] for r in ranks) / 2 == pytest.approx(single["loss"], abs=ATOL)
    assert ranks[0]["loss_with_grad"] != pytest.approx(ranks[1]["loss_with_grad"], abs=1e-3)  # a non-trivial split


@pytest.mark.distributed
def test_two_process_gradients_equal_single_process(ranks, single):
    for r in ranks:
        assert max_abs_diff(r["grads_with_grad"], single["grads"]) < ATOL


@pytest.mark.distributed
def test_gather_without_grad_gives_the_same_loss_but_wrong_gradients(ranks, single):
    assert sum(r["loss_without_grad"] for r in ranks) / 2 == pytest.approx(single["loss"], abs=ATOL)
    assert max_abs_diff(ranks[0]["grads_without_grad"], single["grads"]) > 1e-4


@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_process_variants_equal_single_process(ranks, single, variant):
    assert sum(r[f"loss_{variant}"] for r in ranks) / 2 == pytest.approx(single[f"loss_{variant}"], abs=ATOL)
    for r in ranks:
        assert max_abs_diff(r[f"grads_{variant}"], single[f"grads_{variant}"]) < ATOL


@pytest.mark.distributed
def test_local_loss_without_self_under_a_process_group_is_each_ranks_own_batch(ranks):
    x, teacher = _inputs()
    for rank, r in enumerate(ranks):
        expected = relational_kl(TinyEncoder()(x.chunk(2)[rank]), teacher.chunk(2)[rank], TAU, exclude_self=True)
        assert r["local_without_self"] == pytest.approx(expected.item(), abs=ATOL)
