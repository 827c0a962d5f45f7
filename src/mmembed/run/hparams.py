"""Console and TensorBoard plumbing of a run: one handler per log line, flat hyperparameters."""

from __future__ import annotations

import logging
import warnings

from omegaconf import DictConfig, OmegaConf


class _NoAdvertisement(logging.Filter):
    """Lightning's "Tip: ... try installing litlogger" line is an advert, not information about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_library_logging() -> None:
    """Lightning attaches its own console handlers; under Hydra (which logs to console and a file)
    every line would print twice. Let its records flow to Hydra's handlers only. Lightning's
    "Found N module(s) in eval mode" notice is about the modules mmembed freezes on purpose (the vision
    tower, a dropped projector): silenced, nothing else."""
    import lightning  # noqa: F401  (importing it attaches the handlers removed below)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    # Deprecations inside the libraries' own calls (peft's `is_gradient_checkpointing`, Lightning's pytree
    # helper), which a user cannot act on.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).* is deprecated.*")


def flat_hparams(cfg: DictConfig) -> dict:
    """Scalar config values as dotted keys, for TensorBoard's HParams tab."""
    flat = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif isinstance(value, (int, float, str, bool)) or value is None:
                flat[name] = "null" if value is None else value
            else:
                flat[name] = str(value)

    container = OmegaConf.to_container(cfg, resolve=True)
    walk({k: v for k, v in container.items() if k not in ("paths", "callbacks", "logger", "hydra")}, "")
    return flat
