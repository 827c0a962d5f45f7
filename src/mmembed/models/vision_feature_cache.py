"""Disk cache of the frozen vision tower's feature maps, computed once per image and model.

During projector alignment the tower is frozen (and in eval mode), so an image's feature map is the
same at every epoch; recomputing it every step is most of a small captioning step's vision cost.
`VisionFeatureCache` stores each map as one safetensors file

    <cache dir>/vision_features/<model key>/<key[:2]>/<key>.safetensors     key = sha256(image, preprocessing)

where the model key fingerprints the tower's weights (a retrained or different tower never reads
another's features) and the preprocessing fingerprint is the image processor's settings (size, crop,
resampling, mean/std). Maps are stored in the dtype the tower produced, so the cached path feeds the
projector exactly the tensor the uncached path would (`SmolLlava...(vision_features=...)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmembed.errors import BadImageError, ConfigError
from mmembed.models.smol_llava.assembly import default_cache_dir

SUBDIR = "vision_features"
TENSOR_NAME = "features"


def image_digest(image) -> str:
    """sha256 of an image's content: a file's bytes (path), raw bytes, or a PIL image's decoded pixels."""
    if isinstance(image, (str, Path)):
        try:
            return hashlib.sha256(Path(image).read_bytes()).hexdigest()
        except OSError as err:
            raise BadImageError(str(image), f"cannot read it ({err.strerror or err})") from err
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL: same pixels, same key, whatever the file
        digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()
    raise TypeError(f"cannot fingerprint an image of type {type(image).__name__}; pass a path, bytes or a PIL image")


def preprocessing_fingerprint(image_processor) -> str:
    """A short hash of every setting of the image processor (size, crop, resample, mean/std, ...)."""
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else dict(image_processor)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def vision_model_key(vision_tower: nn.Module) -> str:
    """`<class>-<sha256 of its weights, first 16 hex>`: the folder name features of this tower live under."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vision_tower.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(vision_tower).__name__.lower()}-{digest.hexdigest()[:16]}"


class VisionFeatureCache:
    """Feature maps of one vision tower under one preprocessing, looked up by image content."""

    def __init__(self, model_key: str, preprocessing: str = "", cache_dir: str | Path | None = None):
        self.model_key, self.preprocessing = model_key, preprocessing
        self.dir = Path(cache_dir or default_cache_dir()) / SUBDIR / model_key

    @classmethod
    def for_model(cls, model: nn.Module, image_processor, cache_dir: str | Path | None = None) -> VisionFeatureCache:
        """The cache of a SmolLlava model's tower (`model.model.vision_tower`) under `image_processor`."""
        return cls(vision_model_key(_vision_tower(model)), preprocessing_fingerprint(image_processor), cache_dir)

    def key(self, image) -> str:
        return hashlib.sha256(f"{image_digest(image)}|{self.preprocessing}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        return load_file(path)[TENSOR_NAME] if path.is_file() else None

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside, then rename: a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(prefix=".writing-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({TENSOR_NAME: features.detach().cpu().contiguous()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def lookup(self, images: Sequence, compute: Callable[[list], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """([B, C, h, w] features of `images`, how many were computed): cached ones are read, the rest
        computed in one `compute(images)` call (-> [n, C, h, w]) and stored."""
        keys = [self.key(image) for image in images]
        found = {i: self.get(k) for i, k in enumerate(keys)}
        missing = [i for i, features in found.items() if features is None]
        if missing:
            computed = compute([images[i] for i in missing])
            for row, i in enumerate(missing):
                self.put(keys[i], computed[row])
                found[i] = computed[row].detach().cpu()
        return torch.stack([found[i] for i in range(len(images))]), len(missing)

    def vision_features(self, images: Sequence, model: nn.Module, image_processor) -> torch.Tensor:
        """[B, C, h, w] feature maps of `images` (paths, bytes or PIL images) for SmolLlava's
        `vision_features=` input; missing ones are computed with the model's tower, in eval mode."""
        body = model.model if hasattr(model, "model") else model

        @torch.no_grad()
        def compute(batch: list) -> torch.Tensor:
            pixels = image_processor([_as_pil(image) for image in batch], return_tensors="pt")["pixel_values"]
            tower = _vision_tower(model)
            was_training = tower.training
            tower.eval()  # BatchNorm in train mode would store batch-dependent features
            try:
                return body.get_vision_features(pixels.to(next(tower.parameters()).device))
            finally:
                tower.train(was_training)

        return self.lookup(images, compute)[0]


def _vision_tower(model: nn.Module) -> nn.Module:
    body = model.model if hasattr(model, "model") else model
    tower = getattr(body, "vision_tower", None)
    if tower is None:
        raise RuntimeError("this model has no vision tower (loaded text-only?); its features cannot be cached")
    return tower


def _as_pil(image):
    from io import BytesIO

    from PIL import Image

    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(BytesIO(bytes(image))).convert("RGB")
    return image.convert("RGB")


class TowerFeatureCache:
    """The frozen tower's feature maps during training, computed once per distinct preprocessed image.

    Installed on one model instance (`install_tower_cache`), it stands in for the body's
    `get_vision_features(pixel_values)`: each row of `pixel_values` is keyed by the sha256 of its bytes
    (the decoded image *after* preprocessing, so the key already covers resizing, crop and normalisation)
    under the tower's weight fingerprint. Rows seen before come from memory (this run) or the disk cache
    (earlier runs, `<cache dir>/vision_features/<model key>/`); the rest go through the tower in one call
    and are stored. The tower must be frozen: cached maps carry no gradient. Nothing changes in the
    model's state_dict, so saved models and adapters are the same with or without the cache.
    """

    def __init__(self, body: nn.Module, cache_dir: str | Path | None = None, keep_in_memory: bool = True,
                 disk: bool = True):
        self.tower = body.vision_tower
        self.compute = body.get_vision_features  # the bound method, before it is replaced
        self.disk = VisionFeatureCache(vision_model_key(self.tower), "pixels", cache_dir) if disk else None
        self.memory: dict[str, torch.Tensor] | None = {} if keep_in_memory else None
        self.hits = self.misses = 0

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if any(p.requires_grad for p in self.tower.parameters()):
            raise ConfigError("model.vision_feature_cache=true needs a frozen vision tower, but it is being trained")
        if self.tower.training:
            raise ConfigError("model.vision_feature_cache=true needs the vision tower in eval mode (BatchNorm "
                              "statistics fixed); it is in train mode")
        keys = [hashlib.sha256(row.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for row in pixel_values]
        found = {key: self._get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, features in found.items() if features is None]  # distinct: one tower row each
        if missing:
            rows = [keys.index(key) for key in missing]
            with torch.no_grad():
                computed = self.compute(pixel_values[rows])
            for key, features in zip(missing, computed):
                self._put(key, features)
                found[key] = features.detach()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([found[key].to(pixel_values.device) for key in keys])

    def _get(self, key: str) -> torch.Tensor | None:
        if self.memory is not None and key in self.memory:
            return self.memory[key]
        features = self.disk.get(key) if self.disk is not None else None
        if features is not None and self.memory is not None:
            self.memory[key] = features
        return features

    def _put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().cpu().contiguous()
        if self.disk is not None:
            self.disk.put(key, features)
        if self.memory is not None:
            self.memory[key] = features


def install_tower_cache(model: nn.Module, cache_dir: str | Path | None = None) -> TowerFeatureCache:
    """Route `model`'s vision features through a `TowerFeatureCache` (see there); returns it (hit counts)."""
    body = tower_body(model)
    if body is None:
        raise ConfigError(f"model.vision_feature_cache=true: {type(model).__name__} has no get_vision_features "
                          "with a vision tower (the default model has); set model.vision_feature_cache=false")
    cache = TowerFeatureCache(body, cache_dir)
    body.get_vision_features = cache  # an instance attribute: the class and state_dict are untouched
    return cache


def tower_body(model: nn.Module) -> nn.Module | None:
    """The innermost module with `get_vision_features` and a `vision_tower` (wrappers such as PEFT and
    ForConditionalGeneration delegate to it); None when the model has none."""
    bodies = [m for m in model.modules() if callable(getattr(m, "get_vision_features", None))
              and isinstance(getattr(m, "vision_tower", None), nn.Module)]
    return bodies[-1] if bodies else None
