"""The README.md model card of an exported folder, in the Hub's layout: YAML front matter (tags, base_model,
library_name, model-index from the run's eval/results.json), then what the weights are and how they were made.

Everything comes from files: the export's provenance (mmembed_export.json), the adapter folder (its
base_adapter/ chain and mmembed_model.json), and the training run around it (<run>/adapters/last -> <run>:
.hydra/config.yaml, train_summary.json, eval/results.json; read by run_records.py). Numbers are written as results.json holds them
(json.dumps of the value), so the card and the run agree digit for digit.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmembed.inference.run_records import adapter_chain, matryoshka_dims, model_index, read_json, run_config, run_folder
from mmembed.models.prompts import PROMPTS_FILE

CARD_FILE = "README.md"
TAGS = ["sentence-transformers", "feature-extraction", "mmembed", "sentence-similarity"]


# ---- writing ----
def write_model_card(folder: str | Path, adapter: str | Path | None = None, repo_id: str | None = None) -> Path:
    """Write `folder`/README.md from the export's files and the run around `adapter` (if any)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    path.write_text(card_text(folder, adapter, repo_id), encoding="utf-8")
    return path


def card_text(folder: Path, adapter: str | Path | None = None, repo_id: str | None = None) -> str:
    provenance = read_json(folder / "mmembed_export.json") or {}
    run = run_folder(adapter)
    config = run_config(run)
    summary = read_json(run / "train_summary.json") if run else None
    results = read_json(run / "eval" / "results.json") if run else None
    name = repo_id or folder.name
    st_format = provenance.get("format") == "sentence_transformers"
    front = {
        "tags": TAGS,
        "library_name": "sentence-transformers" if st_format else "transformers",
        "pipeline_tag": "feature-extraction",
        "base_model": provenance.get("base_model"),
        "model-index": model_index(results, name),
    }
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n",
        f"# {name}\n\nAn mmembed embedding model: one vector space for texts"
        + (" and images" if "image" in provenance.get("modalities", ["text", "image"]) else "")
        + ", L2-normalised, compared by cosine similarity. Exported by `python src/export.py`"
        + (f" --format {provenance['format']}" if provenance.get("format") else "") + ".\n",
        _base_section(provenance),
        _adapter_section(adapter),
        _recipe_section(run, config),
        _data_section(config, summary),
        _prompts_section(folder),
        _results_section(results),
        _matryoshka_section(matryoshka_dims(config)),
        _usage_section(folder, provenance, st_format, repo_id),
        _limitations_section(provenance),
    ]
    return "\n".join(s for s in sections if s)


def _base_section(provenance: dict) -> str:
    lines = ["## Base model\n", f"- base model: `{provenance.get('base_model')}`"]
    if provenance.get("base_path"):
        lines.append(f"- loaded from: `{provenance['base_path']}`")
    lines.append(f"- weights dtype: {provenance.get('dtype', 'float32')}")
    if provenance.get("pooling"):
        lines.append(f"- pooling: {provenance['pooling']} (then L2 normalisation)")
    return "\n".join(lines) + "\n"


def _adapter_section(adapter) -> str:
    chain = adapter_chain(adapter)
    if not chain:
        return "## Adapter chain\n\nNone: the base model's own weights.\n"
    lines = ["## Adapter chain\n", "LoRA adapters folded into the weights, outermost first (each one was trained on "
             "top of the base model with the next one already merged in):\n"]
    for depth, item in enumerate(chain):
        base = f" (trained on `{item['base']}`)" if item["base"] else ""
        lines.append(f"{depth + 1}. `{item['path']}`{base}")
    return "\n".join(lines) + "\n"


def _recipe_section(run: Path | None, config: dict | None) -> str:
    if config is None:
        return "## Training recipe\n\nNo training run found next to the adapter (no <run>/.hydra/config.yaml).\n"
    pick = {key: config[key] for key in ("task_name", "model", "objective", "pooler", "lora", "optim", "prompt")
            if key in config}
    full = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return ("## Training recipe\n\n"
            f"Run folder: `{run}`. The settings that shape the model (from `.hydra/config.yaml`):\n\n"
            f"```yaml\n{yaml.safe_dump(pick, sort_keys=False, allow_unicode=True)}```\n\n"
            f"<details><summary>Full run config</summary>\n\n```yaml\n{full}```\n\n</details>\n")


def _data_section(config: dict | None, summary: dict | None) -> str:
    if config is None and summary is None:
        return ""
    lines = ["## Training data\n"]
    data = (config or {}).get("data") or {}
    source = data.get("source") or {}
    if isinstance(source, dict) and source.get("_target_"):
        lines.append(f"- source: `{source['_target_']}`")
    for key in ("train_files", "train_limit", "batch_size", "max_text_tokens"):
        if key in data:
            lines.append(f"- {key}: `{json.dumps(data[key])}`")
    for key, value in (summary or {}).items():
        if "rows" in key or key in ("global_step", "objective"):
            lines.append(f"- {key} (train_summary.json): `{json.dumps(value)}`")
    return "\n".join(lines) + "\n"


def _prompts_section(folder: Path) -> str:
    prompts = read_json(folder / PROMPTS_FILE)
    if prompts is None:
        return ""
    rows = [f"| {kind} | `{json.dumps(prompts[kind])[1:-1]}` |" for kind in
            ("text", "image", "cir_query", "cir_target", "fiq_query", "fiq_target") if kind in prompts]
    wrapping = {key: prompts.get(key) for key in ("format", "chat_template", "system", "bos", "suffix")}
    return ("## Prompts\n\nEvery input is wrapped in its prompt (`<sent>`: the text, `<image>`: the image), and the "
            "embedding is the last token's state. There is one text prompt: queries and documents are encoded "
            "alike.\n\n| kind | template |\n|---|---|\n" + "\n".join(rows)
            + f"\n\nWrapping: `{json.dumps(wrapping)}` (saved in `{PROMPTS_FILE}`).\n")


def _results_section(results: dict | None) -> str:
    benchmarks = (results or {}).get("benchmarks") or {}
    if not benchmarks:
        return "## Evaluation\n\nNo eval/results.json in the training run.\n"
    lines = ["## Evaluation\n", "From the run's `eval/results.json` (values as written there), each with its protocol.\n"]
    for bench, entry in benchmarks.items():
        lines.append(f"### {bench}\n\n| metric | value |\n|---|---|")
        for key, value in (entry.get("metrics") or {}).items():
            lines.append(f"| {key} | {json.dumps(value)} |")
        protocol = entry.get("protocol")
        if protocol:
            lines.append(f"\nProtocol:\n\n```json\n{json.dumps(protocol, indent=1, ensure_ascii=False)}\n```")
        lines.append("")
    return "\n".join(lines)


def _matryoshka_section(dims: list[int] | None) -> str:
    if not dims:
        return ""
    return ("## Matryoshka dimensions\n\n"
            f"Trained with objective=matryoshka at dims {json.dumps(dims)} (also in `mmembed_export.json`, "
            "`matryoshka_dims`): the first d coordinates, re-normalised, are an embedding of their own. Load with "
            f"`SentenceTransformer(path, truncate_dim={min(dims)})` for the smallest.\n")


def _usage_section(folder: Path, provenance: dict, st_format: bool, repo_id: str | None) -> str:
    where = repo_id or str(folder)
    code = ", trust_remote_code=True" if provenance.get("trust_remote_code") else ""
    lines = ["## Usage\n"]
    if code:
        lines.append("The folder ships the base model's modeling code (`smol_llava_*.py`, copied from mmembed): "
                     "loading it runs that code, hence `trust_remote_code=True`.\n")
    if st_format:
        lines.append("With sentence-transformers (no mmembed needed):\n\n```python\n"
                     "from sentence_transformers import SentenceTransformer\n\n"
                     f"model = SentenceTransformer({where!r}{code})\n"
                     'vectors = model.encode(["a dog running on the beach"])')
        if "image" in provenance.get("modalities", []):
            lines.append('image_vectors = model.encode([PIL.Image.open("dog.jpg")])\n'
                         'composed = model.encode([{"image": PIL.Image.open("dress.jpg"), "text": "make it red"}])')
        lines.append("```\n")
    lines.append(f"With mmembed:\n\n```python\nfrom mmembed import Embedder\n\nemb = Embedder.from_pretrained({where!r}{code})\n"
                 'vectors = emb.encode(texts=["a dog running on the beach"])\n```\n')
    return "\n".join(lines)


def _limitations_section(provenance: dict) -> str:
    lines = ["## Limitations\n", "- English prompts and training data; numbers above are from small local "
             "evaluation sets, with the protocols listed, not leaderboard submissions."]
    base_config = read_json(Path(provenance["base_path"]) / "config.json") if provenance.get("base_path") else None
    projector = (base_config or {}).get("projector_type")
    if projector in ("label_words", "grounded"):  # mmembed.models.smol_llava.projectors
        lines.append(f"- The base model's image projector ({projector}) reads each image through the ImageNet "
                     "classifier head of its vision tower (the names of its top ImageNet classes): ImageNet "
                     "classification numbers are not zero-shot.")
    if provenance.get("text_only_reason"):
        lines.append(f"- This folder encodes texts only: {provenance['text_only_reason']}. Use `--format merged` "
                     "and mmembed's Embedder for images.")
    return "\n".join(lines) + "\n"
