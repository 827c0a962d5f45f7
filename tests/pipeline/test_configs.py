"""Every experiment composes and instantiates; sweeps run end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.pipeline.helpers import compose_train, compose_train_with_hydra, run_train_cli

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_there_are_experiments():
    assert {"text_only", "e5v_paper", "align", "image_text"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.model.name_or_path
    objective = instantiate(cfg.objective, _convert_="all")
    datamodule = instantiate(cfg.data, featurizer=None, objective=objective)
    assert datamodule.batch_size == cfg.data.batch_size
    # the experiment's data gives the rows its objective reads
    assert datamodule.row_preparer_kind == objective.row_kind
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    assert callbacks
    trainer_cfg = dict(cfg.trainer)
    if trainer_cfg.get("accelerator") == "gpu":  # GPU experiments are checked for shape, not run, on CPU
        trainer_cfg.update(accelerator="cpu", precision="32-true")
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_default_config_is_the_text_only_recipe(tmp_path):
    cfg = compose_train(["experiment=text_only"], tmp_path)
    # the label-word base, its frozen tower kept to embed the validation images; training reads text only
    assert cfg.model.name_or_path == "default:label_words" and cfg.model.text_only is False
    assert list(cfg.val.sets) == ["stsb_dev", "flickr8k_dev"]
    assert cfg.data.source._target_ == "mmembed.data.sources.text_pairs.TextPairSource"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 16, 0.05)
    assert cfg.objective.temperature == 0.05
    assert cfg.data.max_text_tokens == 32
    assert cfg.data.train_files[0].endswith("nli/snli_dev_simcse_triplets.csv")


def test_experiment_and_debug_files_override_root_values(tmp_path):
    assert compose_train(["experiment=text_only"], tmp_path).task_name == "text_only"
    assert compose_train([], tmp_path).task_name == "train"
    debug = compose_train(["experiment=text_only", "debug=fast_dev_run"], tmp_path)
    assert debug.task_name == "debug" and debug.validate_before_training is False


@pytest.mark.parametrize("experiment", ["mmgem", "mmgem_regions"])
def test_an_arm_zeroes_one_weight_and_names_the_run_folder(experiment, tmp_path):
    """MM-GEM's arms (conf/arm/) differ from the joint run in one objective weight, the parts that train (what
    the arm's objective reaches: a part without a gradient fails under DDP) and the log folder only."""
    def without_arm(cfg):
        plain = OmegaConf.to_container(cfg, resolve=True)
        trained = plain["model"]["extension"].pop("train")
        return plain.pop("task_name"), plain.pop("arm_suffix"), plain["objective"].pop("weights"), list(trained), plain

    joint = without_arm(compose_train([f"experiment={experiment}"], tmp_path))
    assert joint[:4] == (experiment, "", {"image_text": 1.0, "captioning": 1.0}, ["emb", "h1", "h2"])
    arms = {"embedding_only": ({"image_text": 1.0, "captioning": 0.0}, ["emb", "h1"]),
            "captioning_only": ({"image_text": 0.0, "captioning": 1.0}, ["h2"])}
    for arm, (weights, trained) in arms.items():
        task_name, suffix, arm_weights, arm_trained, rest = without_arm(
            compose_train([f"experiment={experiment}", f"arm={arm}"], tmp_path))
        assert (task_name, suffix, arm_weights, arm_trained) == (f"{experiment}_{arm}", f"_{arm}", weights, trained)
        assert rest == joint[4]


# Each fixed grid of conf/ablation/ with the experiment its usage line names (the conflict and modality grids
# sweep the experiment themselves).
ABLATION_GRIDS = {"modality_ablation": [], "mmgem_conflict": [], "mmgem_region_conflict": [],
                  "temperature": ["experiment=text_only"], "unime_beta_k": ["experiment=unime_stage2"],
                  "unime_objective": ["experiment=unime_stage1"], "unime_tau": ["experiment=unime_stage1"],
                  "text_source": []}


def test_every_ablation_grid_is_listed():
    assert set(ABLATION_GRIDS) == {p.stem for p in (REPO / "conf" / "ablation").glob("*.yaml")}


@pytest.mark.parametrize("grid", sorted(ABLATION_GRIDS))
def test_ablation_grid_is_a_multirun_whose_first_job_composes(grid, tmp_path):
    cfg = compose_train_with_hydra([f"ablation={grid}", *ABLATION_GRIDS[grid]])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    first = {key: str(values).split(",")[0] for key, values in cfg.hydra.sweeper.params.items()}
    assert first
    # The job the basic sweeper starts with: each parameter at its first value, a group choice or a setting.
    job = compose_train_with_hydra([f"ablation={grid}", *ABLATION_GRIDS[grid], *(f"{k}={v}" for k, v in first.items())])
    for key, value in first.items():
        chosen = job.hydra.runtime.choices.get(key, OmegaConf.select(job, key))
        assert str(chosen) == value, key


def test_text_source_grid_compares_nli_and_caption_pairs_with_the_evaluation_captions_held_out(tmp_path):
    cfg = compose_train_with_hydra(["ablation=text_source"])
    assert dict(cfg.hydra.sweeper.params) == {"experiment": "text_only", "data": "nli,flickr30k_caption_pairs",
                                              "seed": "1,2,3"}
    for data in ("nli", "flickr30k_caption_pairs"):
        job = compose_train_with_hydra(["ablation=text_source", "experiment=text_only", f"data={data}"])
        # every image benchmark of the suite is a held-out source of training (SNLI's premises are Flickr30K captions)
        assert set(job.evaluation.benchmarks) - {"stsb"} <= {"flickr8k_1k_test", "flickr30k_test_local", "coco80_local"}
        assert {"flickr8k_test", "flickr30k_test_local", "coco80_local", "stsb_test"} <= set(job.heldout.sources)
        assert job.model.text_only and list(job.val.sets) == ["stsb_dev"] and job.trainer.max_steps == 40


def test_mmgem_conflict_grids_sweep_the_three_arms_in_table_order(tmp_path):
    for grid, experiment in (("mmgem_conflict", "mmgem"), ("mmgem_region_conflict", "mmgem_regions")):
        cfg = compose_train_with_hydra([f"ablation={grid}"])
        assert dict(cfg.hydra.sweeper.params) == {"experiment": experiment,
                                                  "arm": "embedding_only,captioning_only,joint"}
        assert cfg.task_name == grid  # sweeps write logs/<grid>/multiruns/<time>/<job>


@pytest.mark.slow  # a src/train.py process (Python, Hydra and Lightning start-up)
def test_missing_data_names_the_setting(tiny_smol_llava_dir, tmp_path):
    result = run_train_cli(
        ["experiment=text_only", f"model.name_or_path={tiny_smol_llava_dir}", f"paths.data_root={tmp_path}/nowhere",
         f"hydra.run.dir={tmp_path}/run"]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert "MMEMBED_DATA" in result.stderr + result.stdout


@pytest.mark.slow
def test_sweep_of_all_experiments_with_fast_dev_run(tiny_smol_llava_dir, tmp_path):
    # Text-pair experiments get the local SNLI file (e5v_paper names SimCSE's full file, absent here);
    # image-text experiments read the shared Flickr8k/COCO images.
    # unime_stage1 first builds its teacher's embeddings of the whole training file (minutes with mpnet on
    # this CPU): it trains end to end in tests/objectives/test_distillation_objective.py on a small file.
    # unime_stage2 reads MMEB-format files (the mini-MMEB build, absent from a fresh machine): it trains
    # end to end, plain and under GradCache, in tests/objectives/test_hard_negative_objective.py.
    swept = [e for e in EXPERIMENTS if e not in ("unime_stage1", "unime_stage2")]
    text = [e for e in swept if "train_files" in compose_train([f"experiment={e}"], tmp_path).data]
    image = [e for e in swept if e not in text]
    assert text and image
    # {group: (sweep overrides, number of jobs)}; MM-GEM's recipes also run their two single-part arms.
    groups = {"text": ([f"experiment={','.join(text)}",
                        f"data.train_files=[{REPO.parent}/shared/data/nli/snli_dev_simcse_triplets.csv]"], len(text)),
              "image": ([f"experiment={','.join(image)}"], len(image)),
              "arms": (["experiment=mmgem,mmgem_regions", "arm=embedding_only,captioning_only"], 4)}
    for name, (sweep, jobs) in groups.items():
        result = run_train_cli(
            ["-m", *sweep, "debug=fast_dev_run", f"model.name_or_path={tiny_smol_llava_dir}",
             "trainer.accelerator=cpu", "trainer.precision=32-true", "model.dtype=float32", "data.train_limit=64",
             "data.batch_size=4", f"paths.models_dir={tmp_path}/models", f"paths.cache_dir={tmp_path}/cache",
             f"hydra.sweep.dir={tmp_path}/{name}"],
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summaries = sorted(Path(tmp_path, name).glob("*/train_summary.json"))
        assert len(summaries) == jobs
        assert all(json.loads(s.read_text())["global_step"] == 1 for s in summaries)


@pytest.mark.slow
def test_multirun_over_temperatures(tiny_smol_llava_dir, tmp_path):
    result = run_train_cli(
        ["-m", "experiment=text_only", "objective.temperature=0.02,0.05", "debug=fast_dev_run",
         f"model.name_or_path={tiny_smol_llava_dir}", "data.train_limit=64", f"hydra.sweep.dir={tmp_path}/sweep"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(Path(tmp_path, "sweep").glob("*/.hydra/overrides.yaml"))
    assert len(runs) == 2
    assert ["objective.temperature=0.02" in r.read_text() for r in runs] == [True, False]
