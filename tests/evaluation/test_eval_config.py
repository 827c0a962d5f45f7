"""conf/eval.yaml composes for every suite; the local suites' data is complete; missing data fails fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.evaluation.suite import check_benchmarks
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _benchmark_list():
    return load_script("src/eval.py", "eval_script").benchmark_list


def _compose(suite, data_root, *overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("eval", [f"eval={suite}", f"paths.data_root={data_root}", *overrides],
                       return_hydra_config=False)


@pytest.mark.parametrize(
    "suite, names",
    [
        ("local_full", ["sts12", "stsb", "sickr", "flickr8k_1k_test", "cirr_local", "imagenet1k"]),
        ("local_heldout", ["sts12", "stsb", "sickr", "flickr8k_1k_test", "cirr_local", "imagenet1k"]),
        ("quick", ["stsb", "flickr8k_1k_test", "cirr_local"]),
        ("sts", ["sts12", "stsb", "sickr"]),
        ("flickr8k_1k", ["flickr8k_1k_test"]),
    ],
)
def test_local_suites_compose_and_data_is_complete(suite, names, data_root):
    cfg = _compose(suite, data_root)
    benchmarks = _benchmark_list()(cfg.eval)
    assert [b.name for b in benchmarks] == names
    assert cfg.model.name_or_path == "default" and cfg.adapter is None and cfg.prompt.text.startswith("<sent>")
    check_benchmarks(benchmarks)  # every reader runs on the real copy without error


def test_disable_and_override_from_command_line(data_root):
    cfg = _compose("local_full", data_root, "eval.benchmarks.sickr=null", "eval.benchmarks.flickr8k_1k_test.i2i=true")
    benchmarks = {b.name: b for b in _benchmark_list()(cfg.eval)}
    assert "sickr" not in benchmarks and benchmarks["flickr8k_1k_test"].i2i is True


def test_paper_suite_composes_and_names_missing_data(tmp_path):
    cfg = _compose("e5v_paper", tmp_path)
    benchmarks = _benchmark_list()(cfg.eval)
    assert {"sts12", "sts16", "flickr30k", "coco5k", "cirr", "fashioniq"} <= {b.name for b in benchmarks}
    with pytest.raises(BenchmarkLayoutError, match="expected layout"):
        check_benchmarks(benchmarks)


@pytest.mark.slow  # a src/eval.py process (Python, Hydra and Lightning start-up)
def test_eval_script_fails_fast_with_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "eval.py"), "eval=sts", f"paths.data_root={tmp_path}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "BenchmarkLayoutError" in proc.stderr + proc.stdout and str(tmp_path / "sts") in proc.stderr + proc.stdout
