"""The differences the distributed-equivalence tests allow (atol 1e-10), as actually observed.

    python perf/equivalence_tolerances.py            # ~10 s, 2 gloo CPU processes

The tests (tests/losses) assert |difference| < 1e-10 in float64; this prints the observed values, on
the tests' own seeded float64 tiny encoder, data and workers (imported from them, so the numbers are
those of the very computations the tests check):
  1. cross-device InfoNCE, 2 ranks x 4 triplets vs 1 process on the 8 concatenated triplets: loss and
     parameter gradients (rank gradients averaged as DDP does), and the same with a gather *without*
     gradient (the classic mistake) for scale;
  2. GradCache vs the plain loss in one process, dropout on, chunk sizes 1, 3 and 8;
  3. GradCache under DDP (2 ranks, chunks of 3) vs 1 process, and DDP's gradient all-reduces per step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `tests`

from tests.losses import test_distributed_infonce as infonce_tests  # noqa: E402
from tests.losses import test_gradcache as gradcache_tests  # noqa: E402
from tests.losses.helpers import GLOBAL_BATCH, TinyEncoder, grads_of, make_groups, max_abs_diff, run_distributed  # noqa: E402

from mmembed.losses import info_nce  # noqa: E402


def cross_device_infonce(tmp: Path) -> list[tuple[str, float]]:
    ranks = run_distributed(infonce_tests._worker, tmp)
    model = TinyEncoder()
    loss = info_nce(*(model(x) for x in make_groups()))
    loss.backward()
    single = grads_of(model)
    mean_loss = sum(r["loss_with_grad"] for r in ranks) / len(ranks)
    return [
        ("cross-device InfoNCE: |loss(2 ranks) - loss(1 process)|", abs(mean_loss - loss.item())),
        ("cross-device InfoNCE: max |grad(2 ranks) - grad(1 process)|",
         max(max_abs_diff(r["grads_with_grad"], single) for r in ranks)),
        ("gather WITHOUT gradient: max |grad - grad(1 process)| (the bug, for scale)",
         max_abs_diff(ranks[0]["grads_without_grad"], single)),
    ]


def grad_cache_single_process() -> list[tuple[str, float]]:
    rows = []
    for chunk in (1, 3, GLOBAL_BATCH):
        ref_loss, ref_grads = gradcache_tests._reference(torch.float64, chunk)
        loss, grads = gradcache_tests._grad_cache(torch.float64, chunk)
        rows.append((f"GradCache chunk {chunk} vs plain (dropout 0.1): |loss diff|", abs(loss.item() - ref_loss)))
        rows.append((f"GradCache chunk {chunk} vs plain (dropout 0.1): max |grad diff|", max_abs_diff(grads, ref_grads)))
    return rows


def grad_cache_ddp(tmp: Path) -> list[tuple[str, float | int]]:
    ranks = run_distributed(gradcache_tests._ddp_worker, tmp)
    _, ref_grads = gradcache_tests._reference(torch.float64, gradcache_tests.DIST_CHUNK, seeds=gradcache_tests.RANK_SEEDS)
    return [
        ("GradCache under DDP (2 ranks) vs 1 process: max |grad diff|",
         max(max_abs_diff(r["grads"], ref_grads) for r in ranks)),
        ("GradCache under DDP: gradient all-reduces per step (rank 0)", ranks[0]["allreduces"]),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        rows = cross_device_infonce(Path(a)) + grad_cache_single_process() + grad_cache_ddp(Path(b))
    width = max(len(name) for name, _ in rows)
    print(f"{'float64; the tests allow 1e-10':<{width}} | observed")
    for name, value in rows:
        print(f"{name:<{width}} | {value if isinstance(value, int) else f'{value:.2e}'}")


if __name__ == "__main__":
    main()
