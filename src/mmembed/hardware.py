"""What this machine's CPU does well, for defaults that depend on it (read without importing torch).

`cpu_train_precision()` is conf/trainer/cpu.yaml's `precision` (`${mmembed_cpu_precision:}`):
"bf16-mixed" where the CPU computes bfloat16 natively (the AVX512-BF16 or AMX-BF16 instructions), else
"32-true". On this project's 2-core AVX512-BF16 machine bf16-mixed trains faster, in less memory, and
lands within the 0.5 STS-B dev points the project accepts; time, memory and scores of both precisions:
experiments/README.md#bfloat16-on-this-cpu-avx512-bf16-2026-12-02-quiet-machine. Without native bf16,
autocast would emulate it and be slower than float32. `MMEMBED_CPU_PRECISION` overrides the choice for a
whole process tree (the test suite pins 32-true so its exact equivalence checks stay in float32);
`trainer.precision=...` overrides one run.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ENV = "MMEMBED_CPU_PRECISION"


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (Linux); False where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cpu_train_precision() -> str:
    override = os.environ.get(ENV)
    if override:
        return override
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def cpu_inference_dtype() -> str:
    """The default model's dtype for evaluation and corpus embedding (`model.inference_dtype`): "bfloat16"
    where training would use bf16-mixed, else "float32". With `model.vision_dtype: float32` beside it, the
    vision tower and projector stay float32, because all-bf16 moves image embeddings too far. Speed and
    cosine to float32 of each recipe (perf/encode_throughput.py):
    experiments/README.md#encoding-throughput-perfencode_throughputpy-2026-12-02."""
    return "bfloat16" if cpu_train_precision().startswith("bf16") else "float32"


def register_resolvers() -> None:
    """`${mmembed_cpu_precision:}` and `${mmembed_cpu_inference_dtype:}` for the Hydra configs (idempotent)."""
    from omegaconf import OmegaConf

    for name, fn in (("mmembed_cpu_precision", cpu_train_precision),
                     ("mmembed_cpu_inference_dtype", cpu_inference_dtype)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
