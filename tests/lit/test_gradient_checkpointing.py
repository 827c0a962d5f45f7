"""`model.gradient_checkpointing=true` with LoRA: the same loss and gradients, and the layers really recompute.

Tiny SmolLlava, LoRA dropout 0.05 on (non-reentrant checkpointing restores the RNG state, so the
recomputed masks equal the first ones), LoRA B randomised so A gets gradients too.
Tolerances (float32): loss 1e-6, adapter gradients max|diff| / max|grad| <= 1e-5.
"""

from __future__ import annotations

import torch

from mmembed.losses import info_nce
from tests.lit.harness import TRIPLETS
from tests.lit.helpers import rel_diff
from tests.pipeline.helpers import build_embedder, compose_train


def _loss_grads_and_layer_calls(model_dir, tmp_path, checkpointing: bool):
    cfg = compose_train(
        ["experiment=text_only", "model.text_only=true", "val=stsb_dev", f"model.name_or_path={model_dir}", f"model.gradient_checkpointing={checkpointing}"], tmp_path
    )
    torch.manual_seed(0)
    embedder = build_embedder(cfg, trainable=True).train()
    with torch.no_grad():
        for name, p in embedder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    calls = []
    # transformers checkpoints each decoder layer's `forward`, so hooks on the layer fire once; its MLP
    # runs inside the checkpointed forward and so starts again during backward (a pre-hook: the
    # recomputation stops early, once the last saved tensor is rebuilt, before forward hooks run).
    layers = [m for m in embedder.modules() if type(m).__name__ == "LlamaMLP"]
    for layer in layers:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    inputs = embedder.featurize_text([t for group in zip(*TRIPLETS[:4]) for t in group])
    torch.manual_seed(1)
    q, p, n = embedder(**inputs).split(4)
    loss = info_nce(q, p, n)
    loss.backward()
    grads = {k: v.grad.clone() for k, v in embedder.named_parameters() if v.requires_grad}
    return loss.item(), grads, len(calls) / len(layers)


def test_gradient_checkpointing_with_lora_gives_the_same_loss_and_gradients(tiny_smol_llava_dir, tmp_path):
    loss_ref, grads_ref, calls_ref = _loss_grads_and_layer_calls(tiny_smol_llava_dir, tmp_path, False)
    loss_ckpt, grads_ckpt, calls_ckpt = _loss_grads_and_layer_calls(tiny_smol_llava_dir, tmp_path, True)
    assert calls_ref == 1 and calls_ckpt == 2  # each layer ran again in backward: checkpointing is on
    assert abs(loss_ckpt - loss_ref) <= 1e-6
    assert any("lora_A" in k for k in grads_ckpt) and all(g.abs().max() > 0 for g in grads_ckpt.values())
    assert rel_diff(grads_ckpt, grads_ref) <= 1e-5
