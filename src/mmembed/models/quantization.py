"""QLoRA: load the frozen base in 4-bit (bitsandbytes NF4) and train LoRA adapters on top.

`model.quantization: null | 4bit`. 4-bit loading needs a CUDA GPU and the optional `bitsandbytes`
package; without them this module raises one message that says so, before any weights are read.
"""

from __future__ import annotations

import importlib.util

import torch

from mmembed.errors import ConfigError
from mmembed.models.backbones import DTYPES, BackboneLoadError

QUANTIZATION_CHOICES = (None, "4bit")


class QuantizationUnavailableError(BackboneLoadError):
    """4-bit loading was asked for on a machine that cannot do it."""


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(kind: str | None, compute_dtype: str = "bfloat16"):
    """A transformers `BitsAndBytesConfig` for `kind` ("4bit"), or None for full-precision loading."""
    if kind in (None, "", "none", "null"):
        return None
    if kind not in QUANTIZATION_CHOICES:
        raise ConfigError(f"model.quantization={kind!r}: expected null or 4bit")
    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible to torch")
    if not bitsandbytes_available():
        missing.append("the bitsandbytes package is not installed (`pip install bitsandbytes`)")
    if missing:
        raise QuantizationUnavailableError(
            "model.quantization=4bit (QLoRA) needs a CUDA GPU and bitsandbytes, but "
            + " and ".join(missing)
            + ". Use model.quantization=null to load the model in model.dtype instead."
        )
    if compute_dtype not in DTYPES:
        raise ValueError(f"4-bit compute dtype {compute_dtype!r} is not one of {sorted(DTYPES)}")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[compute_dtype],
    )


def prepare_for_kbit_training(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """peft's preparation of a 4-bit model for adapter training (norms in float32, input grads on)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
