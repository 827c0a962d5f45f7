"""Run folders: writable output, resume paths, and what a full disk looks like."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from omegaconf import DictConfig

from mmembed.errors import DataConfigError, MMEmbedError

MIN_FREE_BYTES = 2 * 2**30  # adapters and logs are small; refuse to start on a nearly full disk


class OutputDirError(MMEmbedError, RuntimeError):
    """The output folder cannot hold the run's results."""


def ensure_writable(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Fail before any work if the output folder cannot be written or its disk is nearly full."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one probe per process: every DDP rank checks the same folder at once (a shared name raced: one rank
        # unlinked the file another had just written, and failed the whole run)
        probe = path / f".write-probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output folder {path} is not writable ({err.strerror}); set hydra.run.dir") from err
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise OutputDirError(f"only {free / 2**30:.1f} GiB free under {path}; need {min_free_bytes / 2**30:.0f} GiB")
    return path


def last_checkpoint(cfg: DictConfig, out: Path) -> Path:
    """Where this run's ModelCheckpoint keeps `last.ckpt` (it may not exist yet)."""
    checkpoint_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return Path(checkpoint_cfg.get("dirpath") or out / "checkpoints") / "last.ckpt"


def disk_full_cause(err: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind `err`, if any. torch.save reports a full disk as a RuntimeError
    ("unexpected pos ...") raised while handling the OSError, so the cause/context chain is searched."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig, out: Path) -> str | None:
    """`ckpt_path=last` -> `<checkpoint dir>/last.ckpt` of this run folder, refusing to silently start over.

    Lightning alone would warn and train from scratch when "last" finds nothing (e.g. a wrong
    `hydra.run.dir`). Checkpoints are torch pickles: resume only from files you (or this project) wrote.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = last_checkpoint(cfg, out)
        if not last.is_file():
            raise DataConfigError(
                f"ckpt_path=last but {last} does not exist: set hydra.run.dir to the interrupted run's folder "
                "(the one holding checkpoints/last.ckpt), or ckpt_path to a checkpoint file"
            )
        return str(last)
    if ckpt_path in ("best", "hpc") or "://" in str(ckpt_path):
        return ckpt_path
    if not Path(ckpt_path).is_file():
        raise DataConfigError(f"ckpt_path={ckpt_path!r} is not a file")
    return str(ckpt_path)
