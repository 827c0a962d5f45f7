"""Captioner and src/caption.py on the tiny MM-GEM model: greedy decoding equals a hand-written argmax loop,
beam search runs, and the CLI writes captions with their references and BLEU/CIDEr scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.inference.captioner import Captioner
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.mmgem.extension import MMGEMExtension
from mmembed.models.prompts import PromptConfig
from tests.conftest import REPO

PROMPTS = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def greedy_by_hand(embedder, image, steps: int) -> str:
    """The reference decoder: argmax over the model's last-position logits, one token at a time."""
    tokenizer, model = embedder.featurizer.tokenizer, embedder.model.eval()
    inputs = embedder.featurizer.generation_inputs([image], "<image>")
    ids, produced = inputs["input_ids"], []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"],
                           attention_mask=torch.ones_like(ids)).logits[:, -1]
            token = int(logits.argmax(-1))
            if token == tokenizer.eos_token_id:
                break
            produced.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(produced, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def mmgem(tiny_smol_llava_dir):
    return build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=PROMPTS, extension=MMGEMExtension()))


def test_greedy_captions_equal_an_argmax_loop_over_the_models_logits(mmgem):
    images, steps = _images(2), 6
    got = Captioner(mmgem, instruction="<image>", max_new_tokens=steps).caption(images, batch_size=2)
    for image, caption in zip(images, got):
        assert caption == greedy_by_hand(mmgem, image, steps)
    beams = Captioner(mmgem, instruction="<image>", max_new_tokens=steps, num_beams=3).caption(images)
    assert len(beams) == 2 and all(isinstance(c, str) for c in beams)
    with pytest.raises(ValueError, match="num_beams"):
        Captioner(mmgem, num_beams=0)


@pytest.mark.slow  # two src/caption.py processes, each starting Python, Hydra and the model
def test_caption_cli_writes_captions_references_and_scores(tiny_smol_llava_dir, tmp_path, data_root):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MMEMBED_DATA": str(data_root)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "caption.py"), "model=mmgem", "prompt=mmgem",
         f"model.name_or_path={tiny_smol_llava_dir}", "images.max_images=3",
         "generation.max_new_tokens=4", "scoring.java_scorers=false", "scoring.tokenizer=simple", "progress=false",
         f"hydra.run.dir={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "scores.json").read_text())["generation"]["instruction"] == "<image>"  # model=mmgem's
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["references"]) == 5 for r in rows)
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert scores["num_images"] == 3 and scores["scorers"] == ["BLEU", "CIDEr"] and scores["tokenizer"] == "simple"
    assert {"BLEU-1", "BLEU-4", "CIDEr"} <= set(scores)
    bad = subprocess.run([sys.executable, str(REPO / "src" / "caption.py"), "benchmark=nope", f"hydra.run.dir={out}2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    said = bad.stdout + bad.stderr  # Hydra logs to stdout
    # an unknown benchmark is a config-group choice Hydra refuses itself, naming the group, without a traceback
    assert bad.returncode == 1 and "Could not find 'benchmark/nope'" in said and "Traceback" not in said
    text_only = subprocess.run([sys.executable, str(REPO / "src" / "caption.py"), "benchmark=sts12",
                                f"hydra.run.dir={out}3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    said = text_only.stdout + text_only.stderr
    assert text_only.returncode == 2 and "has no caption file to caption" in said and "Traceback" not in said


@pytest.mark.slow  # two src/caption.py processes, each starting Python, Hydra and the model
def test_caption_cli_captions_one_box_of_one_image(tiny_smol_llava_dir, tmp_path, data_root):
    image = tmp_path / "photo.png"
    _images(1)[0].save(image)  # 48 wide x 40 high
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MMEMBED_DATA": str(data_root)}
    base = [sys.executable, str(REPO / "src" / "caption.py"), "model=mmgem", "prompt=mmgem",
            f"model.name_or_path={tiny_smol_llava_dir}", "model.inference_dtype=float32",
            "generation.max_new_tokens=4", f"region.image={image}"]
    out = tmp_path / "run"
    proc = subprocess.run(base + ["region.box=[4,2,30,38]", f"hydra.run.dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((out / "region_caption.json").read_text())
    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=PROMPTS,
                                        extension=MMGEMExtension()))
    expected = Captioner(embedder, instruction="<image>", max_new_tokens=4).caption(
        [Image.open(image).convert("RGB")], boxes=[(4, 2, 30, 38)])[0]
    assert written["box"] == [4.0, 2.0, 30.0, 38.0] and written["caption"] == expected
    bad = subprocess.run(base + ["region.box=[4,2,30]", f"hydra.run.dir={out}2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    said = bad.stdout + bad.stderr
    assert bad.returncode == 2 and "region.box=[4, 2, 30]" in said and "Traceback" not in said
