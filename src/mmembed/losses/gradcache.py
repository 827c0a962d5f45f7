"""GradCache (Gao et al. 2021, arXiv 2101.06983): a large contrastive batch in small-memory chunks.

Gradient accumulation adds no negatives (DESIGN rule 4); GradCache does, with the exact gradients
of the full-batch loss:
  1. embed every chunk under `torch.no_grad()`, recording the RNG state before each chunk; the
     last chunk alone is embedded with grad and its graph kept (it then needs no re-run);
  2. compute the loss on the detached full embeddings (leaves with requires_grad), backward it to
     get d loss / d embedding (the "cache");
  3. backpropagate the surrogate `(emb_chunk * cached_grad_chunk).sum()`, whose gradient with
     respect to the chunk's embeddings is exactly the cached gradient: first through the kept
     graph, then through every other chunk re-run with grad from its RNG state, so dropout draws
     the same masks.
Parameter gradients accumulate in `.grad` across chunks; the caller then steps the optimizer.
Peak activation memory is one chunk's graph instead of the whole batch's. Compute is one extra
forward of all chunks but the kept one: with n chunks, (n - 1) / n of a forward pass.

Plain torch; usable from a LightningModule with `automatic_optimization = False`:

    def training_step(self, batch, _):
        opt = self.optimizers(); opt.zero_grad()
        loss = grad_cache_step(
            self.embed, [batch["query"], batch["positive"], batch["negative"]],
            lambda q, p, n: info_nce(q, p, n, self.tau, cross_device=True),
            chunk_size=self.chunk_size,
            backward_fn=self.manual_backward,               # Lightning's precision/DDP hooks
            no_sync=self.trainer.strategy.block_backward_sync,  # DDP: sync grads once
        )
        opt.step(); self.log("train/loss", loss)

DDP: gather candidates inside `loss_fn` (`info_nce(..., cross_device=True)`): step 2 is then one
collective backward on every rank. Step 3 must all-reduce the parameter gradients exactly once,
with the final backward: the kept chunk (forward in step 1, backward first in step 3) and every
re-run chunk but the final one run (forward *and* backward) inside `no_sync()`, where DDP only
accumulates locally; the final re-run's backward then all-reduces the accumulated `.grad` of every
parameter. With a single chunk, the kept chunk is that final one. Plain torch DDP: pass
`encode=ddp_model` (the forward must go through the wrapper) and `no_sync=ddp_model.no_sync`. This
needs every parameter to take part in the final chunk's forward (true for one shared encoder; with
`find_unused_parameters=True` unused ones are reduced as zeros and the accumulated grads of
parameters unused in the final chunk would be lost).
Every rank must have the same number of chunks. Parameters inside `loss_fn` (a learnable temperature)
get their gradient in step 2 by a plain backward that DDP does not see: keep them outside the DDP
module or all-reduce them yourself. fp16 loss scaling only reaches step 3; prefer bf16.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

Batch = Any  # a Tensor, a Mapping of tensors (e.g. a tokenizer's BatchEncoding) or a list/tuple


def batch_len(batch: Batch) -> int:
    """Number of samples in a batch (dim 0 of tensors, length of lists)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value.shape[0]
        for value in batch.values():
            if isinstance(value, (list, tuple)):
                return len(value)
        raise ValueError("cannot infer the batch size of a mapping without tensors or lists")
    return len(batch)


def split_batch(batch: Batch, chunk_size: int) -> list[Batch]:
    """Split along the sample dimension into chunks of at most `chunk_size` samples.

    Mappings are split value by value (tensors and lists whose length is the batch size; other
    values, e.g. flags, are copied into every chunk) and come back as plain dicts.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = batch_len(batch)
    starts = range(0, n, chunk_size)
    if isinstance(batch, torch.Tensor):
        return list(batch.split(chunk_size))
    if isinstance(batch, Mapping):

        def cut(value, i):
            sized = isinstance(value, (torch.Tensor, list, tuple)) and (
                not isinstance(value, torch.Tensor) or value.dim() > 0
            )
            return value[i : i + chunk_size] if sized and len(value) == n else value

        return [{key: cut(value, i) for key, value in batch.items()} for i in starts]
    return [batch[i : i + chunk_size] for i in starts]


class RngState:
    """The CPU RNG state and, when CUDA is initialised, every CUDA device's, captured at construction.

    `with state.replay():` runs its body from the captured state and afterwards puts the global RNG
    back where it was, so replaying does not shift the random stream of the rest of training.
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=list(range(len(self.cuda)))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _default_backward(surrogate: torch.Tensor) -> None:
    surrogate.backward()


def grad_cache_step(
    encode: Callable[[Batch], torch.Tensor] | Sequence[Callable[[Batch], torch.Tensor]],
    inputs: Sequence[Batch],
    loss_fn: Callable[..., torch.Tensor],
    chunk_size: int,
    *,
    backward_fn: Callable[[torch.Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    split_fn: Callable[[Batch, int], list[Batch]] = split_batch,
) -> torch.Tensor:
    """Accumulate into `.grad` the exact gradients of `loss_fn(*[encode(x) for x in inputs])`.

    encode: one function for all input groups, or one per group; maps a chunk to [n, D] embeddings.
    inputs: the input groups, e.g. [queries, positives, hard_negatives], each a whole batch.
    loss_fn: called once with the full embeddings of every group, in order; returns a scalar.
    chunk_size: samples per encoder call (each group is split separately).
    backward_fn: runs the backward of each chunk's scalar surrogate (default `Tensor.backward`;
        Lightning: `self.manual_backward`). The loss itself is backpropagated with a plain backward,
        which only reaches the embeddings (and any parameters of `loss_fn`).
    no_sync: context factory wrapped around every chunk's forward and backward except the final
        backward's (DDP's `no_sync`), so gradients are all-reduced once.
    Returns the loss, detached. Does not zero gradients or step an optimizer.
    """
    encoders = list(encode) if isinstance(encode, Sequence) else [encode] * len(inputs)
    if len(encoders) != len(inputs):
        raise ValueError(f"got {len(encoders)} encode functions for {len(inputs)} input groups")
    backward_fn = backward_fn or _default_backward
    chunks = [split_fn(group, chunk_size) for group in inputs]
    order = [(g, c) for g, group_chunks in enumerate(chunks) for c in range(len(group_chunks))]
    kept, replayed = order[-1], order[:-1]
    final = replayed[-1] if replayed else kept  # DDP all-reduces on this backward only

    def sync_ctx(position: tuple[int, int]):
        return contextlib.nullcontext() if no_sync is None or position == final else no_sync()

    # 1. embed without grad, remembering each chunk's RNG state. The last chunk is embedded with
    #    grad and its graph kept for step 3: it needs no replay, which saves one of the n re-run
    #    forwards (a third of GradCache's extra cost at 3 chunks) for one chunk's graph held
    #    through the loss, which is no more than step 3's peak.
    rng_states: dict[tuple[int, int], RngState] = {}
    embs: list[list[torch.Tensor]] = [[] for _ in chunks]
    kept_emb = None
    for g, c in order:
        if (g, c) == kept:
            with sync_ctx(kept):
                kept_emb = encoders[g](chunks[g][c])
            embs[g].append(kept_emb.detach())
        else:
            rng_states[g, c] = RngState()
            with torch.no_grad():
                embs[g].append(encoders[g](chunks[g][c]))
    cached = [torch.cat(group_embs, dim=0).detach().requires_grad_(True) for group_embs in embs]

    # 2. loss on the full (detached) embeddings -> gradient cache
    loss = loss_fn(*cached)
    loss.backward()
    # a group that does not influence the loss gets zeros (its chunks still run: DDP expects them)
    grads = [cache.grad if cache.grad is not None else torch.zeros_like(cache) for cache in cached]
    starts = [list(itertools.accumulate((batch_len(x) for x in group[:-1]), initial=0)) for group in chunks]

    def push(position: tuple[int, int], emb: torch.Tensor) -> None:
        g, c = position
        grad_chunk = grads[g][starts[g][c] : starts[g][c] + emb.shape[0]]
        backward_fn((emb * grad_chunk.to(emb.dtype)).sum())

    # 3. push the cached gradient into the parameters: the kept graph first (freeing it), then
    #    every other chunk re-run with grad from its RNG state so dropout draws the same masks.
    with sync_ctx(kept):
        push(kept, kept_emb)
    del kept_emb
    for g, c in replayed:
        with sync_ctx((g, c)), rng_states[g, c].replay():
            push((g, c), encoders[g](chunks[g][c]))
    return loss.detach()
