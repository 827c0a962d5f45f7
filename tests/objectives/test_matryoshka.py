"""Matryoshka around an embedding objective: the loss is the weighted sum of the inner loss at each truncated,
re-normalised size (computed by hand), GradCache gives the plain gradients, and the YAML composes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mmembed.errors import ConfigError
from mmembed.losses import grad_cache_step
from mmembed.losses.infonce import info_nce
from mmembed.objectives import StepContext, TextPairInfoNCE
from mmembed.objectives.matryoshka import Matryoshka
from tests.losses.helpers import TinyEncoder, grads_of, make_groups, max_abs_diff
from tests.pipeline.helpers import compose_train

DIMS, WEIGHTS = [8, 4, 2], [1.0, 0.5, 0.25]


def _features(n: int) -> dict:
    return {"sizes": [n, n, n]}


def test_loss_is_the_weighted_sum_of_truncated_losses():
    q, p, n = (F.normalize(torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s)), dim=-1)
               for s in (1, 2, 3))
    objective = Matryoshka(TextPairInfoNCE(temperature=0.05), DIMS, WEIGHTS)
    out = objective.loss([torch.cat([q, p, n])], _features(6), StepContext())
    expected = sum(w * info_nce(*(F.normalize(x[:, :d], dim=-1) for x in (q, p, n)), temperature=0.05)
                   for d, w in zip(DIMS, WEIGHTS))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert out.metrics["dim2/loss"] == pytest.approx(
        info_nce(*(F.normalize(x[:, :2], dim=-1) for x in (q, p, n)), temperature=0.05).item(), abs=1e-12)
    # the full size alone is the wrapped objective, unchanged
    alone = Matryoshka(TextPairInfoNCE(temperature=0.05), [8]).loss([torch.cat([q, p, n])], _features(6), StepContext())
    assert alone.loss.item() == pytest.approx(info_nce(q, p, n, temperature=0.05).item(), abs=1e-12)


def test_grad_cache_gives_the_plain_gradients():
    groups = make_groups()
    objective = Matryoshka(TextPairInfoNCE(temperature=0.05), DIMS, WEIGHTS)
    features, ctx = _features(len(groups[0])), StepContext()
    model = TinyEncoder()
    plain = objective.loss([torch.cat([model(g) for g in groups])], features, ctx).loss
    plain.backward()
    want = grads_of(model)
    model.zero_grad()
    cached = grad_cache_step(model, groups, lambda q, p, n: objective.loss([torch.cat([q, p, n])], features, ctx).loss,
                             chunk_size=3)
    assert cached.item() == pytest.approx(plain.item(), abs=1e-12)
    assert max_abs_diff(grads_of(model), want) < 1e-10


def test_bad_settings_are_config_errors():
    inner = TextPairInfoNCE()
    with pytest.raises(ConfigError, match="distinct positive sizes"):
        Matryoshka(inner, [64, 64])
    with pytest.raises(ConfigError, match="one non-negative weight per dim"):
        Matryoshka(inner, [64, 32], [1.0])
    with pytest.raises(ConfigError, match="have 8 dimensions"):
        Matryoshka(inner, [16, 8]).loss([torch.randn(6, 8)], _features(2), StepContext())


def test_objective_matryoshka_composes_around_infonce(tmp_path):
    cfg = compose_train(["experiment=text_only", "objective=matryoshka"], tmp_path)
    objective = instantiate(cfg.objective)
    assert isinstance(objective, Matryoshka) and isinstance(objective.objective, TextPairInfoNCE)
    assert objective.dims == [576, 256, 128, 64] and objective.row_kind == "text_pairs"
