"""CPUMaskDropout (mmembed/models/lora_dropout.py): an inverted dropout with the stated keep rate and scale,
independent per element and per call, reproducible from the seed, and swapped into every LoRA layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmembed.models.lora_dropout import CPUMaskDropout, use_cpu_mask_dropout


def test_p_is_rounded_to_a_multiple_of_2_to_the_minus_16_and_kept_values_are_scaled_by_its_complement():
    drop = CPUMaskDropout(0.05)
    assert drop.threshold == 3277 and drop.effective_p == 3277 / 65536
    assert drop.keep_scale == pytest.approx(1 / (1 - 3277 / 65536), rel=1e-15)
    out = drop.train()(torch.ones(2000, 1000))
    assert set(out.unique().tolist()) == {0.0, torch.tensor(drop.keep_scale).item()}  # float32 scale


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_drop_rate_and_mean_match_p_within_six_standard_errors(p):
    torch.manual_seed(0)
    drop = CPUMaskDropout(p).train()
    n = 4_000_000
    out = drop(torch.ones(n))
    dropped = float((out == 0).float().mean())
    se = math.sqrt(drop.effective_p * (1 - drop.effective_p) / n)
    assert abs(dropped - drop.effective_p) < 6 * se
    assert abs(float(out.double().mean()) - 1.0) < 6 * se * drop.keep_scale  # inverted dropout: unbiased
    # independent elements: the drop rate of pairs of neighbours is p^2 (4 lanes of one draw included)
    pairs = ((out[0::2] == 0) & (out[1::2] == 0)).float().mean()
    se_pairs = math.sqrt(drop.effective_p ** 2 * (1 - drop.effective_p ** 2) / (n // 2))
    assert abs(float(pairs) - drop.effective_p ** 2) < 6 * se_pairs


def test_masks_differ_between_calls_repeat_from_the_seed_and_follow_the_input_dtype():
    drop = CPUMaskDropout(0.5).train()
    x = torch.ones(64, 48)
    torch.manual_seed(7)
    a, b = drop(x), drop(x)
    torch.manual_seed(7)
    a2 = drop(x)
    assert not torch.equal(a, b) and torch.equal(a, a2)
    assert drop(x.bfloat16()).dtype == torch.bfloat16
    # the gradient flows through the kept elements only, scaled like them
    y = torch.ones(64, 48, requires_grad=True)
    torch.manual_seed(3)
    out = drop(y)
    out.sum().backward()
    assert torch.equal(y.grad, out.detach())


def test_eval_mode_and_p_zero_are_the_identity_and_other_devices_use_torchs_dropout():
    x = torch.randn(5, 3)
    assert CPUMaskDropout(0.5).eval()(x) is x
    assert CPUMaskDropout(0.0).train()(x) is x
    meta = CPUMaskDropout(0.5).train()(torch.empty(4, 4, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 4)
    with pytest.raises(ValueError, match="dropout probability"):
        CPUMaskDropout(1.0)


def test_every_lora_layers_dropout_is_swapped_and_the_saved_adapter_keys_are_unchanged(tiny_smol_llava_dir):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.lora import apply_lora

    plain = apply_lora(load_backbone(str(tiny_smol_llava_dir)).model, 4, 8, 0.05, None)
    cheap = apply_lora(load_backbone(str(tiny_smol_llava_dir)).model, 4, 8, 0.05, None, cpu_mask_dropout=True)
    plain_dropouts = [m for m in plain.modules() if type(m) is nn.Dropout and m.p == 0.05]
    cheap_dropouts = [m for m in cheap.modules() if isinstance(m, CPUMaskDropout)]
    assert len(plain_dropouts) == len(cheap_dropouts) > 0
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in cheap.modules())
    assert all(m.p == 0.05 for m in cheap_dropouts)
    assert plain.state_dict().keys() == cheap.state_dict().keys()
    assert use_cpu_mask_dropout(cheap) == 0  # nothing left to swap
