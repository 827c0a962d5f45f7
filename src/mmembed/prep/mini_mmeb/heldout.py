"""The held-out filter at build time: no mini-MMEB training file holds an evaluation sentence.

Training already drops such rows (data/heldout.py, `heldout:` of conf/data/mini_mmeb_train.yaml); the built
files drop them too, so the files themselves are clean whatever reads them. The same filter is used
(`drop_heldout_rows`: a cell that is an evaluation sentence, or wraps one after an instruction such as
"Find me an everyday image that matches the given caption: <caption>"), over the sentences of the
evaluation sets named in conf/heldout/local.yaml.
"""

from __future__ import annotations

from pathlib import Path

from mmembed.data.heldout import drop_heldout_rows, heldout_sentences

# The text cells of an MMEB training row (tasks.train_row)
TEXT_COLUMNS = ["qry", "pos_text", "neg_text"]
CONF_DIR = Path(__file__).resolve().parents[4] / "conf"


def configured_heldout(data_root: str | Path) -> frozenset[str]:
    """The sentences of conf/heldout/local.yaml's evaluation sets under `data_root` (what training holds out)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_root={Path(data_root)}", "heldout=local"])
    return heldout_sentences(OmegaConf.to_container(cfg.heldout.sources, resolve=True))


def drop_heldout_train_rows(files: dict[str, list[dict]], heldout: frozenset[str]) -> dict[str, int]:
    """Drop, in place, the rows of every `train/` file holding a held-out sentence; {dataset: rows dropped}."""
    dropped = {}
    for key in sorted(k for k in files if k.startswith("train/")):
        files[key], dropped[key.removeprefix("train/")] = drop_heldout_rows(files[key], TEXT_COLUMNS, heldout)
    return dropped
