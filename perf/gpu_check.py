"""The checks this project cannot run on its CPU build machine, in one go on a CUDA machine.

    bash perf/gpu_check.sh [report.json]        # or: python perf/gpu_check.py [report.json]

Checks (each one timed; a failure is recorded and the next check still runs):
- train_bf16: `python src/train.py experiment=text_only trainer=gpu trainer.max_steps=20` (bf16-mixed),
  STS-B dev before/after, s/step and the peak GPU memory of the training process;
- qlora_4bit: the default model loaded in 4-bit NF4 (QLoRA) with LoRA on top, one forward/backward;
  "skipped: bitsandbytes not installed" where it does not import;
- embedder: `Embedder.encode` throughput (texts/s, images/s) in float32 and bfloat16, with
  torch.cuda.max_memory_allocated, and each dtype's min cosine to float32 on CPU;
- e5v_reference_fp16: E5-V's reference recipe (perf/encode_throughput.py) vs `Embedder`, both
  float16 on the GPU: the min cosine between their vectors;
- ddp_2gpu: two DDP processes, 3 steps (`trainer=ddp trainer.devices=2`), where 2 GPUs exist;
- fsdp_adapter: the adapter saved under `trainer=fsdp` equals the plain one (perf/gpu_check_fsdp.py).

Writes a JSON report (first argument, default gpu_check.json) and exits 1 if a check failed. On a
machine without CUDA it prints "no CUDA device" and exits 0, having run nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMEMBED_DATA", REPO.parent / "shared" / "data"))
TRAIN_STEPS = 20
REFERENCE_MIN_COS = 0.999  # float16 vs float16 (two code paths): rounding, not a different computation
MEMORY_FILE = "cuda_memory.json"


def cuda_memory_recorder(output_file: str):
    """A Lightning callback (made in the training process via Hydra `_target_`) writing the peak GPU memory."""
    import lightning as L
    import torch

    class CudaMemory(L.Callback):
        def on_train_end(self, trainer, pl_module):
            Path(output_file).write_text(json.dumps({
                "max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "max_memory_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
            }))

    return CudaMemory()


def train(run_dir: Path, *overrides: str, timeout: int = 240) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO / "perf"), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "src" / "train.py"), "experiment=text_only", "~logger",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
           "+callbacks.cuda_memory._target_=gpu_check.cuda_memory_recorder",
           f"+callbacks.cuda_memory.output_file={run_dir / MEMORY_FILE}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    memory = json.loads((run_dir / MEMORY_FILE).read_text()) if (run_dir / MEMORY_FILE).is_file() else {}
    return {"summary": summary, "cuda_memory": memory}


def check_train_bf16(tmp: Path) -> dict:
    out = train(tmp / "train_bf16", "trainer=gpu", f"trainer.max_steps={TRAIN_STEPS}",
                f"trainer.val_check_interval={TRAIN_STEPS}")
    s = out["summary"]
    before, after = (s.get("val_before") or {}).get("val/sts_spearman"), s["metrics"].get("val/sts_spearman")
    return {"steps": s["global_step"], "sec_per_step": s["cost"]["sec_per_step"],
            "final_train_loss": s["metrics"].get("train/loss"), "sts_b_dev_before": before, "sts_b_dev_after": after,
            **out["cuda_memory"], "ok": s["global_step"] == TRAIN_STEPS and after is not None and after > before}


def check_qlora_4bit(tmp: Path) -> dict:
    from mmembed.models.quantization import bitsandbytes_available

    if not bitsandbytes_available():
        return {"skipped": "bitsandbytes not installed"}
    import torch

    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.lora import apply_lora
    from mmembed.models.quantization import prepare_for_kbit_training, quantization_config

    torch.cuda.reset_peak_memory_stats()
    backbone = load_backbone("default", text_only=True, padding_side="left",
                             quantization_config=quantization_config("4bit"))
    backbone.model = apply_lora(prepare_for_kbit_training(backbone.model, False), r=8, alpha=16, dropout=0.0)
    embedder = MLLMEmbedder(backbone)
    inputs = {k: v.to("cuda") for k, v in embedder.featurize_text(["a dog runs", "a cat sleeps"]).items()}
    emb = embedder(**inputs)
    (emb[0] @ emb[1]).backward()
    four_bit = sum(type(m).__name__ == "Linear4bit" for m in backbone.model.modules())
    grads = [p.grad for n, p in backbone.model.named_parameters() if "lora_" in n and p.grad is not None]
    return {"linear4bit_modules": four_bit, "lora_params_with_grad": len(grads),
            "max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
            "ok": four_bit > 0 and bool(grads) and all(torch.isfinite(g).all() for g in grads)}


def encode_throughput():
    """perf/encode_throughput.py (a script beside this one, not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("encode_throughput", REPO / "perf" / "encode_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(n_texts: int, n_images: int) -> tuple[list[str], list[str]]:
    bench = encode_throughput()
    return (bench.sts_sentences(DATA / "sts/original/STSBenchmark/sts-test.csv", n_texts),
            bench.image_paths(DATA / "flickr8k/images", n_images))


def check_embedder(tmp: Path, n_texts: int = 1024, n_images: int = 512) -> dict:
    import torch

    from mmembed.inference import Embedder

    texts, images = _inputs(n_texts, n_images)
    cpu = Embedder.from_pretrained("default", dtype="float32")
    probe_t, probe_i = texts[:64], images[:16]
    ref_t, ref_i = cpu.encode(texts=probe_t), cpu.encode(images=probe_i)
    del cpu
    out = {"n_texts": len(texts), "n_images": len(images)}
    for dtype in ("float32", "bfloat16"):
        emb = Embedder.from_pretrained("default", device="cuda", dtype=dtype)
        emb.encode(texts=texts[:8])  # warm-up (kernels, allocator)
        emb.encode(images=images[:8])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        row = {"prefix_cache_tokens": len(emb.prefix) if emb.prefix else 0}
        for modality, items in (("texts", texts), ("images", images)):
            t0 = time.perf_counter()
            emb.encode(**{modality: items}, batch_size=64)
            torch.cuda.synchronize()
            row[f"{modality}_per_s"] = len(items) / (time.perf_counter() - t0)
        row["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["min_cos_to_cpu_float32"] = min(float((emb.encode(texts=probe_t) * ref_t).sum(-1).min()),
                                            float((emb.encode(images=probe_i) * ref_i).sum(-1).min()))
        out[dtype] = row
        del emb
        torch.cuda.empty_cache()
    out["ok"] = out["float32"]["min_cos_to_cpu_float32"] >= 0.9999 and out["bfloat16"]["min_cos_to_cpu_float32"] >= 0.999
    return out


def check_e5v_reference_fp16(tmp: Path) -> dict:
    import numpy as np
    import torch

    bench = encode_throughput()
    texts, images = _inputs(256, 64)
    cos, vectors = {}, {}
    for name, recipe in (("reference", bench.reference_recipe), ("mmembed", bench.mmembed_recipe)):
        encode = recipe("default", dtype="float16", device="cuda")
        vectors[name] = (encode(texts=texts), encode(images=images))
        del encode
        torch.cuda.empty_cache()
    for i, modality in enumerate(("texts", "images")):
        cos[modality] = float(np.sum(vectors["reference"][i] * vectors["mmembed"][i], axis=1).min())
    return {"min_cosine": cos, "threshold": REFERENCE_MIN_COS, "ok": min(cos.values()) >= REFERENCE_MIN_COS}


def check_ddp_2gpu(tmp: Path) -> dict:
    import torch

    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} CUDA device(s); DDP needs 2"}
    out = train(tmp / "ddp", "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3",
                "validate_before_training=false", "+trainer.limit_val_batches=0", "~callbacks.model_checkpoint")
    s = out["summary"]
    return {"steps": s["global_step"], "sec_per_step": s["cost"]["sec_per_step"],
            "final_train_loss": s["metrics"].get("train/loss"), **out["cuda_memory"], "ok": s["global_step"] == 3}


def check_fsdp_adapter(tmp: Path) -> dict:
    if str(REPO / "perf") not in sys.path:  # loaded by a test rather than run as perf/gpu_check.py
        sys.path.insert(0, str(REPO / "perf"))
    from gpu_check_fsdp import check_fsdp_adapter as check

    return check(tmp, train)


CHECKS = {"train_bf16": check_train_bf16, "qlora_4bit": check_qlora_4bit, "embedder": check_embedder,
          "e5v_reference_fp16": check_e5v_reference_fp16, "ddp_2gpu": check_ddp_2gpu,
          "fsdp_adapter": check_fsdp_adapter}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report_path = Path(argv[0] if argv else "gpu_check.json")
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    report = {"device": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name, check in CHECKS.items():
            print(f"{name} ...", flush=True)
            started = time.perf_counter()
            try:
                result = check(Path(tmp))
            except Exception as err:  # noqa: BLE001 -- recorded in the report; the other checks still run
                result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            result["seconds"] = round(time.perf_counter() - started, 1)
            report["checks"][name] = result
            status = f"skipped: {result['skipped']}" if "skipped" in result else "ok" if result["ok"] else "FAILED"
            print(f"{name}: {status} ({result['seconds']} s)", flush=True)
            report_path.write_text(json.dumps(report, indent=2, default=str))  # partial report if killed later
    failed = [n for n, r in report["checks"].items() if r.get("ok") is False]
    print(f"report: {report_path}; " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed or skipped"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
