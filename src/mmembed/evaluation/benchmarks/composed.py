"""What CIRR and FashionIQ share: the gallery embedded once, then one composed query per (reference, text)."""

from __future__ import annotations

from mmembed.evaluation.encode import encode_composed, encode_images


def embed_gallery_and_queries(embedder, bench, tag: str, on_error: str, batch_size: int, progress: bool,
                              target_kind: str, query_kind: str, category: str | None = None):
    """(gallery embeddings, gallery indices kept, {image name: gallery index}, query embeddings, queries kept,
    unreadable paths); a query is kept when its reference and target images could be read."""
    names = list(bench.gallery)
    gal_emb, gal_ok, gal_failed = encode_images(
        embedder, [bench.gallery[n] for n in names], batch_size, kind=target_kind, category=category,
        on_error=on_error, desc=f"{tag} gallery", progress=progress,
    )
    index = {names[i]: i for i in gal_ok}
    queries = [q for q in bench.queries if q.reference in index and q.target in index]
    q_emb, q_ok, q_failed = encode_composed(
        embedder, [bench.gallery[q.reference] for q in queries], [q.caption for q in queries], batch_size,
        kind=query_kind, category=category, on_error=on_error, desc=f"{tag} queries", progress=progress,
    )
    queries = [queries[i] for i in q_ok]
    return gal_emb, gal_ok, index, q_emb, queries, gal_failed + q_failed
