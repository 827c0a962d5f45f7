"""Shared fixtures: the real default model (prepared once per machine) and tiny checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MMEMBED_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    # Nothing in the test suite may reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # conf/trainer/cpu.yaml trains in bf16-mixed on CPUs with native bf16; the suite's equivalence checks
    # (GradCache, 2 processes, resume) compare float32 runs. tests/test_hardware.py runs the default itself.
    os.environ["MMEMBED_CPU_PRECISION"] = "32-true"
    _share_cores_between_xdist_workers()


def _share_cores_between_xdist_workers() -> None:
    """Under `pytest -n N` (the Makefile runs the suite on 2 workers) each worker gets cores / N threads,
    and so do the CLIs it starts (OMP_NUM_THREADS is inherited): N workers each spinning up every core's
    OpenMP threads would oversubscribe the machine and run slower than one worker."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "PYTEST_XDIST_WORKER" not in os.environ or workers <= 1:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.fail(f"the shared data folder {DATA_ROOT} is missing; set MMEMBED_DATA")
    return DATA_ROOT


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real offline default model folder (assembled on first use, cached per machine)."""
    from mmembed.models.smol_llava.assembly import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tiny_smol_llava_dir(smol_tokenizer_dir, tmp_path_factory) -> Path:
    from tests.tiny_models import build_tiny

    return build_tiny("smol_llava", smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_smol_llava"))


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The default model's tokenizer and processor only (no weights): read from the packaged GGUF's
    metadata exactly as the default model's assembly does, in seconds, so tests that need the real
    tokenizer do not assemble the 135M-parameter model."""
    from transformers import AutoTokenizer

    from mmembed.models.smol_llava.assembly import gguf_location
    from mmembed.models.smol_llava.processor import IMAGE_TOKEN, build_processor

    folder, name = gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    out = tmp_path_factory.mktemp("smol_tokenizer")
    build_processor(tokenizer).save_pretrained(out)
    return out
