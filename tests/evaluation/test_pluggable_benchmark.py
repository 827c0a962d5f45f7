"""A benchmark is a plug-in: a class defined here (in the test file, nowhere else), named by `_target_` in a YAML the
test writes, runs in a suite through src/eval.py's own code path (compose -> benchmark_list -> check ->
evaluate_suite), next to a benchmark of the project's conf/benchmark/."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.encode import encode_texts
from tests.conftest import REPO
from tests.scripts import load_script

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


class FirstLetterEmbedder:
    """Text -> the one-hot vector of its first letter: two texts agree exactly when their first letters do."""

    modalities = ("text",)

    def eval(self):
        return self

    def encode_text(self, texts):
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(ALPHABET.index(t[0])), 26).float()
                            for t in texts])


@dataclass(kw_only=True)
class SameLetterBenchmark(Benchmark):
    """Percent of `pairs` whose two texts embed to cosine > `threshold`."""

    pairs: list[list[str]]
    threshold: float = 0.5
    task = "same_letter"

    def check(self):
        return self.pairs

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        left = encode_texts(embedder, [a for a, _ in self.pairs], batch_size, progress=progress)
        right = encode_texts(embedder, [b for _, b in self.pairs], batch_size, progress=progress)
        agree = (torch.nn.functional.cosine_similarity(left, right) > self.threshold).float().mean()
        return {"metrics": {"agree": round(100 * float(agree), 4)},
                "protocol": {"task": self.task, "pairs": len(self.pairs), "threshold": self.threshold}}


def test_a_benchmark_defined_in_a_test_runs_in_a_suite_from_its_own_yaml(tmp_path):
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    (conf / "benchmark").mkdir(parents=True)
    (conf / "eval").mkdir()
    (conf / "benchmark" / "same_letter.yaml").write_text(
        f"_target_: {__name__}.SameLetterBenchmark\n"
        "pairs: [[apple, avocado], [banana, cherry], [cat, cow], [dog, emu]]\nthreshold: 0.5\n"
    )
    (conf / "eval" / "toy.yaml").write_text(
        "defaults:\n  - /benchmark/same_letter@benchmarks.letters\n  - /benchmark/flickr8k_1k_test@benchmarks.f8k\n"
        "  - _self_\nsuite: toy\n"
    )
    eval_script = load_script("src/eval.py", "eval_script_pluggable")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=toy", f"hydra.searchpath=[file://{conf}]", f"paths.output_dir={tmp_path / 'out'}",
                               f"+model.embedder._target_={__name__}.FirstLetterEmbedder", "+model.modalities=[text]",
                               "eval.benchmarks.letters.threshold=0.9", "progress=false"])
    results = eval_script.main.__wrapped__(cfg)
    # the text-only embedder runs the benchmark that needs only texts; the image one is skipped, by capability
    assert list(results["benchmarks"]) == ["letters"]
    entry = results["benchmarks"]["letters"]
    assert entry["metrics"] == {"agree": 50.0}  # apple/avocado and cat/cow
    assert entry["protocol"] == {"task": "same_letter", "pairs": 4, "threshold": 0.9}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["suite"] == "toy" and saved["benchmarks"]["letters"]["metrics"] == {"agree": 50.0}
