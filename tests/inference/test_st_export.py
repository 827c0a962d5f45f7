"""export.py --format sentence_transformers: SentenceTransformer(folder) gives mmembed's vectors; the model card
carries the run's numbers; --push-to-hub fails at once, in one line, offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mmembed.errors import ConfigError
from mmembed.inference import Embedder
from mmembed.inference.cli import main
from mmembed.inference.export import HubUnreachableError, push_to_hub
from mmembed.inference.st_export import export_sentence_transformers, split_prompt
from mmembed.models.prompts import PromptConfig, PromptRenderer
from tests.conftest import REPO
from tests.inference.conftest import noise_image
from tests.tiny_models import TINY_FAMILIES, build_tiny

# Different lengths in one batch: left padding and the last-token position must match mmembed's.
TEXTS = ["A man plays a guitar.", "Two dogs run on the beach in the sun, chasing a red ball.", "soup",
         "  two  spaces ", 'braces {x} {{ y }} and "quotes" ü']
E5V = {k: v for k, v in yaml.safe_load((REPO / "conf/prompt/e5v.yaml").read_text()).items()}


def cosines(a, b) -> torch.Tensor:
    return (torch.as_tensor(a, dtype=torch.float32) * torch.as_tensor(b, dtype=torch.float32)).sum(-1)


def random_lora(model_dir: Path, out: Path) -> Path:
    """A saved LoRA adapter with random (non-zero) lora_B, so it changes the vectors."""
    from mmembed.models.backbones import load_backbone
    from mmembed.models.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(load_backbone(str(model_dir)).model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


@pytest.mark.slow  # builds, adapts, exports and loads one tiny model per family
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_sentence_transformers_folder_matches_embedder(family, smol_tokenizer_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import is_torchvision_available

    model_dir = build_tiny(family, smol_tokenizer_dir, tmp_path / family)
    adapter = random_lora(model_dir, tmp_path / "adapter")
    # E5-V's literal Llama-3 turn + BOS for its own layout (LLaVA-NeXT); the tokenizer's chat template elsewhere
    prompts = E5V if family == "llava_next" else None
    out = tmp_path / "st"
    if family == "qwen2_vl" and not is_torchvision_available():
        # transformers builds Qwen2-VL's processor (which ST loads with AutoProcessor) only with torchvision
        with pytest.raises(ConfigError, match="torchvision"):
            export_sentence_transformers(out, adapter, model=model_dir, prompts=prompts)
        return
    export_sentence_transformers(out, adapter, model=model_dir, prompts=prompts)
    info = json.loads((out / "mmembed_export.json").read_text())
    assert info["format"] == "sentence_transformers" and info["pooling"] == "lasttoken"
    assert (out / "modules.json").is_file() and (out / "README.md").is_file()

    st = SentenceTransformer(str(out), device="cpu")
    reference = Embedder.from_pretrained(model_dir, adapter=adapter, merge_adapter=False, dtype="float32",
                                         prompts=prompts)
    base = Embedder.from_pretrained(model_dir, dtype="float32", prompts=prompts)
    vectors = st.encode(TEXTS, batch_size=8)
    assert float(cosines(vectors, reference.encode(texts=TEXTS)).min()) >= 0.9999
    # the adapter is in the weights: the base model's vectors differ
    assert float(cosines(vectors, base.encode(texts=TEXTS)).min()) < 0.999
    # one text prompt: queries and documents are encoded alike
    assert float(cosines(st.encode_query(TEXTS[:2]), vectors[:2]).min()) >= 0.9999
    assert float(cosines(st.encode_document(TEXTS[:2]), vectors[:2]).min()) >= 0.9999

    expected = {"smol_llava": ["text"], "causal_lm": ["text"]}.get(family, ["text", "image", "image+text"])
    assert info["modalities"] == expected
    if "image" not in expected:
        with pytest.raises(ValueError, match="not supported"):
            st.encode([noise_image(0)])
        return
    images = [noise_image(seed, size=(40 + 12 * seed, 48)) for seed in range(3)]
    assert float(cosines(st.encode(images), reference.encode(images=images)).min()) >= 0.9999
    pairs = [{"image": image, "text": text} for image, text in zip(images, TEXTS)]
    composed = reference.encode(composed=[(p["image"], p["text"]) for p in pairs])
    assert float(cosines(st.encode(pairs), composed).min()) >= 0.9999


FRESH = """
import sys, numpy as np
sys.modules["mmembed"] = None  # the folder must run without mmembed: any import of it fails
from PIL import Image
from sentence_transformers import SentenceTransformer
folder, out, images = sys.argv[1], sys.argv[2], [Image.open(p).convert("RGB") for p in sys.argv[3:]]
st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
np.save(out + "_texts.npy", st.encode({texts!r}))
np.save(out + "_images.npy", st.encode(images))
"""


@pytest.mark.slow  # exports, then loads the folder in a fresh process
def test_default_family_with_remote_code_encodes_images_without_mmembed(
    tiny_dir, lora_adapter_dir, image_folder, tmp_path, capsys
):
    import subprocess
    import sys

    import numpy as np

    out = tmp_path / "st_rc"
    assert main("export", ["--model", str(tiny_dir), "--adapter", str(lora_adapter_dir), "--out", str(out),
                           "--format", "sentence_transformers", "--trust-remote-code"]) == 0
    assert "SentenceTransformer(" in capsys.readouterr().out
    code = sorted(p.name for p in out.glob("*.py"))
    assert "smol_llava_modeling.py" in code
    assert not any("import mmembed" in (out / n).read_text() or "from mmembed" in (out / n).read_text() for n in code)
    info = json.loads((out / "mmembed_export.json").read_text())
    assert info["trust_remote_code"] and info["modalities"] == ["text", "image", "image+text"]
    assert "trust_remote_code=True" in (out / "README.md").read_text()

    images = [str(p) for p in sorted(image_folder.iterdir())[:3]]
    script = tmp_path / "fresh.py"
    script.write_text(FRESH.format(texts=TEXTS))
    proc = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "st"), *images],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = Embedder.from_pretrained(tiny_dir, adapter=lora_adapter_dir, merge_adapter=False, dtype="float32")
    for modality, items in (("texts", TEXTS), ("images", images)):
        vectors = np.load(tmp_path / f"st_{modality}.npy")
        assert float(cosines(vectors, reference.encode(**{modality: items})).min()) >= 0.9999, modality


def test_trust_remote_code_needs_the_st_format(tiny_dir, tmp_path, capsys):
    code = main("export", ["--model", str(tiny_dir), "--out", str(tmp_path / "x"), "--trust-remote-code"])
    assert code == 2 and "--format sentence_transformers only" in capsys.readouterr().err


@pytest.mark.slow  # exports the real 135M-parameter default model
def test_default_model_texts(default_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = export_sentence_transformers(tmp_path / "default_st", None, model=default_model_dir)
    st = SentenceTransformer(str(out), device="cpu")
    reference = Embedder.from_pretrained(default_model_dir, dtype="float32")
    assert float(cosines(st.encode(TEXTS), reference.encode(texts=TEXTS)).min()) >= 0.9999
    card = (out / "README.md").read_text()
    assert "texts only" in card and "not zero-shot" in card  # the label-word base's limitation


def test_prompt_that_rewrites_its_text_is_refused():
    class TrimmingTokenizer:
        chat_template = "trim"
        bos_token = None

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "<user>" + messages[-1]["content"].strip() + "</user>"

    renderer = PromptRenderer(PromptConfig(), TrimmingTokenizer())
    with pytest.raises(ConfigError, match="changes the text"):
        split_prompt(renderer, "text")
    e5v = PromptConfig.from_mapping({**E5V, "bos": False})  # the BOS needs a real tokenizer; its place is tested per family
    before, after = split_prompt(PromptRenderer(e5v, None), "text")
    assert before == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert after == "\nSummary above sentence in one word: <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"


# ---- the model card ----
RESULTS = {
    "model": "tiny", "adapter": "x",
    "benchmarks": {
        "stsb": {"metrics": {"spearman": 40.736},
                 "protocol": {"task": "sts", "setting": "split dev", "pairs": 1500,
                              "score": "Spearman x 100 of cosine similarity vs gold"}},
        "flickr8k_1k_test": {"metrics": {"t2i_R@1": 16.6667, "t2i_R@5": 83.3333, "i2t_R@10": 66.6667},
                             "protocol": {"task": "retrieval", "split": "test", "split_images": 1000}},
    },
}
CONFIG = {"task_name": "card_test", "model": {"name_or_path": "default"},
          "objective": {"_target_": "mmembed.objectives.matryoshka.Matryoshka", "dims": [64, 32, 16],
                        "objective": {"_target_": "mmembed.objectives.TextPairInfoNCE"}},
          "lora": {"enabled": True, "r": 4},
          "data": {"source": {"_target_": "mmembed.data.sources.text_pairs.TextPairSource"},
                   "train_files": ["/data/triplets.csv"], "batch_size": 4}}


@pytest.fixture
def fake_run(lora_adapter_dir, tmp_path) -> Path:
    """<run>/adapters/last (with a base_adapter/ chain), .hydra/config.yaml, train_summary.json, eval/results.json."""
    run = tmp_path / "run"
    last = run / "adapters" / "last"
    shutil.copytree(lora_adapter_dir, last)
    shutil.copytree(lora_adapter_dir, last / "base_adapter")
    (last / "base_adapter" / "mmembed_model.json").write_text(json.dumps({"base": "the-first-base"}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run / "train_summary.json").write_text(json.dumps({"objective": "Matryoshka", "global_step": 7,
                                                        "train_rows": 1234}))
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS))
    return run


def test_model_card_carries_the_runs_numbers(tiny_dir, fake_run, tmp_path, capsys):
    out = tmp_path / "exported"
    adapter = fake_run / "adapters" / "last"
    assert main("export", ["--model", str(tiny_dir), "--adapter", str(adapter), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    front, body = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S).groups()
    meta = yaml.safe_load(front)
    assert {"sentence-transformers", "feature-extraction", "mmembed"} <= set(meta["tags"])
    assert meta["base_model"] == str(tiny_dir) and meta["library_name"] == "transformers"

    # model-index: every metric of results.json, value for value, and nothing else
    index = {(r["dataset"]["name"], m["type"]): m["value"] for r in meta["model-index"][0]["results"]
             for m in r["metrics"]}
    expected = {(b, k): v for b, e in RESULTS["benchmarks"].items() for k, v in e["metrics"].items()}
    assert index == expected
    tasks = {r["dataset"]["name"]: r["task"]["type"] for r in meta["model-index"][0]["results"]}
    assert tasks == {"stsb": "sts", "flickr8k_1k_test": "retrieval"}
    # the body's tables: the same numbers, with each benchmark's protocol
    for bench, entry in RESULTS["benchmarks"].items():
        section = body.split(f"### {bench}\n")[1].split("\n### ")[0]
        table = dict(re.findall(r"^\| (\S+) \| ([-\d.eE]+) \|$", section, re.M))
        assert {k: float(v) for k, v in table.items()} == entry["metrics"]
        protocol = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
        assert protocol == entry["protocol"]
    # adapter chain, recipe, data rows, prompts, Matryoshka dims (card and mmembed_export.json)
    assert f"1. `{adapter.resolve()}`" in body
    assert f"2. `{(adapter / 'base_adapter').resolve()}` (trained on `the-first-base`)" in body
    assert "mmembed.objectives.matryoshka.Matryoshka" in body and "/data/triplets.csv" in body
    assert "train_rows (train_summary.json): `1234`" in body
    assert "Summary above sentence in one word: " in body
    assert "## Matryoshka dimensions" in body and "[64, 32, 16]" in body
    assert json.loads((out / "mmembed_export.json").read_text())["matryoshka_dims"] == [64, 32, 16]
    assert "not zero-shot" not in body  # the tiny base has no label-word projector


def test_model_card_without_a_run(tiny_dir, tmp_path):
    out = tmp_path / "exported"
    assert main("export", ["--model", str(tiny_dir), "--out", str(out)]) == 0
    body = (out / "README.md").read_text()
    assert "None: the base model's own weights." in body and "No eval/results.json" in body
    assert "model-index: []" in body and "## Matryoshka" not in body


def test_push_to_hub_offline_fails_at_once_in_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "never"
    code = main("export", ["--model", str(tiny_dir), "--out", str(out), "--format", "sentence_transformers",
                           "--push-to-hub", "someone/model"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()  # refused before any export work
    assert err.count("\n") == 1 and err.startswith("error: cannot push to someone/model: ") and "offline" in err


def test_push_to_hub_connection_error_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    import requests

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, *args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(HubUnreachableError) as caught:
        push_to_hub(tmp_path, "someone/model")
    assert str(caught.value) == "cannot push to someone/model: ConnectionError: Failed to resolve 'huggingface.co'"
