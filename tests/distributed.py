"""The two ways the suite starts several gloo processes on CPU, in one place.

- `run_distributed(target, tmp_path)`: `torch.multiprocessing.spawn` (fresh interpreters, never fork)
  with a `file://` rendezvous in the test's own folder, so no TCP port is chosen at all; each rank
  runs `target(rank, world) -> dict`, saves it with `torch.save`, meets the others at a barrier and
  destroys its process group before it exits. Used by the loss and objective equivalence tests.
- `ddp_subprocess_env()`: the environment for a script that Lightning's `strategy=ddp` re-launches
  once per extra rank (tests/lit/harness.py, src/train.py, src/embed.py). Lightning's own port pick
  binds port 0, closes it and hands the number to rank 1; until rank 0's TCPStore binds it again the
  kernel may give that same number to any other socket on the machine (another test's gloo pair, a
  client connection), which then meets rank 1's rendezvous. The port chosen here lies below the
  kernel's ephemeral range, which bind(0) and connect() never hand out, and MASTER_ADDR is the IPv4
  loopback (no host-name or IPv6 resolution).
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from pathlib import Path

import torch

# Below Linux's default ephemeral range (32768-60999, /proc/sys/net/ipv4/ip_local_port_range).
FIXED_PORTS = range(20000, 32000)
LOOPBACK = "127.0.0.1"


def _entry(rank: int, world: int, init_file: str, out_dir: str, target) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(target(rank, world), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        gc.collect()  # drop finished collectives' work objects while the interpreter is whole
        dist.destroy_process_group()
    # The result is saved and every rank has passed the barrier. Skip interpreter finalization: gloo's
    # C++ threads can still be torn down there, and that teardown aborted rank 0 once in CI
    # ("terminate called without an active exception", SIGABRT after the work was done; upstream:
    # pytorch/pytorch#179291). Nothing of the test's happens after this point.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(target, tmp_path: Path, world: int = 2) -> list[dict]:
    """Run `target(rank, world) -> dict` on `world` gloo CPU processes; return each rank's dict."""
    import torch.multiprocessing as mp

    init_file = tmp_path / "rendezvous"
    if init_file.exists():
        os.remove(init_file)
    mp.spawn(_entry, args=(world, str(init_file), str(tmp_path), target), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def free_fixed_port() -> int:
    """A loopback TCP port below the ephemeral range that nothing listens on now (searched from a
    pid-dependent start, so concurrent test sessions try different ports first)."""
    span = len(FIXED_PORTS)
    for step in range(span):
        port = FIXED_PORTS.start + (os.getpid() * 7 + step) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TCPStore binds it
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port in {FIXED_PORTS.start}-{FIXED_PORTS.stop - 1} on {LOOPBACK}")


def ddp_subprocess_env() -> dict[str, str]:
    """os.environ for a script Lightning re-launches per rank: offline, loopback, a fixed free port."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MASTER_ADDR": LOOPBACK,
            "MASTER_PORT": str(free_fixed_port())}
