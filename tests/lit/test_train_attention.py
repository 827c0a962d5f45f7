"""`model.train_attn_implementation`: training loads eager attention on the default model (its sdpa backward was the
costliest op of a CPU step), evaluation keeps sdpa, and the two give the same loss and gradients (float32)."""

from __future__ import annotations

import torch

from mmembed.losses import info_nce
from tests.lit.harness import TRIPLETS
from tests.lit.helpers import rel_diff
from tests.pipeline.helpers import build_embedder, compose_train


def attention_of(embedder) -> str:
    return embedder.backbone.body.config._attn_implementation


def loss_and_grads(model_dir, tmp_path, overrides: list[str]):
    cfg = compose_train(["experiment=text_only", "model.text_only=true", "val=stsb_dev", "lora.dropout=0",
                         f"model.name_or_path={model_dir}", *overrides], tmp_path)
    torch.manual_seed(0)
    embedder = build_embedder(cfg, trainable=True).train()
    with torch.no_grad():
        for name, p in embedder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # LoRA B starts at zero: give A a gradient too
    inputs = embedder.featurize_text([t for group in zip(*TRIPLETS[:4]) for t in group])
    loss = info_nce(*embedder(**inputs).split(4))
    loss.backward()
    return attention_of(embedder), loss.item(), {k: v.grad.clone() for k, v in embedder.named_parameters()
                                                 if v.requires_grad}


def test_training_loads_eager_evaluation_sdpa_and_both_give_the_same_loss_and_gradients(tiny_smol_llava_dir, tmp_path):
    eager = loss_and_grads(tiny_smol_llava_dir, tmp_path, [])
    sdpa = loss_and_grads(tiny_smol_llava_dir, tmp_path, ["model.train_attn_implementation=null"])
    assert (eager[0], sdpa[0]) == ("eager", "sdpa")
    assert abs(eager[1] - sdpa[1]) <= 1e-5 * abs(sdpa[1])  # float32, other op order: 1e-6 relative seen
    assert eager[2].keys() == sdpa[2].keys() and len(eager[2]) > 0
    assert rel_diff(eager[2], sdpa[2]) <= 1e-5
    cfg = compose_train(["experiment=text_only", f"model.name_or_path={tiny_smol_llava_dir}"], tmp_path)
    assert attention_of(build_embedder(cfg, trainable=False)) == "sdpa"
