"""Shared prompt prefix, computed once per model instead of once per input.

Every E5-V prompt of a chat model starts with the same tokens: the chat template's system turn and
the opening of the user turn (24 of the ~50 tokens of a short sentence's prompt for SmolLM2). Their
keys and values are identical for every input, so `PrefixCache` computes them once and each batch
runs only the rest of its prompts through the decoder, attending to the cached prefix. Token ids,
positions and the attention mask are exactly those of the full prompt, so the embeddings equal the
plain forward's up to float rounding; `verify` checks that on probe inputs before the cache is used.

The prefix's last hidden states are the same for every input too (causal attention), so they are
cached as well: the embedder's pooler sees [prefix states; rest states] with the full mask and ids,
and a mean or `[EMB]`-token pooler gives what the plain forward gives, not only the last-token one.

Only the generic decoder interface is used (`past_key_values`, `attention_mask`, `position_ids`);
a batch whose rows do not all start with the prefix (or are not left padded) is not rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.models.pooling import LastTokenPooler, Pooler

log = logging.getLogger(__name__)

# Families whose decoder takes 1-D positions and a standard KV cache (Qwen2-VL's 3-D rope positions,
# Idefics3's and LLaVA-NeXT's image splitting are not rewritten).
PREFIX_FAMILIES = ("smol_llava", "llava", "causal_lm")
MIN_PREFIX_TOKENS = 4
# Probe texts for the common prefix: different first characters (incl. whitespace), so no BPE merge
# across the prefix boundary can sneak into the cached part.
PROBES = ("a", "Zebra 123", "\n x", " 7", "")


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest list of ids every row starts with."""
    if not rows:
        return []
    prefix = list(rows[0])
    for row in rows[1:]:
        n = 0
        while n < min(len(prefix), len(row)) and prefix[n] == row[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def text_prompt_prefix(renderer, tokenizer) -> list[int]:
    """Token ids shared by every text prompt (rendered and tokenised exactly as `featurize_text` does)."""
    prompts = [renderer.render("text", probe) for probe in PROBES]
    return common_prefix(tokenizer(prompts, add_special_tokens=False)["input_ids"])


class PrefixCache:
    """Keys/values of a fixed prompt prefix, and a forward pass that reuses them."""

    def __init__(
        self,
        body: nn.Module,
        prefix_ids: Sequence[int],
        pad_token_id: int,
        device: torch.device,
        pooler: Pooler | None = None,
    ):
        self.body = body
        self.ids = torch.tensor(list(prefix_ids), dtype=torch.long, device=device)
        self.pad_token_id = int(pad_token_id)
        self.pooler = pooler if pooler is not None else LastTokenPooler()
        with torch.inference_mode():
            out = body(input_ids=self.ids[None], attention_mask=torch.ones_like(self.ids)[None], use_cache=True)
        # transformers 5.x returns the KV cache as `cache` (formerly `past_key_values`).
        kv = getattr(out, "cache", None) or out.past_key_values
        self.cache = _prefix_cache([(layer[0], layer[1]) for layer in kv])
        self.hidden = out.last_hidden_state  # [1, P, D]: what the pooler sees at the prefix positions

    def __len__(self) -> int:
        return int(self.ids.numel())

    def split(self, inputs: dict) -> dict | None:
        """Inputs for the part after the prefix, or None when some row does not start with it."""
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if ids is None or mask is None or ids.dim() != 2:
            return None
        batch, width = ids.shape
        p = len(self)
        lengths = mask.sum(dim=1)
        pads = width - lengths  # left padding: row r is [pads_r pads][tokens]
        cols = torch.arange(width, device=ids.device)
        if not bool((mask.bool() == (cols[None] >= pads[:, None])).all()) or bool((lengths <= p).any()):
            return None
        prefix_pos = pads[:, None] + torch.arange(p, device=ids.device)[None]
        if not bool((ids.gather(1, prefix_pos) == self.ids.to(ids.device)[None]).all()):
            return None
        new_mask = (cols[None, : width - p] >= pads[:, None]).to(mask.dtype)
        rest = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2 and tuple(value.shape) == (batch, width):
                fill = self.pad_token_id if key == "input_ids" else 0
                value = torch.where(new_mask.bool(), value[:, p:], torch.full_like(value[:, p:], fill))
            rest[key] = value
        rest["attention_mask"] = new_mask
        return rest

    def forward(self, rest: dict) -> torch.Tensor:
        """Embeddings of prompts = prefix + `rest` (from `split`): [B, D], L2-normalised."""
        device = self.ids.device
        rest = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in rest.items()}
        mask = rest.pop("attention_mask")
        batch, p = mask.shape[0], len(self)
        full_mask = torch.cat([torch.ones(batch, p, dtype=mask.dtype, device=device), mask], dim=1)
        positions = p + (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out = self.body(
            **rest, attention_mask=full_mask, position_ids=positions, cache=self.cache, use_cache=True
        )
        # The pooler sees the whole prompt, laid out [prefix][rest's left padding][rest tokens]: poolers read
        # the mask, so the padding moving after the prefix changes nothing.
        hidden = torch.cat([self.hidden.expand(batch, -1, -1), out.last_hidden_state], dim=1)
        ids = torch.cat([self.ids[None].expand(batch, -1), rest["input_ids"]], dim=1)
        return F.normalize(self.pooler(hidden, full_mask, ids).float(), dim=-1)


def _prefix_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A transformers Cache holding the prefix's keys/values that never grows: each layer returns
    prefix + the batch's new states for attention and keeps nothing, so one object serves every batch
    and a layer's concatenated states are freed as soon as the layer is done."""
    from transformers.cache_utils import Cache, DynamicLayer

    class FrozenPrefixLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor):
            super().__init__()
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

        def update(self, key_states, value_states, *args, **kwargs):
            batch = key_states.shape[0]
            return (
                torch.cat([self.keys.expand(batch, -1, -1, -1), key_states], dim=-2),
                torch.cat([self.values.expand(batch, -1, -1, -1), value_states], dim=-2),
            )

    return Cache(layers=[FrozenPrefixLayer(k, v) for k, v in layers])


def _sliding_window(config) -> bool:
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None) or []
    return bool(getattr(text, "sliding_window", None)) and (not types or any(t != "full_attention" for t in types))


def build_prefix_cache(embedder, mode: str | bool = "auto", min_cos: float = 0.9999) -> PrefixCache | None:
    """A verified `PrefixCache` for `embedder` (an MLLMEmbedder), or None where it does not apply.

    mode: "auto" (use it when the family is supported and the probe check passes), True (the same,
    but raise instead of falling back), False (never).
    """
    if mode is False or mode == "off":
        return None
    backbone = embedder.backbone
    why = None
    prefix: list[int] = []
    if backbone.family not in PREFIX_FAMILIES:
        why = f"family {backbone.family!r} is not one of {PREFIX_FAMILIES}"
    elif _sliding_window(backbone.body.config):
        why = "the decoder uses sliding-window attention"
    else:
        prefix = text_prompt_prefix(embedder.renderer, backbone.tokenizer)
        if len(prefix) < MIN_PREFIX_TOKENS:
            why = f"the prompts share only {len(prefix)} leading tokens"
    cache = None
    if why is None:
        try:
            cache = PrefixCache(
                backbone.body, prefix, backbone.tokenizer.pad_token_id, embedder.device, pooler=embedder.pooler
            )
            why = verify(embedder, cache, min_cos)
        except (TypeError, ValueError, RuntimeError, AttributeError) as err:
            # A family listed as cache-capable that fails here usually means a transformers upgrade changed the
            # decoder's cache API: say so loudly (the plain forward still gives the same vectors, only slower).
            why = f"{type(err).__name__}: {err}"
            log.warning("prefix caching failed for %s (family %s, which supports it): %s. Falling back to the "
                        "plain forward (same vectors, slower); check the installed transformers version.",
                        backbone.name_or_path, backbone.family, why)
    if why is not None:
        if mode is True:
            raise RuntimeError(f"prefix caching is not available for {backbone.name_or_path}: {why}")
        log.info("prefix caching off: %s", why)
        return None
    log.info("prefix caching on: %d shared prompt tokens computed once", len(cache))
    return cache


def verify(embedder, cache: PrefixCache, min_cos: float) -> str | None:
    """None if the cached path matches the plain forward on probe sentences (both pool with the
    embedder's pooler); else the reason."""
    probes = ["A probe.", "A second, somewhat longer probe sentence for the check."]
    inputs = embedder.featurize_text(probes)
    rest = cache.split(inputs)
    if rest is None:
        return "probe prompts do not start with the prefix"
    with torch.inference_mode():
        cos = (embedder(**inputs) * cache.forward(rest)).sum(-1)
    if float(cos.min()) < min_cos:
        return f"the cached path differs from the plain forward (min cosine {float(cos.min()):.6f})"
    return None
