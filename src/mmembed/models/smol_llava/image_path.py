"""SmolLlavaModel's image path: pixels or the tower's precomputed feature map -> the projector's image tokens
(and, for the label-word projector, which span positions are holes). A mixin of modeling.SmolLlavaModel, which
owns `vision_tower`, `multi_modal_projector` and `config`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.models.smol_llava.holes import holes_of
from mmembed.models.smol_llava.projectors import Projector


class SmolLlavaImagePath:
    """get_vision_features / get_image_features / project_images / image_holes of SmolLlavaModel."""

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, vision_hidden_size, h, w]: the (frozen during alignment) tower's feature map,
        what `vision_features=` takes precomputed and vision_feature_cache.py stores."""
        if self.vision_tower is None:
            raise RuntimeError("this model was loaded text-only (vision tower dropped); it cannot embed images")
        return self.vision_tower.forward_features(pixel_values.to(self._projector_dtype()))

    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, H, W] or the tower's feature map [B, C, h, w] -> [B, image_seq_length, hidden] image tokens."""
        return self.project_images(pixel_values, vision_features)[0]

    def project_images(
        self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image tokens, valid [B, image_seq_length] or None): valid is False at the label-word projector's
        holes, the span positions its label text does not fill; None when every position is a token."""
        if (pixel_values is None) == (vision_features is None):
            raise ValueError("pass exactly one of pixel_values or vision_features")
        if self.multi_modal_projector is None:
            raise RuntimeError("this model was loaded text-only (projector dropped); it cannot embed images")
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        if vision_features.dim() != 4 or vision_features.shape[1] != self.config.vision_hidden_size:
            raise ValueError(f"vision_features of shape {tuple(vision_features.shape)}: expected the tower's "
                             f"[batch, {self.config.vision_hidden_size}, h, w] feature map")
        tokens = self._projector_inputs(vision_features)
        if isinstance(self.multi_modal_projector, Projector):
            return self.multi_modal_projector.project(tokens, self.get_input_embeddings())
        return self.multi_modal_projector(tokens), None  # a module put in the projector's place (MM-GEM's heads)

    def image_holes(self, input_ids: torch.Tensor, vision_features: torch.Tensor) -> torch.Tensor | None:
        """[B, T] True where a placeholder token is a hole (see project_images), or None without holes: the
        label choice alone, from the tower's feature map, without embedding the words."""
        if not self.uses_holes:
            return None
        valid = self.multi_modal_projector.valid_positions(self._projector_inputs(vision_features))
        return holes_of(input_ids, self.config.image_token_id, valid)

    @property
    def uses_holes(self) -> bool:
        """Whether the projector may leave holes in the image span (see projectors/base.py)."""
        return isinstance(self.multi_modal_projector, Projector) and self.multi_modal_projector.uses_holes

    def _projector_inputs(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The tower's map [B, C, h, w] -> the projector's input vectors [B, positions, C], in its dtype."""
        vision_features = vision_features.to(self._projector_dtype())
        if self.config.image_grid:
            # adaptive pooling is exact averaging over (overlapping, for 7 -> 3) windows of the map
            vision_features = F.adaptive_avg_pool2d(vision_features, self.config.image_grid)
        return vision_features.flatten(2).transpose(1, 2)

    def _projector_dtype(self) -> torch.dtype:
        return next(self.multi_modal_projector.parameters()).dtype
