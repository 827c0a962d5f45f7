"""The modality gap (Liang et al. 2022; E5-V's figure 1): where image and text embeddings of the same
pairs lie, projected to 2-D with PCA, plus numbers that summarise it.

- `centroid_distance`: ||mean(image embeddings) - mean(text embeddings)||, 0 when the two clouds share
  a centre, up to 2 for unit vectors;
- `matched_cosine`: mean cosine of each image with its own caption;
- `cross_cosine`: mean cosine over all image-caption pairs (matched or not), the baseline the matched
  cosine should rise above.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from mmembed.data.evalsets.captions import CaptionBenchmark
from mmembed.evaluation.encode import encode_images, encode_texts


def pair_embeddings(
    embedder, bench: CaptionBenchmark, batch_size: int = 16, max_pairs: int | None = None, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of each image and of its first caption: ([n, D], [n, D]), row i a matching pair."""
    first_caption: dict[int, str] = {}
    for caption, image in zip(bench.captions, bench.caption_image):
        first_caption.setdefault(image, caption)
    images = sorted(first_caption)[:max_pairs]
    img, ok, _ = encode_images(
        embedder, [bench.images[i] for i in images], batch_size, on_error="skip", desc="gap images", progress=progress
    )
    images = [images[i] for i in ok]
    txt = encode_texts(embedder, [first_caption[i] for i in images], batch_size, desc="gap captions", progress=progress)
    return img.float(), txt.float()


def gap_stats(image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    image, text = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)
    return {
        "centroid_distance": float((image.mean(0) - text.mean(0)).norm()),
        "matched_cosine": float((image * text).sum(-1).mean()),
        "cross_cosine": float((image @ text.T).mean()),
    }


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """[n, D] -> [n, 2]: the projection on the two leading principal components."""
    centred = points.double() - points.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).float()


def plot_modality_gap(panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path | None = None):
    """One scatter per panel (title -> (image, text) embeddings), each with its own PCA of both
    modalities together, matched pairs joined by faint lines. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, (image, text)) in zip(axes[0], panels.items()):
        xy = pca_2d(torch.cat([image, text]))
        n = image.shape[0]
        for i in range(n):
            ax.plot([xy[i, 0], xy[n + i, 0]], [xy[i, 1], xy[n + i, 1]], color="0.8", lw=0.4, zorder=1)
        ax.scatter(xy[:n, 0], xy[:n, 1], s=9, c="tab:red", label="image", zorder=2)
        ax.scatter(xy[n:, 0], xy[n:, 1], s=9, c="tab:blue", label="text", zorder=2)
        stats = gap_stats(image, text)
        ax.set_title(f"{title}\ncentroid distance {stats['centroid_distance']:.3f}, matched cos {stats['matched_cosine']:.3f}",
                     fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
