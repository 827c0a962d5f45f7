"""Image-text contrastive training and projector alignment on the tiny SmolLlava.

- the image-text batch ([captions], [images]) gives exactly `info_nce(captions, images)`, and
  GradCache over the two groups gives the plain gradients;
- the captioning loss equals the model's own `labels=` loss, and its gradient reaches the projector only;
- `experiment=align` trains the projector alone and writes a loadable aligned model folder;
- `experiment=image_text` trains LoRA with the vision tower in memory, frozen and in eval mode, then
  (with an `evaluation` suite) evaluates, draws the modality gap and fills TensorBoard's HParams tab.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mmembed.lit.module import EmbeddingLitModule
from mmembed.losses import grad_cache_step, info_nce
from mmembed.models.backbones import load_backbone, projector_module, vision_modules
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.lora import apply_lora
from mmembed.objectives import Captioning, ImageTextInfoNCE, StepContext, TextPairInfoNCE
from mmembed.objectives.target_identity import target_identity
from mmembed.run.training import run_training
from tests.lit.helpers import rel_diff
from tests.pipeline.helpers import compose_train

CAPTIONS = ["A dog runs in the snow.", "Two children play soccer.", "A red car on a street.", "A man plays guitar."]


def _noise_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _lora_embedder(model_dir) -> MLLMEmbedder:
    backbone = load_backbone(str(model_dir))
    torch.manual_seed(0)
    backbone.model = apply_lora(backbone.model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return MLLMEmbedder(backbone)


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _image_rows(images, captions, keys=None) -> list[dict]:
    """Prepared image-text rows (what ImageTextRows gives an objective)."""
    keys = keys or [f"img{i}" for i in range(len(images))]
    return [{"image": img, "image_key": k, "text": t} for img, k, t in zip(images, keys, captions)]


def test_image_text_batch_loss_and_gradcache_match_plain_infonce(tiny_smol_llava_dir):
    embedder = _lora_embedder(tiny_smol_llava_dir)
    objective = ImageTextInfoNCE(temperature=0.05)
    features = objective.features(embedder.featurizer, _image_rows(_noise_images(4), CAPTIONS))
    groups = objective.groups(features)
    assert len(groups) == 2 and "pixel_values" in groups[1] and features["valid"].all()

    out = objective(embedder, features, StepContext())
    with torch.no_grad():
        text, image = embedder.encode_text(CAPTIONS), embedder.encode_image(_noise_images(4))
    assert out.metrics["num_negatives"] == 3
    assert abs(out.loss.item() - info_nce(text, image, temperature=0.05).item()) < 1e-5
    out.loss.backward()
    plain = _grads(embedder)
    assert plain and all("lora_" in n for n in plain)  # the vision tower and projector stay frozen

    embedder.zero_grad(set_to_none=True)
    loss = grad_cache_step(lambda x: embedder(**x), groups,
                           lambda *e: objective.loss(list(e), features, StepContext()).loss, chunk_size=3)
    assert abs(loss.item() - out.loss.item()) < 1e-5
    assert rel_diff(_grads(embedder), plain) < 1e-5


def test_unreadable_and_repeated_images_are_masked_not_dropped(tiny_smol_llava_dir):
    """Every row stays (equal shapes on every rank); the loss is InfoNCE over the usable rows only."""
    embedder = _lora_embedder(tiny_smol_llava_dir)
    objective = ImageTextInfoNCE(temperature=0.05)
    images = _noise_images(5)
    rows = _image_rows([images[0], None, images[2], images[0], images[4]], CAPTIONS + ["A cat sleeps."],
                       keys=["a", "b", "c", "a", "e"])
    features = objective.features(embedder.featurizer, rows)
    assert features["valid"].tolist() == [True, False, True, False, True]
    assert features["images"]["pixel_values"].shape[0] == 5
    # of image "a"'s two captions (rows 0 and 3) the loss keeps the one with the smaller caption id, whatever their
    # order or rank (objectives/image_text.kept_in_global_batch); row 1's image did not open
    kept_a = min((0, 3), key=lambda i: target_identity(rows[i]["text"], None))
    with torch.no_grad():
        out = objective(embedder, features, StepContext())
        usable = sorted([kept_a, 2, 4])
        text = embedder.encode_text([rows[i]["text"] for i in usable])
        image = embedder.encode_image([rows[i]["image"] for i in usable])
    assert out.metrics["num_negatives"] == 2
    assert abs(out.loss.item() - info_nce(text, image, temperature=0.05).item()) < 1e-5


def test_caption_loss_equals_the_models_loss_and_trains_only_the_projector(tiny_smol_llava_dir):
    backbone = load_backbone(str(tiny_smol_llava_dir))
    backbone.model.requires_grad_(False)
    projector_module(backbone.model).requires_grad_(True)
    embedder = MLLMEmbedder(backbone)
    objective = Captioning()
    rows = _image_rows(_noise_images(3), CAPTIONS[:3])
    inputs = objective.features(embedder.featurizer, rows + [{"image": None, "image_key": "x", "text": "lost"}])
    assert inputs["input_ids"].shape[0] == 3  # the unreadable image's row is left out

    out = objective(embedder, inputs, StepContext())
    reference = backbone.model(**inputs).loss
    assert abs(out.loss.item() - reference.item()) < 1e-5
    assert out.metrics["caption_tokens"] == int((inputs["labels"][:, 1:] != -100).sum())
    out.loss.backward()
    trained = {n for n, p in backbone.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith("model.multi_modal_projector.") for n in trained)


def _tiny_overrides(model_dir, tmp_path, validate: bool = True) -> list[str]:
    """validate=False for experiment=align, which validates on nothing (val=none)."""
    sts = ["val.sets.stsb_dev.limit=8", "val.sets.stsb_dev.batch_size=8"] if validate else []
    return [f"model.name_or_path={model_dir}", "trainer.max_steps=2", "data.batch_size=4", *sts,
            f"paths.models_dir={tmp_path / 'models'}", f"paths.cache_dir={tmp_path / 'cache'}"]


# experiment=align's own objective (symmetric caption <-> image InfoNCE) and the captioning option.
@pytest.mark.parametrize("objective, metric", [(None, "train/loss_i2t"), ("captioning", "train/caption_tokens")])
def test_align_trains_only_the_projector_and_writes_a_loadable_model(objective, metric, tiny_smol_llava_dir, tmp_path,
                                                                     data_root):
    from safetensors.torch import load_file

    chosen = [f"objective={objective}"] if objective else []
    cfg = compose_train(["experiment=align", *chosen, *_tiny_overrides(tiny_smol_llava_dir, tmp_path, False)],
                        tmp_path / "run")
    assert cfg.model.vision_feature_cache is True  # the frozen tower's maps are cached by default
    summary = run_training(cfg)
    assert summary["global_step"] == 2 and summary["cost"]["vision_tower_in_memory"] is True
    assert np.isfinite(summary["metrics"]["train/loss"]) and summary["metrics"][metric] > 0
    assert list((tmp_path / "cache" / "vision_features").rglob("*.safetensors"))  # filled on first sight

    aligned = tmp_path / "models" / "smol_llava_aligned"
    before, after = load_file(str(tiny_smol_llava_dir / "model.safetensors")), load_file(str(aligned / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    provenance = json.loads((aligned / "mmembed_provenance.json").read_text())
    assert provenance["global_step"] == 2 and provenance["sources"][0]["split"] == "train"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all("multi_modal_projector" in k for k in ckpt["state_dict"])
    # `model=smol_llava_aligned` names the folder, and the backbone loads it with images enabled.
    cfg = compose_train(["model=smol_llava_aligned", f"paths.models_dir={tmp_path / 'models'}"], tmp_path)
    assert load_backbone(cfg.model.name_or_path).supports_images


def test_missing_aligned_model_says_which_command_writes_it(tmp_path):
    from mmembed.models.backbones import BackboneLoadError
    from tests.pipeline.helpers import build_embedder

    cfg = compose_train(["model=smol_llava_aligned", f"paths.models_dir={tmp_path}"], tmp_path)
    try:
        build_embedder(cfg)
    except BackboneLoadError as err:
        assert "does not exist" in str(err) and "experiment=align" in str(err)
    else:
        raise AssertionError("a missing aligned model folder must raise BackboneLoadError")


@pytest.mark.slow  # trains, then evaluates the image-text suite
def test_image_text_arm_trains_lora_then_evaluates_and_draws_the_gap(tiny_smol_llava_dir, tmp_path, data_root):
    held_out = ["evaluation.benchmarks.flickr8k_1k_test.max_images=8", "evaluation.modality_gap.max_images=8"]
    drop = [f"~evaluation.benchmarks.{name}" for name in ("sts12", "stsb", "sickr", "cirr_local", "imagenet1k")]
    cfg = compose_train(
        ["experiment=image_text", "eval@evaluation=local_heldout", "evaluation.progress=false",
         *_tiny_overrides(tiny_smol_llava_dir, tmp_path), *held_out, *drop],
        tmp_path,
    )
    summary = run_training(cfg)
    assert summary["text_only"] is False and summary["cost"]["vision_tower_in_memory"] is True
    assert summary["objective"] == "ImageTextInfoNCE"
    adapter_dir = tmp_path / "adapters" / "last"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"

    metrics = summary["evaluation"]["metrics"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["benchmarks"]["flickr8k_1k_test"]["protocol"]["images"] == 8
    # The reported recall is the brute-force recall of the trained adapter's embeddings.
    from mmembed.data.evalsets.captions import read_caption_config
    from mmembed.evaluation.modality_gap import gap_stats
    from mmembed.inference import Embedder

    bench = read_caption_config(OmegaConf.to_container(cfg.evaluation.benchmarks.flickr8k_1k_test, resolve=True))
    trained = Embedder.from_pretrained(tiny_smol_llava_dir, adapter=adapter_dir)
    text = trained.encode(texts=list(bench.captions))
    image = trained.encode(images=[str(p) for p in bench.images])
    best = (text @ image.T).argmax(dim=1)
    expected = 100.0 * (best == torch.tensor(bench.caption_image)).float().mean().item()
    assert abs(metrics["eval/flickr8k_1k_test/t2i_R@1"] - expected) < 1e-6
    after = gap_stats(*_gap_pairs(trained, cfg))
    assert abs(metrics["gap/centroid_distance_after"] - after["centroid_distance"]) < 1e-5
    assert (tmp_path / "eval" / "modality_gap.png").stat().st_size > 10_000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert "eval/flickr8k_1k_test/t2i_R@10" in events.Tags()["scalars"]
    assert "modality_gap" in events.Tags()["images"]
    # The HParams tab: one experiment whose metric columns include the evaluation numbers.
    hparams = {
        value.tag: HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for file in (tmp_path / "tensorboard").glob("events.out.tfevents.*")
        for event in EventFileLoader(str(file)).Load()
        for value in event.summary.value
        if value.metadata.plugin_data.plugin_name == "hparams"
    }
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    columns = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"eval/flickr8k_1k_test/t2i_R@10", "gap/centroid_distance_after", "train/loss"} <= columns
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["objective._target_"].string_value == "mmembed.objectives.ImageTextInfoNCE"


def _gap_pairs(embedder, cfg):
    from mmembed.data.evalsets.captions import read_caption_config
    from mmembed.evaluation.modality_gap import pair_embeddings

    gap_cfg = OmegaConf.to_container(cfg.evaluation.modality_gap, resolve=True)
    return pair_embeddings(embedder, read_caption_config(gap_cfg), 16, gap_cfg.get("max_pairs"), False)


def test_vision_modules_stay_in_eval_mode_while_training(tiny_smol_llava_dir):
    embedder = _lora_embedder(tiny_smol_llava_dir)
    module = EmbeddingLitModule(embedder, TextPairInfoNCE(), optim={"lr": 1e-3})
    module.on_train_epoch_start()
    assert embedder.training
    assert vision_modules(embedder.model) and not any(m.training for v in vision_modules(embedder.model).values() for m in v.modules())


def test_unreadable_training_images_are_skipped_and_logged(tiny_smol_llava_dir, tmp_path):
    rows = []
    for i, image in enumerate(_noise_images(4)):
        image.save(tmp_path / f"good{i}.png")
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
        rows += [{"image": f"good{i}.png", "text": CAPTIONS[i]}, {"image": f"bad{i}.jpg", "text": "never seen"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_train(
        ["experiment=image_text", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=1", "data.batch_size=8", "heldout=none",
         f"data.sources=[{{format:pairs,file:{tmp_path / 'pairs.jsonl'}}}]", "val=none",
         "validate_before_training=false"],
        tmp_path / "run",
    )
    summary = run_training(cfg)
    assert summary["data_quality"] == [{"epoch": 0, "skipped": 4, "truncated": 0}]
    # 8 rows, 4 unreadable images masked out: each caption competes with the other 3 readable images.
    assert summary["metrics"]["data/skipped"] == 4 and summary["metrics"]["train/num_negatives"] == 3


@pytest.mark.slow  # three training runs
def test_tower_feature_cache_gives_the_same_alignment_and_skips_the_tower_on_a_rerun(tiny_smol_llava_dir, tmp_path,
                                                                                      data_root):
    """experiment=align with model.vision_feature_cache=true: the same losses and aligned weights as without
    it, the tower runs once per distinct image, and a second run reads every map from the disk cache."""
    from safetensors.torch import load_file

    import mmembed.models.vision_feature_cache as vfc

    installed = []
    real_install = vfc.install_tower_cache

    def spy(model, cache_dir=None):
        installed.append(real_install(model, cache_dir))
        return installed[-1]

    vfc.install_tower_cache = spy
    try:
        results = {}
        for name, cached in (("plain", False), ("cached", True), ("rerun", True)):
            overrides = ["experiment=align", *_tiny_overrides(tiny_smol_llava_dir, tmp_path / name, False),
                         f"model.vision_feature_cache={str(cached).lower()}", f"paths.cache_dir={tmp_path / 'cache'}",
                         "trainer.max_steps=3", "data.train_limit=8"]  # 8 rows, batch 4: step 3 repeats images
            summary = run_training(compose_train(overrides, tmp_path / name / "run"))
            aligned = load_file(str(tmp_path / name / "models" / "smol_llava_aligned" / "model.safetensors"))
            results[name] = (summary["metrics"]["train/loss"], aligned)
    finally:
        vfc.install_tower_cache = real_install
    for name in ("cached", "rerun"):
        assert results[name][0] == pytest.approx(results["plain"][0], abs=1e-6)
        assert all(torch.allclose(results[name][1][k], results["plain"][1][k], atol=1e-6) for k in results["plain"][1])
    first, rerun = installed
    distinct = first.misses
    assert 0 < distinct <= 8 and first.hits == 12 - distinct  # 3 steps x 4 rows; the third step repeats
    assert first.memory is not None and len(first.memory) == distinct
    assert rerun.misses == 0 and rerun.hits == 12  # everything from the disk cache: the tower never ran
    assert len(list((tmp_path / "cache" / "vision_features").rglob("*.safetensors"))) == distinct


def test_tower_feature_cache_refuses_a_tower_that_trains(tiny_smol_llava_dir, tmp_path):
    from mmembed.errors import ConfigError
    from mmembed.models.vision_feature_cache import install_tower_cache

    backbone = load_backbone(str(tiny_smol_llava_dir))
    cache = install_tower_cache(backbone.model, tmp_path)
    pixels = torch.rand(2, 3, 32, 32)
    backbone.model.eval()
    with pytest.raises(ConfigError, match="frozen vision tower"):
        cache(pixels)  # every parameter still requires grad
    backbone.model.requires_grad_(False)
    backbone.model.model.vision_tower.train()
    with pytest.raises(ConfigError, match="eval mode"):
        cache(pixels)
    assert set(backbone.model.state_dict()) == set(load_backbone(str(tiny_smol_llava_dir)).model.state_dict())
