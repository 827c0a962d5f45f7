"""UniME stage 1 as a recipe: relational distillation from a cached teacher, its errors, and experiment=unime_stage1.

The teacher is all-MiniLM-L6-v2 (small) over a 12-triplet file; the student is the tiny random-weight model.
"""

from __future__ import annotations

import csv
import pickle
import shlex
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from mmembed.data import teacher_cache
from mmembed.errors import ConfigError, DataConfigError
from mmembed.losses.distillation import relational_kl
from mmembed.objectives import RelationalDistillation, StepContext, WeightedSum
from mmembed.objectives.distillation import similarity_correlation, wait_for_file
from mmembed.prep import teacher_cache as teacher_cache_cli
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train

TEACHER = "all-MiniLM-L6-v2"
TRIPLETS = [
    ("A man is playing a guitar on stage.", "A man performs music.", "A woman is sleeping at home."),
    ("Two dogs run across a snowy field.", "Animals are outside in the snow.", "Two cats nap on a sofa."),
    ("A child eats an ice cream cone.", "A kid has a dessert.", "A child is crying in the rain."),
    ("A woman rides a bicycle down the street.", "A person is cycling.", "A woman is driving a truck."),
    ("People wait for the train at the station.", "A crowd is at a train station.", "The station is empty."),
    ("A chef chops onions in a kitchen.", "Someone is cooking.", "A chef is swimming in the sea."),
    ("An old man reads a newspaper on a bench.", "A man is reading.", "An old man is running a marathon."),
    ("Kids play football in the park.", "Children are playing a sport.", "Kids are asleep in bed."),
    ("A surfer rides a big wave.", "A person is surfing.", "A surfer sits in an office."),
    ("A girl paints a picture of a house.", "A girl is making art.", "A girl is fixing a car."),
    ("Two men shake hands after a meeting.", "Two people greet each other.", "Two men are fighting."),
    ("A dog catches a frisbee in the air.", "A dog is playing.", "A dog is sleeping under a tree."),
]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill_data") / "triplets.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sent0", "sent1", "hard_neg"])
        writer.writerows(TRIPLETS)
    return path


@pytest.fixture(scope="module")
def featurizer(tiny_smol_llava_dir):
    from mmembed.models.factory import ModelSpec, build_featurizer

    return build_featurizer(ModelSpec(name_or_path=str(tiny_smol_llava_dir), text_only=True))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher_cache")


def _objective(cache_dir, **kwargs) -> RelationalDistillation:
    return RelationalDistillation(TEACHER, tau=kwargs.pop("tau", 0.05), cache_dir=str(cache_dir), **kwargs)


def _rows(featurizer, n=4):
    from mmembed.data.collate import TextPairRows

    rows = [dict(zip(("sent0", "sent1", "hard_neg"), t)) for t in TRIPLETS[:n]]
    return TextPairRows(featurizer, 32)(rows).rows


def _live_teacher(texts):
    from sentence_transformers import SentenceTransformer

    from mmembed.models.text_encoders import resolve_teacher

    model = SentenceTransformer(resolve_teacher(TEACHER), device="cpu")
    return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).float()


def _refuse_teacher(monkeypatch):
    """From here on, any attempt to load a teacher fails the test."""
    import sentence_transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran during training")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refuse)
    monkeypatch.setattr(teacher_cache, "_sentence_transformer", refuse)


def test_loss_is_relational_kl_of_the_student_and_the_cached_teacher_rows(tiny_smol_llava_dir, featurizer,
                                                                          train_file, cache_dir):
    from mmembed.models.factory import ModelSpec, build_embedder

    objective = _objective(cache_dir, tau=0.05)
    objective.prepare_files([train_file], featurizer.tokenizer, 32)
    rows = _rows(featurizer)
    texts = [r["sent0"] for r in rows] + [r["sent1"] for r in rows] + [r["hard_neg"] for r in rows]
    features = objective.features(featurizer, rows)
    # The cached rows are the live teacher's embeddings of exactly these 12 texts, in this order.
    teacher = _live_teacher(texts)
    assert torch.allclose(features["teacher"], teacher, atol=1e-5)

    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), text_only=True), featurizer).eval()
    with torch.no_grad():
        out = objective(embedder, features, StepContext())
        student = embedder(**featurizer.featurize_text(texts))
    assert student.shape[0] == 12
    assert torch.allclose(out.loss, relational_kl(student, teacher, 0.05), atol=1e-5)
    # The same number from the formula itself: mean_i sum_j p_ij log(p_ij / q_ij).
    p = torch.softmax(teacher @ teacher.T / 0.05, dim=1)
    q = torch.softmax(student @ student.T / 0.05, dim=1)
    assert abs(float(out.loss) - float((p * (p.log() - q.log())).sum(1).mean())) < 1e-4
    off = ~torch.eye(12, dtype=torch.bool)
    pearson = torch.corrcoef(torch.stack([(student @ student.T)[off], (teacher @ teacher.T)[off]]))[0, 1]
    assert abs(out.metrics["teacher_corr"] - float(pearson)) < 1e-5


def test_similarity_correlation_by_hand():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert abs(similarity_correlation(student, student) - 1.0) < 1e-6
    flipped = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])  # swaps which pair is the closer one
    # Off-diagonal cosines x 15, row-major: student (0, 9, 0, 12, 9, 12), teacher (0, 12, 0, 9, 12, 9); both
    # mean 7, deviations (-7, 2, -7, 5, 2, 5) and (-7, 5, -7, 2, 5, 2): covariance 138, variance 156.
    assert abs(similarity_correlation(student, flipped) - 138 / 156) < 1e-6


def test_a_sentence_missing_from_the_cache_names_the_command_that_builds_it(featurizer, train_file, cache_dir):
    objective = _objective(cache_dir)
    with pytest.raises(ConfigError, match=r"call objective.prepare\(datamodule\)"):
        objective.features(featurizer, _rows(featurizer))
    objective.prepare_files([train_file], featurizer.tokenizer, 32, tokenizer_name="/models/student")
    rows = _rows(featurizer, 2)
    rows[1]["hard_neg"] = "A sentence no training file holds."
    command = (f"python -m mmembed.prep.teacher_cache --teacher {TEACHER} --files {train_file} "
               f"--max-text-tokens 32 --student-tokenizer /models/student --cache-dir {cache_dir}")
    with pytest.raises(DataConfigError, match="1 of the batch's 6 texts are not in the teacher cache") as err:
        objective.features(featurizer, rows)
    assert "'A sentence no training file holds.'" in str(err.value) and f"`{command}`" in str(err.value)


def test_the_error_command_builds_the_very_cache_training_reads(featurizer, tiny_smol_llava_dir, train_file, tmp_path,
                                                                 monkeypatch):
    objective = _objective(tmp_path / "fresh", build_cache=False)
    with pytest.raises(DataConfigError, match="objective.build_cache=false: build it with") as err:
        objective.prepare_files([train_file], featurizer.tokenizer, 32, tokenizer_name=str(tiny_smol_llava_dir))
    command = str(err.value).split("`")[1]
    assert command.startswith("python -m mmembed.prep.teacher_cache ")
    built = teacher_cache_cli.main(shlex.split(command)[3:])
    _refuse_teacher(monkeypatch)
    assert objective.prepare_files([train_file], featurizer.tokenizer, 32) == built


def test_other_local_ranks_wait_for_rank_zero(featurizer, train_file, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    objective = _objective(tmp_path / "ranks", wait_timeout_s=0.3)
    with pytest.raises(DataConfigError, match=r"waited 0 s for local rank 0 to build the teacher cache .*python -m"):
        objective.prepare_files([train_file], featurizer.tokenizer, 32)
    target = tmp_path / "later.bin"
    threading.Timer(0.3, target.write_bytes, args=(b"x",)).start()
    started = time.monotonic()
    wait_for_file(target, timeout_s=30, command="-", poll_s=0.05)
    assert 0.25 < time.monotonic() - started < 10


def test_weighted_sum_prepares_its_distillation_part(featurizer, train_file, cache_dir, tmp_path):
    cfg = compose_train(["experiment=unime_stage1", "objective=distillation_infonce", f"objective.parts.distillation.teacher={TEACHER}",
                         f"objective.parts.distillation.cache_dir={cache_dir}", "objective.weights.infonce=0.5"], tmp_path)
    objective = instantiate(cfg.objective, _convert_="all")
    assert isinstance(objective, WeightedSum) and objective.weights == {"distillation": 1.0, "infonce": 0.5}
    assert objective.parts["distillation"].tau == 0.05 and objective.supports_grad_cache
    objective.prepare(SimpleNamespace(train_files=[str(train_file)], featurizer=featurizer, max_text_tokens=32))
    features = objective.features(featurizer, _rows(featurizer))
    assert features["distillation"]["teacher"].shape == (12, 384)  # MiniLM rows of anchors, positives, hard negatives


def test_distillation_mse_composes_and_regresses_the_cached_teacher_cosines(tiny_smol_llava_dir, featurizer,
                                                                            train_file, cache_dir, tmp_path):
    from mmembed.models.factory import ModelSpec, build_embedder
    from mmembed.objectives import SimilarityMSE

    cfg = compose_train(["experiment=unime_stage1", "objective=distillation_mse", f"objective.teacher={TEACHER}",
                         f"objective.cache_dir={cache_dir}"], tmp_path)
    objective = instantiate(cfg.objective, _convert_="all")
    assert isinstance(objective, SimilarityMSE) and objective.use_hard_negatives
    objective.prepare(SimpleNamespace(train_files=[str(train_file)], featurizer=featurizer, max_text_tokens=32))
    rows = _rows(featurizer)
    features = objective.features(featurizer, rows)
    texts = [r["sent0"] for r in rows] + [r["sent1"] for r in rows] + [r["hard_neg"] for r in rows]
    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), text_only=True), featurizer).eval()
    with torch.no_grad():
        out = objective(embedder, features, StepContext())
        student = embedder(**featurizer.featurize_text(texts))
    teacher = features["teacher"]
    off = ~torch.eye(12, dtype=torch.bool)  # the 132 pairs i != j of the 12 texts
    expected = ((student @ student.T - teacher @ teacher.T)[off] ** 2).mean()
    assert abs(float(out.loss) - float(expected)) < 1e-5 and float(out.loss) > 1e-3
    # objective=distillation with exclude_self builds UniME's KL without the own column
    kl = instantiate(compose_train(["experiment=unime_stage1", "objective.exclude_self=true"], tmp_path).objective)
    assert isinstance(kl, RelationalDistillation) and kl.exclude_self and kl.tau == 0.05


def _stage1(tiny_smol_llava_dir, train_file, cache_dir, tmp_path, *extra):
    cfg = compose_train(["experiment=unime_stage1", f"model.name_or_path={tiny_smol_llava_dir}",
                         f"data.train_files=[{train_file}]", "data.batch_size=4", "val=none",
                         "validate_before_training=false", "trainer.max_steps=2", "logger=csv", "lora.dropout=0",
                         f"objective.teacher={TEACHER}", f"objective.cache_dir={cache_dir}", *extra], tmp_path)
    return cfg, run_training(cfg)


def _step_losses(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow  # two 2-step training runs: ~60 s on the shared 2-core CPU
def test_unime_stage1_trains_from_the_cache_without_the_teacher_and_matches_under_gradcache(
        tiny_smol_llava_dir, featurizer, train_file, cache_dir, tmp_path, monkeypatch):
    _objective(cache_dir).prepare_files([train_file], featurizer.tokenizer, 32)  # the cache, built once
    cached = sorted(cache_dir.iterdir())
    _refuse_teacher(monkeypatch)
    cfg, plain = _stage1(tiny_smol_llava_dir, train_file, cache_dir, tmp_path / "plain")
    assert cfg.model.text_only and cfg.objective.tau == 0.05 and cfg.lora.r == 32
    assert plain["global_step"] == 2 and plain["objective"] == "RelationalDistillation"
    assert plain["cost"]["vision_tower_in_memory"] is False
    assert "train/teacher_corr" in plain["metrics"]
    _, chunked = _stage1(tiny_smol_llava_dir, train_file, cache_dir, tmp_path / "gc", "grad_cache.chunk_size=3")
    assert chunked["global_step"] == 2
    plain_losses, chunked_losses = _step_losses(tmp_path / "plain"), _step_losses(tmp_path / "gc")
    assert len(plain_losses) == 2 and plain_losses[0] > 0
    # Step 1: the same loss; step 2: the same loss after an update, so GradCache's gradients matched too.
    assert plain_losses == pytest.approx(chunked_losses, abs=1e-5)
    assert sorted(cache_dir.iterdir()) == cached  # nothing rebuilt


def test_the_collator_pickles_without_the_teacher_vectors(featurizer, train_file, cache_dir, tmp_path):
    cfg = compose_train(["experiment=unime_stage1", f"data.train_files=[{train_file}]", "data.batch_size=4",
                         "val=none", f"objective.teacher={TEACHER}", f"objective.cache_dir={cache_dir}"],
                        tmp_path)
    objective = instantiate(cfg.objective, _convert_="all")
    datamodule = instantiate(cfg.data, featurizer=featurizer, objective=objective)
    datamodule.check_data()
    objective.prepare(datamodule)
    collate = datamodule.train_collator()
    rows = list(datamodule.train_set.select(range(4)))
    expected = collate(rows)["features"]["teacher"]
    vectors = objective.teacher_rows.vectors
    assert vectors.shape == (36, 384)  # 12 triplets, 36 distinct sentences
    blob = pickle.dumps(collate)
    with_vectors = len(pickle.dumps(vectors))
    without_objective = len(pickle.dumps(datamodule.train_collator().__class__(collate.prepare, _Bare(), featurizer)))
    # The objective adds its index (36 short strings) and settings, not the 55 kB matrix.
    assert len(blob) - without_objective < with_vectors / 4
    restored = pickle.loads(blob)  # as a spawned DataLoader worker receives it
    assert restored.objective.teacher_rows.vectors is None
    assert torch.equal(restored(rows)["features"]["teacher"], expected)  # loaded from the file on first use
    assert restored.objective.teacher_rows.vectors.shape == (36, 384)


class _Bare:
    row_kind = "text_pairs"
