"""mteb_results=true: the local STS benchmarks as MTEB result files, read back with mteb's own loaders."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import REPO
from tests.scripts import load_script

mteb = pytest.importorskip("mteb")

from mmembed.evaluation.benchmarks.sts import STSBenchmark  # noqa: E402
from mmembed.evaluation.mteb_results import local_revision, mteb_task_name  # noqa: E402


def _head(source, target, lines: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:lines]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def local_sts(data_root, tmp_path_factory):
    """Small copies of the three STS sets in their own layouts (the first rows of each file)."""
    root, sts = tmp_path_factory.mktemp("sts"), data_root / "sts"
    _head(sts / "senteval_processed/STSBenchmark/sts-test.csv", root / "stsb/sts-test.csv", 30)
    for subset in ("MSRpar", "MSRvid"):
        for part in ("input", "gs"):
            name = f"STS.{part}.{subset}.txt"
            _head(sts / "senteval_processed/STS12-en-test" / name, root / "STS12-en-test" / name, 15)
    _head(sts / "SICK/SICK_test_annotated.txt", root / "sick.txt", 31)  # header + 30 pairs
    return root


def test_local_benchmarks_map_to_mteb_task_names():
    def sts(fmt, path, split=None):
        return STSBenchmark(name="x", format=fmt, path=path, split=split)

    assert mteb_task_name(sts("stsb", "/d/STSBenchmark", "test")) == "STSBenchmark"
    assert mteb_task_name(sts("stsb", "/d/STSBenchmark", "dev")) is None  # MTEB scores test only
    assert mteb_task_name(sts("sts12_16", "/d/STS12-en-test")) == "STS12"
    assert mteb_task_name(sts("sts12_16", "/d/STS16-en-test")) == "STS16"
    assert mteb_task_name(sts("sick", "/d/SICK.txt", "TEST")) == "SICK-R"
    assert mteb_task_name(sts("sick", "/d/SICK.txt", "TRAIN")) is None
    for name in ("STSBenchmark", "STS12", "STS16", "SICK-R"):
        assert mteb.get_task(name).metadata.main_score == "cosine_spearman"


def _eval(tiny_dir, local_sts, out, *overrides):
    script = load_script("src/eval.py", "eval_script_mteb")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=sts", f"eval.benchmarks.stsb.path={local_sts / 'stsb'}",
                               f"eval.benchmarks.sts12.path={local_sts / 'STS12-en-test'}",
                               f"eval.benchmarks.sickr.path={local_sts / 'sick.txt'}", f"model.name_or_path={tiny_dir}",
                               f"paths.output_dir={out}", "progress=false", "mteb_results=true", *overrides])
    return script.main.__wrapped__(cfg)


@pytest.mark.slow
def test_eval_writes_mteb_results_that_mtebs_loader_reads_back(tiny_smol_llava_dir, local_sts, tmp_path):
    from mteb.cache import ResultCache
    from mteb.results import TaskResult

    results = _eval(tiny_smol_llava_dir, local_sts, tmp_path / "full")
    ours = {"STSBenchmark": "stsb", "STS12": "sts12", "SICK-R": "sickr"}
    model = f"mmembed/{tiny_smol_llava_dir.name}"
    folder = tmp_path / "full" / "mteb" / "results" / model.replace("/", "__") / "no_revision_available"
    assert sorted(p.name for p in folder.iterdir()) == ["SICK-R.json", "STS12.json", "STSBenchmark.json",
                                                         "model_meta.json", "run_settings.jsonl"]
    assert results["mteb_results"] == [str(folder / f"{task}.json") for task in ("STS12", "STSBenchmark", "SICK-R")]
    meta = json.loads((folder / "model_meta.json").read_text())
    assert (meta["name"], meta["embed_dim"], meta["similarity_fn_name"]) == (model, 64, "cosine")

    loaded = ResultCache(tmp_path / "full" / "mteb").load_results(tasks=list(ours), include_remote=False)
    [model_result] = loaded.model_results
    assert (model_result.model_name, model_result.model_revision) == (model, "no_revision_available")
    by_task = {r.task_name: r for r in model_result.task_results}
    assert sorted(by_task) == sorted(ours)
    sources = {"stsb": local_sts / "stsb", "sts12": local_sts / "STS12-en-test", "sickr": local_sts / "sick.txt"}
    for task, name in ours.items():
        spearman = results["benchmarks"][name]["metrics"]["spearman"]  # x 100, 4 decimals
        result = by_task[task]
        assert result.get_score() == pytest.approx(spearman / 100, abs=1e-6)
        [entry] = result.scores["test"]
        assert entry["cosine_spearman"] == entry["main_score"] and entry["hf_subset"] == "default"
        # the revision names the local file(s), never MTEB's dataset revision, and the entry says so
        revision = mteb.get_task(task).metadata.revision
        assert result.dataset_revision == local_revision(sources[name]) != revision
        assert entry["mmembed_local_data"]["mteb_dataset"].endswith(f"@{revision}")
        assert entry["mmembed_local_data"]["pairs"] == results["benchmarks"][name]["protocol"]["pairs"]
        assert TaskResult.from_disk(folder / f"{task}.json").get_score() == result.get_score()
    assert results["benchmarks"]["sts12"]["protocol"]["pairs"] == 30  # two sub-files of 15, pooled

    # a truncate_dim run is an MTEB experiment of the same model: its own folder, its own embed_dim
    small = _eval(tiny_smol_llava_dir, local_sts, tmp_path / "small", "truncate_dim=8")
    assert all("/experiments/truncate_dim_8/" in path for path in small["mteb_results"])
    loaded = ResultCache(tmp_path / "small" / "mteb").load_results(
        tasks=["STSBenchmark"], include_remote=False, experiment_kwargs={"truncate_dim": 8})
    [model_result] = loaded.model_results
    [result] = model_result.task_results
    assert result.get_score() == pytest.approx(small["benchmarks"]["stsb"]["metrics"]["spearman"] / 100, abs=1e-6)
    meta = json.loads((tmp_path / "small" / "mteb").glob("results/*/*/experiments/*/model_meta.json").__next__()
                      .read_text())
    assert (meta["embed_dim"], meta["experiment_kwargs"]) == (8, {"truncate_dim": 8})
