"""The FSDP checks of perf/gpu_check.py (FSDP runs on accelerators only in this torch/Lightning build).

- fsdp_adapter: `experiment=text_only` trained 3 steps in float32 twice on one GPU with the same seed and rows,
  once plainly (`trainer=gpu`) and once under `trainer=fsdp` (one FSDP unit per decoder layer): the adapter
  saved under FSDP (gathered from the shards with the full state dict) must equal the plain one tensor for tensor,
  and the step losses must agree (docs/distributed.md: the strategy matrix's FSDP column).
"""

from __future__ import annotations

from pathlib import Path

STEPS = 3
ADAPTER_ATOL = 1e-5  # float32, one device, same rows: only kernel-order rounding may differ
SAME_RUN = ("trainer.precision=32-true", "trainer.devices=1", f"trainer.max_steps={STEPS}",
            "validate_before_training=false", "+trainer.limit_val_batches=0", "trainer.val_check_interval=null")


def _adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "adapters" / "last").glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"no adapter tensors under {run_dir / 'adapters' / 'last'}")
    return {k: v.float() for f in files for k, v in load_file(str(f)).items()}


def check_fsdp_adapter(tmp: Path, train) -> dict:
    """`train(run_dir, *overrides) -> {"summary": ...}` is gpu_check.train."""
    plain = train(tmp / "plain", "trainer=gpu", *SAME_RUN)["summary"]
    fsdp = train(tmp / "fsdp", "trainer=fsdp", *SAME_RUN)["summary"]
    a, b = _adapter_tensors(tmp / "plain"), _adapter_tensors(tmp / "fsdp")
    if set(a) != set(b):
        return {"ok": False, "error": f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"}
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    loss_diff = abs(plain["metrics"]["train/loss"] - fsdp["metrics"]["train/loss"])
    return {"tensors": len(a), "max_abs_diff": diff, "final_loss_plain": plain["metrics"]["train/loss"],
            "final_loss_fsdp": fsdp["metrics"]["train/loss"], "sec_per_step_fsdp": fsdp["cost"]["sec_per_step"],
            "ok": fsdp["global_step"] == STEPS and diff <= ADAPTER_ATOL and loss_diff <= 1e-4}
