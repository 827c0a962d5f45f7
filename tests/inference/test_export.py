"""export.py: merge a LoRA adapter into the base, save, and load the folder in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmembed.inference import Embedder
from mmembed.inference.cli import main
from tests.conftest import REPO

TEXTS = ["A man plays a guitar.", "Two dogs run on the beach in the sun.", "A bowl of soup."]

FRESH = textwrap.dedent(
    """
    import sys, numpy as np
    from mmembed import Embedder
    folder, images, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
    emb = Embedder.from_pretrained(folder)
    texts = {texts!r}
    np.save(out + "_texts.npy", emb.encode(texts=texts, to_numpy=True))
    np.save(out + "_images.npy", emb.encode(images=images, to_numpy=True))
    """
)


@pytest.mark.slow  # a fresh Python process loads the exported model
def test_export_merged_loads_in_fresh_process_with_same_embeddings(
    tiny_dir, lora_adapter_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "exported"
    assert main("export", ["--model", str(tiny_dir), "--adapter", str(lora_adapter_dir), "--out", str(out)]) == 0
    assert "Embedder.from_pretrained" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "mmembed_prompts.json", "mmembed_export.json", "README.md"} <= names
    assert not any(n.startswith("adapter_") for n in names)
    assert json.loads((out / "mmembed_export.json").read_text())["adapter"] == str(lora_adapter_dir.resolve())

    images = [str(p) for p in sorted(image_folder.iterdir())[:3]]
    script = tmp_path / "fresh.py"
    script.write_text(FRESH.format(texts=TEXTS))
    env_path = f"{REPO / 'src'}:{REPO}"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *images, str(tmp_path / "fresh")],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1",
                                                          "PATH": "/usr/bin:/bin",
                                                          # float32 on both sides, as the suite pins it
                                                          "MMEMBED_CPU_PRECISION": "32-true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    with_adapter = Embedder.from_pretrained(tiny_dir, adapter=lora_adapter_dir, merge_adapter=False)
    base = Embedder.from_pretrained(tiny_dir)
    for modality, items in (("texts", TEXTS), ("images", images)):
        fresh = torch.from_numpy(np.load(tmp_path / f"fresh_{modality}.npy"))
        expected = with_adapter.encode(**{modality: items})
        cos = (fresh * expected).sum(-1)
        assert bool((cos >= 0.9999).all()), (modality, cos.tolist())
        # The adapter matters: the base model's vectors differ, so a dropped adapter would fail above.
        assert float((fresh * base.encode(**{modality: items})).sum(-1).min()) < 0.999


def test_export_refuses_non_empty_folder_and_non_adapter(tiny_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    code = main("export", ["--model", str(tiny_dir), "--adapter", str(tmp_path), "--out", str(tmp_path / "taken")])
    assert code == 2 and "not empty" in capsys.readouterr().err
    code = main("export", ["--model", str(tiny_dir), "--adapter", str(tmp_path), "--out", str(tmp_path / "new")])
    assert code == 2 and "not a LoRA adapter folder" in capsys.readouterr().err


def test_import_mmembed_is_lazy():
    code = textwrap.dedent(
        """
        import sys, mmembed
        assert "torch" not in sys.modules, "import mmembed imported torch"
        assert "Embedder" in dir(mmembed)
        from mmembed import Embedder, export_merged, load_index
        assert Embedder.__module__ == "mmembed.inference.embedder"
        try:
            mmembed.nothing_here
        except AttributeError as err:
            assert "nothing_here" in str(err)
        else:
            raise SystemExit("no AttributeError")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_default_model_matches_e5v_reference(default_model_dir, data_root):
    """The real default model: Embedder.encode vs E5-V's own recipe (full model, hidden_states[-1])."""
    import torch.nn.functional as F
    from PIL import Image

    emb = Embedder.from_pretrained(default_model_dir)
    lines = (data_root / "sts/original/STSBenchmark/sts-test.csv").read_text(encoding="utf-8").splitlines()[:6]
    texts = [c for line in lines for c in line.split("\t")[5:7]]
    paths = sorted((data_root / "flickr8k/images").glob("*.jpg"))[:3]
    renderer, processor, model = emb.embedder.renderer, emb.backbone.processor, emb.backbone.model
    with torch.no_grad():
        t_in = processor(text=[renderer.render("text", t) for t in texts], return_tensors="pt", padding=True,
                         add_special_tokens=False)
        i_in = processor(text=[renderer.render("image")] * 3, images=[Image.open(p).convert("RGB") for p in paths],
                         return_tensors="pt", padding=True, add_special_tokens=False)
        ref_t = F.normalize(model(**t_in, output_hidden_states=True).hidden_states[-1][:, -1].float(), dim=-1)
        ref_i = F.normalize(model(**i_in, output_hidden_states=True).hidden_states[-1][:, -1].float(), dim=-1)
    assert float((emb.encode(texts=texts, batch_size=4) * ref_t).sum(-1).min()) >= 0.9999
    assert float((emb.encode(images=paths) * ref_i).sum(-1).min()) >= 0.9999
