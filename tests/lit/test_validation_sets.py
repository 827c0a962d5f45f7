"""Validation sets (conf/val/, mmembed.lit.validation) on a tiny SmolLlava with its vision tower:

- through Lightning (one validation dataloader per set, `val/<set>/<metric>`), each set's metrics equal the
  benchmark class's own `run()` on the same subset and model (STS, caption retrieval both ways, CIRR): the
  same scoring function on the same embeddings, equal up to the float32 Lightning logs in;
- on 2 gloo processes (DistributedSampler shards, padded with duplicates: odd item counts) the gathered,
  de-duplicated tables give the 1-process numbers within 1e-6, the same on every rank;
- the frozen tower's features are computed once per run: a second validation embeds no image again.
"""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from mmembed.evaluation.benchmarks.cirr import CIRRBenchmark
from mmembed.evaluation.benchmarks.retrieval import CaptionRetrievalBenchmark
from mmembed.evaluation.benchmarks.sts import STSBenchmark
from mmembed.lit.validation import ValidationCollator, ValidationSets, ValidationTables, sort_by_kind
from mmembed.models.vision_feature_cache import tower_body
from tests.distributed import run_distributed

STS_DEV = [("A man plays a guitar.", "A man is playing a guitar.", 4.6), ("A cat sleeps.", "Stocks fell.", 0.2),
           ("It rains.", "Rain falls.", 4.0), ("A dog runs.", "A dog is running fast.", 3.9),
           ("Two kids play.", "Nobody is here.", 0.5), ("A cat sleeps.", "A kitten naps.", 3.5)]  # 11 sentences
FLICKR_IMAGES = 3  # Flickr8k dev: 3 images + their 15 captions = 18 inputs (odd shares on 2 ranks)


def make_sets(data_root, sts_dir, cirr: bool = True) -> ValidationSets:
    sts = STSBenchmark(name="sts", format="stsb", path=str(sts_dir), split="dev")
    flickr = CaptionRetrievalBenchmark(
        name="flickr8k_dev", format="flickr8k_token", captions=str(data_root / "flickr8k_224/text/Flickr8k.token.txt"),
        images=[str(data_root / "flickr8k_224/images_dev"), str(data_root / "flickr8k/images")], split="dev",
        split_files={"dev": str(data_root / "flickr8k_224/text/Flickr_8k.devImages.txt")})
    sets = {"stsb_dev": {"benchmark": sts, "limit": None, "batch_size": 3, "log_as": {"spearman": "val/sts_spearman"}},
            "flickr8k_dev": {"benchmark": flickr, "limit": FLICKR_IMAGES, "batch_size": 4}}
    if cirr:
        root = data_root / "cirr"
        sets["cirr_local"] = {"benchmark": CIRRBenchmark(
            name="cirr_local", root=str(root), gallery="available", image_dir=str(root / "images_dev_subset"),
            captions_file=str(root / "cap.rc2.val.local_subset12.json")), "batch_size": 5}
    return ValidationSets(sets, seed=3)


def write_sts(folder):
    folder.mkdir(parents=True, exist_ok=True)
    line = "main-captions\tMSRvid\t2012test\t{}\t{}\t{}\t{}\n"
    (folder / "sts-dev.csv").write_text("".join(line.format(i, s, a, b) for i, (a, b, s) in enumerate(STS_DEV)))
    return folder


def tiny_embedder(model_dir):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.prompts import PromptConfig

    torch.manual_seed(0)
    embedder = MLLMEmbedder(load_backbone(str(model_dir)), PromptConfig()).eval()
    return embedder.requires_grad_(False)  # a frozen tower, as in training


@pytest.fixture(scope="module")
def embedder(tiny_smol_llava_dir):
    return tiny_embedder(tiny_smol_llava_dir)


def validate_with_lightning(embedder, sets) -> dict:
    from mmembed.lit.module import EmbeddingLitModule
    from mmembed.objectives import TextPairInfoNCE

    module = EmbeddingLitModule(embedder, TextPairInfoNCE(0.05), optim={"lr": 1e-3}, validation=sets)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    outs = trainer.validate(module, sets.dataloaders(embedder.featurizer), verbose=False)  # one dict per loader
    return {k: float(v) for out in outs for k, v in out.items()}, module


@pytest.mark.slow  # ~40 s on a shared 2-core CPU: 2 Lightning validations + the benchmarks' own runs
def test_validation_equals_each_benchmarks_run_and_embeds_each_image_once(embedder, data_root, tmp_path):
    sets = make_sets(data_root, write_sts(tmp_path / "sts"))
    logged, module = validate_with_lightning(embedder, sets)
    bench = sets.benchmarks()
    flickr = bench["flickr8k_dev"]
    flickr_run = CaptionRetrievalBenchmark(**{**vars(flickr), "max_images": FLICKR_IMAGES}).run(embedder, progress=False)
    cirr_run = bench["cirr_local"].run(embedder, progress=False)
    sts_run = bench["stsb_dev"].run(embedder, progress=False)
    for name, expected in (("stsb_dev", sts_run["metrics"]), ("flickr8k_dev", flickr_run["metrics"]),
                           ("cirr_local", cirr_run["metrics"])):
        for metric, value in expected.items():
            # the same scoring function on the same embeddings; run() reports 4 decimals, Lightning logs float32
            assert logged[f"val/{name}/{metric}"] == pytest.approx(value, abs=5e-5 + 1e-5), (name, metric)
    assert {"val/flickr8k_dev/t2i_R@10", "val/flickr8k_dev/i2t_R@1", "val/cirr_local/R@1",
            "val/cirr_local/Rsubset@1"} <= set(logged)
    assert logged["val/sts_spearman"] == logged["val/stsb_dev/spearman"]
    assert logged["val/flickr8k_dev/inputs"] == FLICKR_IMAGES * 6 and logged["val/cirr_local/inputs"] == 25
    # the frozen tower ran once per distinct image; a second validation is served from the cache
    cache = module._tower_cache.cache
    assert cache is not None and cache.misses > 0
    misses = cache.misses
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    again = {k: v for out in trainer.validate(module, sets.dataloaders(embedder.featurizer), verbose=False)
             for k, v in out.items()}
    assert cache.misses == misses and cache.hits > 0
    assert all(float(again[k]) == pytest.approx(v, abs=1e-6) for k, v in logged.items())
    assert "get_vision_features" not in vars(tower_body(embedder.model))  # routed in for validation only


def _shard_metrics(rank: int, world: int, model_dir, data_root, sts_dir) -> dict:
    """The module's validation path (ValidationTables) over DistributedSampler shards, as Lightning shards them."""
    torch.set_num_threads(1)
    embedder, sets = tiny_embedder(model_dir), make_sets(data_root, sts_dir, cirr=False)
    tables = ValidationTables(sets, torch.device("cpu"))
    collate = ValidationCollator(embedder.featurizer)
    with torch.inference_mode():
        for idx, name in enumerate(sets.names):
            items = sort_by_kind(sets.setup()[name].items)
            sampler = DistributedSampler(items, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
            for batch in DataLoader(items, batch_size=4, sampler=sampler, collate_fn=collate):
                tables.update(idx, batch["groups"], lambda inputs: embedder(**inputs))
    return tables.metrics()


@pytest.mark.slow  # ~30 s: two gloo processes load the tiny model
@pytest.mark.distributed
def test_two_processes_give_the_one_process_numbers(tiny_smol_llava_dir, data_root, tmp_path):
    sts_dir = write_sts(tmp_path / "sts")
    single = _shard_metrics(0, 1, tiny_smol_llava_dir, data_root, sts_dir)
    # 11 STS sentences and 18 Flickr8k inputs: odd counts, so rank 1 gets a padded duplicate of each
    assert single["val/stsb_dev/inputs"] % 2 == 1 and single["val/flickr8k_dev/inputs"] == 18
    ranks = run_distributed(functools.partial(_shard_metrics, model_dir=tiny_smol_llava_dir, data_root=data_root,
                                              sts_dir=sts_dir), tmp_path)
    assert ranks[0] == ranks[1]  # every rank logs the same value
    assert set(ranks[0]) == set(single)
    for key, value in single.items():
        assert ranks[0][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow  # ~60 s: a 2-step text-only training run validating on text and image sets, before and after
def test_a_training_run_logs_every_set_before_and_after(tiny_smol_llava_dir, tmp_path):
    from mmembed.errors import ConfigError
    from mmembed.run.training import run_training
    from tests.pipeline.helpers import compose_train

    args = ["experiment=text_only", "trainer.max_steps=2", "data.batch_size=4", "trainer.val_check_interval=2",
            f"model.name_or_path={tiny_smol_llava_dir}", "val=[stsb_dev,cirr_local]", "val.sets.stsb_dev.limit=8",
            "val.sets.stsb_dev.batch_size=8"]
    with pytest.raises(ConfigError, match="model.text_only=false"):  # image sets need the tower: said before loading
        run_training(compose_train([*args, "model.text_only=true"], tmp_path / "refused"))
    summary = run_training(compose_train(args, tmp_path / "run"))  # text_only keeps the frozen tower for validation
    for logged in (summary["val_before"], summary["metrics"]):
        assert {"val/sts_spearman", "val/stsb_dev/spearman", "val/cirr_local/R@1", "val/cirr_local/Rsubset@1"} <= set(logged)
    assert summary["val_before"]["val/cirr_local/inputs"] == 25


def test_a_partial_pass_scores_what_was_embedded(data_root, tmp_path):
    """A sanity check or limit_val_batches embeds part of a set: its complete pairs / captions are scored, and a set
    with nothing complete gives no metric (no error)."""
    sets = make_sets(data_root, write_sts(tmp_path / "sts"))
    plans = sets.setup()
    torch.manual_seed(0)
    for name, plan in plans.items():
        n = len(plan.items)
        emb = torch.nn.functional.normalize(torch.randn(n, 8), dim=-1)
        full = plan.score(torch.arange(n), emb)
        assert full, name
        assert plan.score(torch.arange(1), emb[:1]) == {}, name  # one input: nothing complete
    sts = plans["stsb_dev"]
    sentences = [item["text"] for item in sts.items]
    first_two = [sentences.index(s) for p in STS_DEV[:3] for s in p[:2]]  # 3 complete pairs
    emb = torch.nn.functional.normalize(torch.randn(len(sentences), 8), dim=-1)
    assert set(sts.score(torch.tensor(first_two), emb[first_two])) == {"spearman"}
