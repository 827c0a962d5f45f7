"""experiments/three_papers.py: the recipes' command lines (stage 2 from stage 1's adapter), the table's
derived cells, resuming and its refusals, and one end-to-end table on the tiny model."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def tp():
    return load_script("experiments/three_papers.py")


def test_stage_two_starts_from_stage_one_and_every_run_gets_the_suite_and_budget(tp, tmp_path):
    stage1, stage2 = tp.ROWS["unime_stage1_2"].stages
    assert stage1 is tp.ROWS["unime_stage1"].stages[0]  # one stage-1 run serves both rows
    cmd = tp.stage_command(stage2, tmp_path, 40, 50, ["seed=3"], {"unime_stage1_2": ["lora.r=8"]})
    assert cmd[:2] == [sys.executable, str(REPO / "src" / "train.py")]
    assert cmd[2:] == [f"hydra.run.dir={tmp_path / 'unime_stage1_2'}", "experiment=unime_stage2",
                       "eval@evaluation=three_papers", "model.vision_feature_cache=true", "trainer.max_steps=40",
                       f"adapter={tmp_path / 'unime_stage1' / 'adapters' / 'last'}",
                       "evaluation.benchmarks.mini_mmeb.max_queries=50", "seed=3", "lora.r=8"]
    # Only MM-GEM captions; text-only recipes do not get the vision-feature cache; no budget: the recipe's own.
    assert "eval@evaluation=three_papers_captions" in tp.stage_command(tp.ROWS["mmgem"].stages[0], tmp_path, None, None, [])
    text_only = tp.stage_command(tp.ROWS["text_only"].stages[0], tmp_path, None, None, [])
    assert text_only[2:] == [f"hydra.run.dir={tmp_path / 'text_only'}", "experiment=text_only",
                             "eval@evaluation=three_papers"]
    base = tp.stage_command(tp.ROWS["base"].stages[0], tmp_path, 40, 7, [])
    assert base[1].endswith("eval.py") and base[2:] == [f"hydra.run.dir={tmp_path / 'base'}", "eval=three_papers",
                                                         "eval.benchmarks.mini_mmeb.max_queries=7"]


def _summary(folder: Path, wall: float, steps: int, metrics: dict | None) -> None:
    folder.mkdir(parents=True)
    summary = {"wall_time_s": wall, "global_step": steps, "cost": {"sec_per_step": wall / steps}}
    if metrics is not None:
        summary["evaluation"] = {"metrics": metrics}
    (folder / "train_summary.json").write_text(json.dumps(summary))


def test_row_cells_sts_mean_summed_wall_time_and_unfinished_rows(tp, tmp_path):
    stage1 = {"eval/sts12/spearman": 60.0, "eval/stsb/spearman": 70.0, "eval/sickr/spearman": 65.0}
    stage2 = {"eval/sts12/spearman": 61.0, "eval/stsb/spearman": 72.0, "eval/sickr/spearman": 68.5,
              "eval/flickr8k_1k_test/t2i_R@1": 1.5, "eval/flickr8k_1k_test/t2i_R@10": 9.25,
              "eval/flickr8k_1k_test/i2t_R@1": 2.0, "eval/flickr8k_1k_test/i2t_R@10": 11.0,
              "eval/mini_mmeb/overall": 30.125}
    _summary(tmp_path / "unime_stage1", 600.0, 40, stage1)
    _summary(tmp_path / "unime_stage1_2", 300.0, 20, stage2)
    _summary(tmp_path / "mmgem", 120.0, 10, None)  # trained; its evaluation never finished
    records = [tp.row_record(n, tp.ROWS[n], tmp_path) for n in ("unime_stage1", "unime_stage1_2", "mmgem")]
    assert records[0]["metrics"]["sts_avg"] == pytest.approx(65.0)
    assert records[1]["metrics"]["sts_avg"] == pytest.approx((61.0 + 72.0 + 68.5) / 3)
    assert records[1]["cost"] == {"wall_time_s": 900.0, "steps": "40+20"}  # both stages' training
    assert not records[2]["finished"]
    lines = tp.build_table(records).splitlines()
    assert lines[0] == ("| recipe | paper | STS avg | STS-B | t2i R@1 | t2i R@10 | i2t R@1 | i2t R@10 | "
                        "mini-MMEB overall | CIDEr | train wall (min) | steps |")
    assert lines[3] == "| UniME stage 1 + 2 | UniME | 67.17 | 72.00 | 1.50 | 9.25 | 2.00 | 11.00 | 30.12 | - | 15.0 | 40+20 |"
    assert lines[4].startswith("| MM-GEM joint | MM-GEM | not finished | -")
    mmeb = tp.build_mmeb_table(records).splitlines()
    assert mmeb[0] == "| recipe | classification | VQA | retrieval | grounding | IND | OOD | overall |"
    assert mmeb[2] == "| UniME stage 1 | - | - | - | - | - | - | - |"
    assert mmeb[3] == "| UniME stage 1 + 2 | - | - | - | - | - | - | 30.12 |"
    assert len(mmeb) == 4  # the unfinished row has no breakdown


def test_seeds_give_mean_and_sample_sd_per_cell_over_the_seeds_whose_row_finished(tp, tmp_path):
    # seed 1 and 2 finished text_only, seed 3 only trained it (no evaluation): mean and sd over seeds 1, 2
    for seed, stsb, r10 in ((1, 70.0, 10.0), (2, 74.0, 13.0)):
        _summary(tmp_path / f"seed{seed}" / "text_only", 60.0 * seed, 40,
                 {"eval/stsb/spearman": stsb, f"eval/{tp.RETRIEVAL}/t2i_R@10": r10, "eval/mini_mmeb/overall": 20.0})
    _summary(tmp_path / "seed3" / "text_only", 500.0, 40, None)
    assert tp.main(["--rows", "text_only", "unime_stage1", "--table-only", "--seeds", "1", "2", "3",
                    "--out", str(tmp_path), "--table", str(tmp_path / "t")]) == 0
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert "mean ± sample sd over seeds [1, 2, 3]" in lines[0]
    assert lines[2].endswith("| train wall (min) | steps | seeds |")
    # sd of (70, 74) = 2.83; of (10, 13) = 2.12; of (20, 20) = 0; wall (60 + 120) / 2 s = 1.5 min
    assert lines[4] == ("| E5-V text_only | E5-V | - | 72.00 ± 2.83 | - | 11.50 ± 2.12 | - | - | 20.00 ± 0.00 | - "
                        "| 1.5 | 40 | 1, 2 |")
    assert lines[5].startswith("| UniME stage 1 | UniME | not finished |") and lines[5].endswith("| - |")
    record = json.loads((tmp_path / "t.json").read_text())[0]
    assert record["seeds"] == [1, 2] and record["per_seed"]["3"]["finished"] is False
    assert record["sd"]["eval/stsb/spearman"] == pytest.approx(8 ** 0.5)


def test_each_seed_runs_in_its_own_folder_with_its_seed_before_the_runs_own_overrides(tp, tmp_path, monkeypatch):
    commands = []

    def fake_run(stage, command, out, force, position):
        commands.append((out.name, command[2:]))
        return True
    monkeypatch.setattr(tp, "ensure_mini_mmeb", lambda *a: None)
    monkeypatch.setattr(tp, "_run_stage", fake_run)
    tp.main(["--rows", "text_only", "--seeds", "4", "5", "--steps", "3", "--out", str(tmp_path),
             "--table", str(tmp_path / "t"), "--set", "text_only:seed=9", "--", "model=smol_llava_label_words"])
    assert commands == [(f"seed{s}", [f"hydra.run.dir={tmp_path / f'seed{s}' / 'text_only'}", "experiment=text_only",
                                      "eval@evaluation=three_papers", "trainer.max_steps=3",
                                      "model=smol_llava_label_words", f"seed={s}", "seed=9"]) for s in (4, 5)]


def test_a_changed_command_in_a_finished_folder_is_refused_and_bad_arguments_exit_2(tp, tmp_path, capsys):
    stage = tp.ROWS["text_only"].stages[0]
    _summary(tmp_path / "text_only", 60.0, 2, {"eval/stsb/spearman": 50.0})
    (tmp_path / "text_only" / "three_papers_command.json").write_text(json.dumps(["train.py", "trainer.max_steps=2"]))
    with pytest.raises(tp.TableError, match="holds a finished run of another command"):
        tp._run_stage(stage, [sys.executable, "train.py", "trainer.max_steps=40"], tmp_path, False, "[1/1]")
    # the same command: reused, nothing run (python would fail on a train.py that does not exist here)
    assert tp._run_stage(stage, [sys.executable, "train.py", "trainer.max_steps=2"], tmp_path, False, "[1/1]")
    assert "finished before, reused" in capsys.readouterr().out
    assert tp.main(["--rows", "text_only", "e5v", "--table-only"]) == 2
    assert "unknown row(s) ['e5v']" in capsys.readouterr().err
    assert tp.main(["--rows", "text_only", "--set", "mmgem:seed=1", "--out", str(tmp_path),
                    "--table", str(tmp_path / "t")]) == 2
    assert "no run 'mmgem' in this table" in capsys.readouterr().err


def test_a_failed_stage_one_skips_stage_two_and_the_table_says_not_finished(tp, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tp, "ensure_mini_mmeb", lambda *a: None)
    code = tp.main(["--rows", "unime_stage1_2", "--out", str(tmp_path / "runs"), "--table", str(tmp_path / "table"),
                    "--", "no_such_key_anywhere=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "unime_stage1: FAILED" in err and "unime_stage1_2: skipped, unime_stage1 failed" in err
    assert "| UniME stage 1 + 2 | UniME | not finished |" in (tmp_path / "table.md").read_text()


TRIPLETS = [("A man plays a guitar.", "A man makes music.", "A woman sleeps."),
            ("Two dogs run in snow.", "Animals are outside.", "Two cats nap."),
            ("A child eats ice cream.", "A kid has dessert.", "A child cries."),
            ("A woman rides a bike.", "A person cycles.", "A woman drives."),
            ("People wait for a train.", "A crowd at a station.", "The station is empty."),
            ("A chef chops onions.", "Someone cooks.", "A chef swims."),
            ("An old man reads.", "A man is reading.", "An old man runs."),
            ("Kids play football.", "Children play a sport.", "Kids are asleep.")]


@pytest.mark.slow
def test_the_table_trains_stage_one_then_stage_two_from_its_adapter_and_tabulates(tp, tiny_smol_llava_dir, tmp_path):
    """Rows text_only and unime_stage1_2 on the tiny model, 2 steps each, a small suite: four real runs."""
    from mmembed.prep.mini_mmeb.build import VERSION, build_mini_mmeb

    cache = tmp_path / "cache"
    build_mini_mmeb(SHARED, cache / VERSION, limit=4)
    triplets = tmp_path / "triplets.csv"
    with open(triplets, "w", newline="") as f:
        csv.writer(f).writerows([("sent0", "sent1", "hard_neg"), *TRIPLETS])
    small = ["evaluation.benchmarks.flickr8k_1k_test.max_images=6", "~evaluation.benchmarks.sts12",
             "~evaluation.benchmarks.sickr", "evaluation.benchmarks.stsb.split=dev", "evaluation.progress=false",
             f"model.name_or_path={tiny_smol_llava_dir}", "data.batch_size=4", "val=none",
             "validate_before_training=false", "~logger", f"paths.cache_dir={cache}"]
    text_data = [f"data.train_files=[{triplets}]"]
    env = {"MMEMBED_CACHE": str(cache)}
    os.environ.update(env)
    try:
        code = tp.main(["--rows", "text_only", "unime_stage1_2", "--steps", "2", "--mmeb-queries", "3",
                        "--out", str(tmp_path / "runs"), "--table", str(tmp_path / "table"),
                        "--set", *(f"text_only:{o}" for o in text_data), *(f"unime_stage1:{o}" for o in text_data),
                        "unime_stage1:objective.teacher=all-MiniLM-L6-v2", "unime_stage1_2:objective.k=2",
                        "--", *small])
    finally:
        os.environ.pop("MMEMBED_CACHE")
    runs = tmp_path / "runs"
    assert code == 0, "\n".join(p.read_text()[-3000:] for p in runs.glob("*.console.log"))
    stage2_cmd = json.loads((runs / "unime_stage1_2" / "three_papers_command.json").read_text())
    assert f"adapter={runs / 'unime_stage1' / 'adapters' / 'last'}" in stage2_cmd
    assert (runs / "unime_stage1" / "adapters" / "last" / "adapter_config.json").is_file()
    # stage 2's adapter is a delta from base + stage 1: it carries stage 1's, which evaluation loads first
    stage1_weights = (runs / "unime_stage1" / "adapters" / "last" / "adapter_model.safetensors").read_bytes()
    carried = runs / "unime_stage1_2" / "adapters" / "last" / "base_adapter" / "adapter_model.safetensors"
    assert carried.read_bytes() == stage1_weights
    records = {r["row"]: r for r in json.loads((tmp_path / "table.json").read_text())}
    assert records["unime_stage1_2"]["cost"]["steps"] == "2+2"
    summaries = [json.loads((runs / r / "train_summary.json").read_text()) for r in ("unime_stage1", "unime_stage1_2")]
    assert records["unime_stage1_2"]["cost"]["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in summaries))
    assert summaries[1]["objective"] == "HardNegativeNCE" and summaries[0]["objective"] == "RelationalDistillation"
    metrics = records["unime_stage1_2"]["metrics"]
    assert metrics == summaries[1]["evaluation"]["metrics"] | {"sts_avg": None}  # sts12 / sickr were dropped
    assert {"eval/mini_mmeb/overall", "eval/flickr8k_1k_test/t2i_R@10", "eval/stsb/spearman"} <= set(metrics)
    table = (tmp_path / "table.md").read_text()
    assert "| E5-V text_only | E5-V | - |" in table and "| UniME stage 1 + 2 | UniME | - |" in table


def test_mmgem_claim_rows_compose_to_one_objective_or_the_unpooled_prefix(tp, tmp_path):
    """The MM-GEM rows answer the paper's two claims: each objective alone (one weight zeroed, only what it
    reaches trains) and the 7x7 map as the caption prefix; the rows that caption get the captions suite."""
    from tests.pipeline.helpers import compose_train

    expected = {"mmgem": ({"image_text": 1.0, "captioning": 1.0}, 3, "three_papers_captions"),
                "mmgem_embedding_only": ({"image_text": 1.0, "captioning": 0.0}, 3, "three_papers"),
                "mmgem_captioning_only": ({"image_text": 0.0, "captioning": 1.0}, 3, "three_papers_captions"),
                "mmgem_grid7": ({"image_text": 1.0, "captioning": 1.0}, 7, "three_papers_captions")}
    for name, (weights, grid, suite) in expected.items():
        (stage,) = tp.ROWS[name].stages
        command = tp.stage_command(stage, tmp_path, 40, None, ["seed=2"])
        assert f"eval@evaluation={suite}" in command and tp.ROWS[name].captions == (suite != "three_papers")
        cfg = compose_train([a for a in command[2:] if not a.startswith(("hydra.", "eval@"))], tmp_path)
        assert dict(cfg.objective.weights) == weights and cfg.model.extension.grid == grid
        assert (cfg.trainer.max_steps, cfg.seed, cfg.model.vision_feature_cache) == (40, 2, True)


def test_the_base_row_gets_only_the_overrides_eval_has_and_is_evaluated_once_over_seeds(tp, tmp_path, monkeypatch):
    commands = []

    def fake_run(stage, command, out, force, position):
        commands.append((out, command[1:]))
        return True
    monkeypatch.setattr(tp, "ensure_mini_mmeb", lambda *a: None)
    monkeypatch.setattr(tp, "_run_stage", fake_run)
    tp.main(["--rows", "base", "text_only", "--seeds", "1", "2", "--steps", "3", "--mmeb-queries", "9",
             "--out", str(tmp_path), "--table", str(tmp_path / "t"), "--",
             "model=smol_llava_label_words", "val=none", "validate_before_training=false", "trainer.max_epochs=1",
             "evaluation.benchmarks.sts12=null", "+prompt.text=x"])
    base = [c for out, c in commands if c[0].endswith("eval.py")]
    # once, in <out>/base (no seed folder), with the training-only keys left out and `evaluation.` as `eval.`
    assert base == [[str(REPO / "src" / "eval.py"), f"hydra.run.dir={tmp_path / 'base'}", "eval=three_papers",
                     "eval.benchmarks.mini_mmeb.max_queries=9", "model=smol_llava_label_words",
                     "eval.benchmarks.sts12=null", "+prompt.text=x"]]
    trained = [(out.name, c[-2:]) for out, c in commands if c[0].endswith("train.py")]
    assert trained == [("seed1", ["+prompt.text=x", "seed=1"]), ("seed2", ["+prompt.text=x", "seed=2"])]
    # the table: the base row's one evaluation, no seeds and no sd; a missing one is "not finished"
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "base" / "results.json").write_text(json.dumps(
        {"benchmarks": {"stsb": {"metrics": {"spearman": 41.5}}}}))
    record = tp.seeded_record("base", tp.ROWS["base"], tmp_path, [1, 2])
    assert record["finished"] and record["seeds"] == [] and record["sd"] == {}
    assert record["metrics"]["eval/stsb/spearman"] == 41.5
    assert not tp.seeded_record("base", tp.ROWS["base"], tmp_path / "elsewhere", [1])["finished"]


def test_an_earlier_tables_finished_seeds_are_kept_not_rerun_and_the_table_says_so(tp, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(tp, "ensure_mini_mmeb", lambda *a: None)
    monkeypatch.setattr(tp, "_run_stage", lambda stage, command, out, force, position: ran.append(
        (out.name, stage.run)) or True)
    earlier = tmp_path / "earlier.json"
    one = {"row": "text_only", "label": "E5-V text_only", "paper": "E5-V", "runs": ["elsewhere/seed1/text_only"],
           "finished": True, "metrics": {"eval/stsb/spearman": 60.0}, "cost": {"wall_time_s": 60.0, "steps": "40"}}
    earlier.write_text(json.dumps([
        {"row": "text_only", "per_seed": {"1": one, "2": {**one, "metrics": {"eval/stsb/spearman": 64.0}},
                                          "3": {"finished": False, "metrics": {}, "cost": {}}}},
        {"row": "base", "label": "untrained base", "paper": "-", "runs": ["elsewhere/base"], "finished": True,
         "metrics": {"eval/stsb/spearman": 30.0}, "cost": {"wall_time_s": 0.0, "steps": "0"}, "seeds": [], "sd": {}}]))
    out = tmp_path / "runs"
    args = ["--rows", "base", "text_only", "unime_stage1_2", "--seeds", "1", "2", "3", "--out", str(out),
            "--table", str(tmp_path / "t"), "--keep-from", str(earlier)]
    tp.main(args)
    # text_only seeds 1-2 and the base row are kept; seed 3 and every UniME stage run
    assert ran == [("seed1", "unime_stage1"), ("seed1", "unime_stage1_2"), ("seed2", "unime_stage1"),
                   ("seed2", "unime_stage1_2"), ("seed3", "text_only"), ("seed3", "unime_stage1"),
                   ("seed3", "unime_stage1_2")]
    _summary(out / "seed3" / "text_only", 30.0, 40, {"eval/stsb/spearman": 68.0})
    assert tp.main([*args, "--table-only"]) == 0
    records = {r["row"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert records["text_only"]["seeds"] == [1, 2, 3]
    assert records["text_only"]["metrics"]["eval/stsb/spearman"] == pytest.approx(64.0)
    assert records["text_only"]["sd"]["eval/stsb/spearman"] == pytest.approx(4.0)
    assert records["text_only"]["per_seed"]["1"]["kept_from"] == str(earlier)
    assert "kept_from" not in records["text_only"]["per_seed"]["3"]  # finished here
    assert records["base"]["metrics"]["eval/stsb/spearman"] == 30.0
    assert f"kept from `{earlier}`" in (tmp_path / "t.md").read_text()
    assert tp.main([*args[:-1], str(tmp_path / "missing.json")]) == 2
