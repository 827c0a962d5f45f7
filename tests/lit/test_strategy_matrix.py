"""The strategy matrix: every recipe of conf/experiment under `trainer=ddp` and `trainer=fsdp`.

DDP: each recipe (and MM-GEM's two conflict arms, which used to fail at their second step) trains 2 steps
through `run_training` on 2 gloo CPU processes, batch 2 per rank, and gives the losses of one process on
batch 4: the same 4 rows every step (tests/lit/matrix_harness.py composes each recipe as `src/train.py`
does, in one launch per mode, to pay the start-up once). Step 1 runs the objective's cross-rank math
(gathered candidates, masks, target identities, the teacher's rows) on identical weights: equal to 1e-5.
Step 2 follows one AdamW step, whose first update is g / (|g| + eps) per element: elements whose gradient
is at float32 noise level move by +-lr either way, and LoRA dropout draws differ between 1 and 2
processes, so the runs agree only to ~1e-4 there (measured: 4.4e-4 on e5v_paper, lr 4e-4 without warm-up;
the other recipes warm up from lr 0, so their step 2 repeats step 1). e5v_paper runs in float32 here.

FSDP: the recipes whose ranks run a batch-dependent number of forward passes (UniME stage 2's
hard-negative loss: one pass per modality present) or that write the whole model from rank 0 (align's
BaseModelSaver) are refused by `preflight` before the data and the model load, with a message that names
trainer=ddp; the others pass preflight. None can train here: this torch/Lightning build runs FSDP on
accelerators only (Lightning: "The strategy `fsdp` requires a GPU accelerator"; torch's FSDP: "FSDP needs
a non-CPU accelerator device"), so FSDP training itself is a GPU check (docs/distributed.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mmembed.errors import ConfigError
from mmembed.lit.strategies import preflight
from tests.conftest import REPO
from tests.distributed import ddp_subprocess_env
from tests.lit import matrix_harness

HARNESS = Path(matrix_harness.__file__)
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
FSDP_REFUSED = {
    "unime_stage2": "trainer=fsdp cannot train objective HardNegativeNCE: HardNegativeNCE runs one forward pass "
                    "per modality present in each rank's batch",
    "align": "trainer=fsdp cannot run callbacks.aligned_model_saver (BaseModelSaver)",
}
STEP1_ATOL = 1e-5
STEP2_ATOL = 1e-3
# The captioning loss is the token mean of the global batch (objectives/captioning.py scales each rank's sum by
# W / all ranks' tokens): MM-GEM joint and captioning-only now match 1 process at both steps (measured 9.5e-7 at step
# 1; before the fix, a mean of per-rank means, 1.4e-3). mmgem_regions' step 2 once differed (11.95 against 11.75):
# its epoch-2 sampler order put two rows of one region on other positions, and the row kept among an image's
# repeats was the first by position; it is now the one with the smallest caption id (objectives/image_text.py).
DDP_CASES = sorted(matrix_harness.RECIPES)


def _launch(model_dir, out: Path, mode: str) -> dict[str, dict]:
    recipes = sorted(matrix_harness.RECIPES)
    env = ddp_subprocess_env()
    proc = subprocess.run([sys.executable, str(HARNESS), str(model_dir), str(out), mode, *recipes], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    (out / "stderr.txt").write_text(proc.stderr)  # both ranks' output: the tail below may show only rank 0's
    assert proc.returncode == 0, f"{out / 'stderr.txt'}:\n{proc.stderr[-4000:]}"
    return {r: json.loads((out / f"{mode}_{r}.json").read_text()) for r in recipes}


@pytest.fixture(scope="module")
def single_runs(tiny_smol_llava_dir, tmp_path_factory):
    return _launch(tiny_smol_llava_dir, tmp_path_factory.mktemp("single"), "single")


@pytest.fixture(scope="module")
def ddp_runs(tiny_smol_llava_dir, tmp_path_factory):
    return _launch(tiny_smol_llava_dir, tmp_path_factory.mktemp("ddp"), "ddp")


def test_every_experiment_is_in_the_matrix():
    trained = {matrix_harness.RECIPES[r][0].removeprefix("experiment=") for r in matrix_harness.RECIPES}
    assert trained == set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("recipe", sorted(matrix_harness.RECIPES))
def test_recipe_trains_two_steps_under_ddp(recipe, single_runs, ddp_runs):
    """Every recipe reaches step 2 under DDP (the unused-parameter failure showed there), in both launches."""
    single, ddp = single_runs[recipe], ddp_runs[recipe]
    assert single["global_step"] == ddp["global_step"] == 2
    assert len(single["losses"]) == len(ddp["losses"]) == 2


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("recipe", DDP_CASES)
def test_recipe_under_ddp_gives_the_one_process_losses(recipe, single_runs, ddp_runs):
    single, ddp = single_runs[recipe], ddp_runs[recipe]
    assert single["losses"][0] > 0.01  # in-batch negatives exist: a loss that can differ
    assert ddp["losses"][0] == pytest.approx(single["losses"][0], abs=STEP1_ATOL)
    assert ddp["losses"][1] == pytest.approx(single["losses"][1], abs=STEP2_ATOL)


def _compose(experiment: str, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", "trainer=fsdp", *extra])


def _preflight(cfg) -> None:
    chunk = (cfg.get("grad_cache") or {}).get("chunk_size") or None
    preflight(cfg.trainer, chunk, instantiate(cfg.objective, _convert_="all"), cfg.get("callbacks"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fsdp_refuses_or_accepts_each_experiment(experiment):
    cfg = _compose(experiment)
    if experiment in FSDP_REFUSED:
        with pytest.raises(ConfigError) as err:
            _preflight(cfg)
        message = str(err.value)
        assert message.startswith(FSDP_REFUSED[experiment])
        assert "Use trainer=ddp" in message and "\n" not in message
    else:
        _preflight(cfg)  # passes: the forward passes per step are fixed and nothing saves from rank 0 alone


def test_fsdp_with_gradcache_says_the_chunk_counts_differ_too():
    with pytest.raises(ConfigError, match=r"GradCache the chunk counts differ between ranks too\). Use trainer=ddp"):
        _preflight(_compose("unime_stage2", "grad_cache.chunk_size=4"))
    _preflight(_compose("text_only", "grad_cache.chunk_size=4"))  # fixed groups: equal chunk counts on every rank


def test_ddp_accepts_every_experiment():
    for experiment in EXPERIMENTS:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", "trainer=ddp"])
        _preflight(cfg)


@pytest.mark.slow
def test_train_cli_refuses_fsdp_stage2_before_data_and_model_load(tmp_path):
    proc = subprocess.run([
        sys.executable, str(REPO / "src" / "train.py"), "experiment=unime_stage2", "trainer=fsdp",
        f"paths.cache_dir={tmp_path / 'missing_cache'}", f"hydra.run.dir={tmp_path / 'run'}", "~logger",
    ], cwd=REPO, env=ddp_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr  # Hydra's job logging writes the error line to stdout
    errors = [line for line in output.splitlines() if "ConfigError" in line]
    assert len(errors) == 1 and FSDP_REFUSED["unime_stage2"] in errors[0] and "Use trainer=ddp" in errors[0]
    assert "Traceback" not in output
    # refused first: the (absent) mini-MMEB files were never looked for, no weights were loaded
    assert "MMEB training data not found" not in output and "Loading weights" not in output
