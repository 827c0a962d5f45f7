"""Captioning (`CaptioningBenchmark`): a caption file's images captioned by the model (greedy or beam search) and
scored against all their references (BLEU-1..4, CIDEr x100, METEOR / SPICE when Java runs them).

It reads the same caption-file settings as retrieval (benchmarks/retrieval.py), so one suite can report retrieval
and captioning of the same test images (conf/eval/mmgem_conflict.yaml); `src/caption.py` runs
`caption_and_score` on its own and also writes every caption to a file.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.evaluation.benchmarks.retrieval import CaptionImages
from mmembed.models.encoder import unwrap

DEFAULT_INSTRUCTION = "<image>\nDescribe the image in one sentence."


def caption_and_score(embedder, bench, instruction: str, max_new_tokens: int = 30, num_beams: int = 1,
                      batch_size: int = 8, progress: bool = True, tokenizer: str = "auto",
                      java_scorers: bool = True) -> tuple[dict, dict, dict]:
    """(predictions {image id: caption}, references {image id: [captions]}, scores) for a caption benchmark."""
    from mmembed.data.images import load_image
    from mmembed.inference.captioner import Captioner
    from mmembed.metrics.captioning import caption_scores

    captioner = Captioner(unwrap(embedder), instruction, max_new_tokens, num_beams)
    images = [load_image(path) for path in bench.images]
    captions = captioner.caption(images, batch_size=batch_size, progress=progress)
    references: dict[str, list[str]] = {image_id: [] for image_id in bench.image_ids}
    for text, image in zip(bench.captions, bench.caption_image):
        references[bench.image_ids[image]].append(text)
    predictions = dict(zip(bench.image_ids, captions))
    scores = caption_scores(predictions, references, tokenizer=tokenizer, java_scorers=java_scorers)
    return predictions, references, scores


@dataclass(kw_only=True)
class CaptioningBenchmark(CaptionImages):
    """`instruction`: the captioning prompt (the one the model trained with); `scoring_tokenizer`: ptb (Java),
    simple (pure Python) or auto; `java_scorers`: METEOR and SPICE when Java is there."""

    instruction: str = DEFAULT_INSTRUCTION
    max_new_tokens: int = 30
    num_beams: int = 1
    scoring_tokenizer: str = "auto"
    java_scorers: bool = True
    task = "captioning"
    needs = frozenset({"image"})

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        bench = self.check()
        instruction = self.instruction or DEFAULT_INSTRUCTION
        max_new_tokens, num_beams = int(self.max_new_tokens or 30), int(self.num_beams or 1)
        predictions, _, scores = caption_and_score(
            embedder, bench, instruction, max_new_tokens, num_beams, batch_size=batch_size, progress=progress,
            tokenizer=self.scoring_tokenizer or "auto", java_scorers=True if self.java_scorers is None else bool(self.java_scorers),
        )
        metrics = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and k != "num_images"}
        protocol = {
            "task": "captioning", **bench.meta, "images": len(bench.images), "references": len(bench.captions),
            "instruction": instruction, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
            "decoding": "greedy" if num_beams == 1 else f"beam search ({num_beams} beams)",
            "scoring": {k: v for k, v in scores.items() if k not in metrics},
            "examples": dict(list(predictions.items())[:5]),
        }
        return {"metrics": metrics, "protocol": protocol}
