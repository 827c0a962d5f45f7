"""Run mmembed models under the `mteb` benchmark package (mteb 2.x encoder protocol).

    import mteb
    from mmembed.data.evalsets.sts import read_stsb
    from mmembed.inference import Embedder
    from mmembed.inference.mteb_adapter import LocalSTSTask, MTEBEncoder

    encoder = MTEBEncoder(Embedder.from_pretrained("default"), prompts={"STS": "<sent>\\nSummary above sentence in one word: "})
    task = LocalSTSTask.from_pairs(read_stsb("/data/sts/senteval_processed/STSBenchmark", "test"))
    result = mteb.evaluate(encoder, task, cache=None, co2_tracker=False)   # main score: cosine Spearman (0-1)

Prompts: mteb asks for embeddings of a task's inputs with its metadata and a prompt type (query /
document, or none). `prompts` maps mteb keys to mmembed text templates (the format of
`PromptConfig.text`: `<sent>` marks where the input goes). Keys are resolved with mteb's own priority
(`mteb.models.abs_encoder.get_prompt_name`):

    "<TaskName>-query" / "<TaskName>-document"   e.g. "STSBenchmarkLocal-query"
    "<TaskName>"                                 e.g. "STSBenchmarkLocal"
    "<TaskType>-query" / "<TaskType>-document"   e.g. "Retrieval-query"
    "<TaskType>"                                 e.g. "STS", "Retrieval", "Classification"
    "query" / "document"

With no matching key the embedder's own text prompt is used (E5-V's, or the one saved with the
adapter). A template replaces only the prompt body: chat-template wrapping, system message and suffix
stay the embedder's, so a template is what you would write as `prompt.text` in conf/prompt/*.yaml.
Batches with images are embedded with the embedder's image prompt; batches with both images and
texts as composed (image, text) queries with its `cir_query` prompt.

mteb is an optional dependency (`pip install mteb`); this module alone imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, MMEmbedError
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.prompts import SENT

try:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
    from mteb.models.model_meta import ModelMeta, ScoringFunction
except ImportError as err:  # the message says what to install, not a bare traceback
    raise MMEmbedError(f"mmembed.inference.mteb_adapter needs the mteb package (pip install mteb): {err}") from err


class MTEBEncoder(AbsEncoder):
    """An `Embedder` behind mteb's `EncoderProtocol`: `encode(DataLoader, task_metadata=..., ...)` -> numpy."""

    def __init__(self, embedder, prompts: Mapping[str, str] | None = None, name: str | None = None,
                 batch_size: int = 32):
        for key, template in (prompts or {}).items():
            if not isinstance(template, str) or SENT not in template:
                raise ConfigError(f"mteb prompt {key!r} must be a text template containing {SENT!r} "
                                  f"(where the input goes), got {template!r}")
        self.model = embedder  # mteb's AbsEncoder convention
        self.model_prompts = dict(prompts or {})
        self.batch_size = batch_size
        self._by_template: dict[str, Any] = {}  # template -> Embedder sharing the base weights
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            # mteb keys result folders by name; "mmembed/<model folder>" keeps runs of different models apart.
            "name": name or f"mmembed/{Path(str(embedder.backbone.name_or_path)).name}",
            "embed_dim": embedder.dim,
            "similarity_fn_name": ScoringFunction.COSINE,  # vectors are L2-normalised
            "modalities": ["text", "image"] if embedder.backbone.supports_images else ["text"],
            "framework": ["PyTorch"],
            "use_instructions": bool(self.model_prompts),
        })

    def template_for(self, task_metadata, prompt_type=None) -> str | None:
        """The mmembed text template for this task and prompt type (None: the embedder's own)."""
        key = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        return self.model_prompts[key] if key is not None else None

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        texts, images = [], []
        for batch in inputs:  # collect first: one Embedder.encode call sorts all texts by length
            texts += list(batch.get("text") or [])
            images += list(batch.get("image") or [])
        embedder = self._embedder(self.template_for(task_metadata, prompt_type))
        options = {"batch_size": kwargs.get("batch_size", self.batch_size),
                   "progress": bool(kwargs.get("show_progress_bar", False)), "to_numpy": True}
        if images and texts:
            vectors = embedder.encode(composed=list(zip(images, texts, strict=True)), **options)
        elif images:
            vectors = embedder.encode(images=images, **options)
        else:
            vectors = embedder.encode(texts=texts, **options)
        return vectors.astype(np.float32, copy=False)

    def _embedder(self, template: str | None):
        """The base embedder, or one with `template` as its text prompt (same weights, built once)."""
        base = self.model
        if template is None or template == base.prompts.text:
            return base
        if template not in self._by_template:
            inner = base.embedder
            prompts = dataclasses.replace(base.prompts, text=template)
            wrapped = MLLMEmbedder(base.backbone, prompts, pooler=inner.pooler, featurizer=inner.featurizer)
            # Same options as the base; a prefix cache only where the base could use one.
            self._by_template[template] = type(base)(
                wrapped, prefix_cache="auto" if base.prefix is not None else False, prefetch=base.prefetch,
                channels_last=False, image_chunk=base.image_chunk, truncate_dim=base.truncate_dim,
            )
        return self._by_template[template]


class LocalSTSTask(AbsTaskSTS):
    """An mteb STS task over sentence pairs already in memory (an `STSPairs`, e.g. from `read_stsb`).

    `LocalSTSTask.from_pairs(pairs)` makes the task; nothing is downloaded: `load_data` builds the split
    from the pairs. mteb normalises the gold scores to 0-1 ((score - min_score) / (max_score - min_score));
    Spearman does not change under that.
    """

    min_score = 0
    max_score = 5

    @classmethod
    def from_pairs(cls, pairs, name: str = "STSBenchmarkLocal", split: str = "test", **kwargs) -> LocalSTSTask:
        # mteb keeps a task's metadata on its class (unload_data drops the instance's copy and falls back
        # to it), so each named task is its own subclass.
        metadata = TaskMetadata(
            name=name,
            description=f"{pairs.name}: {len(pairs)} sentence pairs read by mmembed from local files.",
            dataset={"path": str(pairs.meta.get("path", pairs.name)), "revision": "local"},
            type="STS",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=["eng-Latn"],
            main_score="cosine_spearman",
        )
        task_cls = type(name, (cls,), {"metadata": metadata, "__module__": __name__})
        return task_cls(pairs=pairs, split=split, **kwargs)

    def __init__(self, pairs, split: str = "test", **kwargs):
        if not hasattr(type(self), "metadata"):
            raise ConfigError("make a LocalSTSTask with LocalSTSTask.from_pairs(pairs, name=...)")
        self.pairs, self.split = pairs, split
        super().__init__(**kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        rows = {"sentence1": list(self.pairs.sentences1), "sentence2": list(self.pairs.sentences2),
                "score": [float(s) for s in self.pairs.scores]}
        self.dataset = DatasetDict({self.split: Dataset.from_dict(rows)})
        self.data_loaded = True
