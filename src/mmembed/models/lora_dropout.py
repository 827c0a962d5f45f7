"""LoRA's input dropout with a cheaper random mask on CPU.

peft runs `lora_B(lora_A(dropout(x)))` with one `nn.Dropout` per adapted linear layer: 210 masks of
[tokens, features] per forward on the default model. On this CPU, torch's dropout draws each mask element
with `bernoulli_` (about 5 ns an element, single-threaded), and perf/step_flops.py's profile of a `text_only` step
put `aten::bernoulli_` first of all ops, 22% of the step's CPU time, ahead of every matmul.

The same inverted dropout from a cheaper mask: one 64-bit draw of torch's generator gives four 16-bit
uniform numbers, and an element is dropped when its number is below round(p * 65536). Each element is
still dropped independently, in every layer separately, with probability p rounded to a multiple of 2^-16
(0.05 -> 0.0500031), and kept elements are scaled by 1 / (1 - that p), so the expectation is unchanged.
It draws from torch's global generator, so `torch.manual_seed` and GradCache's RNG replay reproduce it.
On other devices (a GPU's dropout is a fused kernel) it is torch's own dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


class CPUMaskDropout(nn.Module):
    """Inverted dropout with probability `p` (quantised to 2^-16 on CPU); identity in eval mode or at p = 0."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.threshold = round(self.p * _LEVELS)  # drop where the 16-bit number (0..65535) is below it
        self.keep_scale = 1.0 / (1.0 - self.threshold / _LEVELS)

    @property
    def effective_p(self) -> float:
        return self.threshold / _LEVELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.threshold, x.dtype, self.keep_scale)


def keep_mask(shape: torch.Size, threshold: int, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """0 where a uniform 16-bit number is below `threshold`, `scale` elsewhere, of `shape` and `dtype`."""
    n = shape.numel()
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64)
    lanes = draws.view(torch.int16)[:n].view(shape)  # 4 uniform int16 (-32768..32767) per draw
    return (lanes >= threshold - (_LEVELS // 2)).to(dtype).mul_(scale)


def use_cpu_mask_dropout(model: nn.Module) -> int:
    """Swap every peft LoRA layer's `nn.Dropout` for CPUMaskDropout with the same p; returns how many.
    Dropout modules hold no weights, so saved adapters are unchanged."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if type(layer) is nn.Dropout and layer.p > 0:
                dropouts[name] = CPUMaskDropout(layer.p)
                swapped += 1
    return swapped
