"""AdapterSaver under FSDP saves from the gathered full state dict, not from rank 0's shards.

FSDP itself cannot run in this torch/Lightning build on CPU (both refuse a CPU device: see
tests/lit/test_strategy_matrix.py), so these tests pin what can be checked here: the FSDP branch of
AdapterSaver gathers through `full_state_dict_of` (torch's `get_model_state_dict`, full and offloaded to
CPU, a collective every rank calls) on the strategy's root module, maps the keys to the PEFT model's own
(the LightningModule's prefix `embedder.model.` and FSDP's wrapper names removed), and the adapter saved
from that state dict is byte-for-byte the adapter saved the usual way. Other strategies never gather.
On GPUs the FSDP equality is part of docs/distributed.md's GPU check list.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn

from mmembed.lit.callbacks import AdapterSaver
from mmembed.lit.strategies import _path_in, full_state_dict_of
from mmembed.models.prompts import PromptConfig, PromptRenderer


class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.v = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return self.v(self.q(x))


class _LitLike(nn.Module):
    """What the strategy's root wraps: a module whose `embedder.model` is the PEFT model."""

    def __init__(self, peft_model):
        super().__init__()
        self.embedder = nn.Module()
        self.embedder.model = peft_model
        self.embedder.renderer = PromptRenderer(PromptConfig(chat_template=False), tokenizer=None)


def _lit() -> _LitLike:
    torch.manual_seed(0)
    model = get_peft_model(_Base(), LoraConfig(r=2, target_modules=["q", "v"], init_lora_weights=False))
    return _LitLike(model)


def test_full_state_dict_of_maps_keys_to_the_inner_module():
    lit = _lit()
    state = full_state_dict_of(lit, lit.embedder.model)
    expected = lit.embedder.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_wrapper_names_are_left_out_of_the_prefix():
    outer = nn.Module()
    outer._fsdp_wrapped_module = nn.Module()
    outer._fsdp_wrapped_module.embedder = nn.Module()
    inner = outer._fsdp_wrapped_module.embedder.model = nn.Linear(2, 2)
    assert _path_in(outer, inner) == "embedder.model"
    with pytest.raises(ValueError, match="not a submodule"):
        _path_in(outer, nn.Linear(2, 2))


def _fsdp_trainer(root):
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy()
    strategy.model = root
    return SimpleNamespace(strategy=strategy, is_global_zero=True, sanity_checking=False, global_step=3)


def test_fsdp_branch_saves_the_same_adapter_as_a_plain_save(tmp_path, monkeypatch):
    lit = _lit()
    calls = []
    import mmembed.lit.callbacks as callbacks

    def gather(root, inner):  # the real gather, counted
        calls.append((root, inner))
        return full_state_dict_of(root, inner)

    monkeypatch.setattr(callbacks, "full_state_dict_of", gather)
    AdapterSaver(str(tmp_path / "fsdp")).on_train_end(_fsdp_trainer(lit), lit)
    assert calls == [(lit, lit.embedder.model)]
    lit.embedder.model.save_pretrained(str(tmp_path / "plain"))
    saved = load_file(tmp_path / "fsdp" / "last" / "adapter_model.safetensors")
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert set(saved) == set(plain) and len(saved) == 4  # lora_A / lora_B of q and v
    assert all(torch.equal(saved[k], plain[k]) for k in plain)
    assert any(v.abs().sum() > 0 for v in saved.values())


def test_fsdp_branch_gathers_on_every_rank_and_writes_on_rank_zero_only(tmp_path, monkeypatch):
    lit = _lit()
    import mmembed.lit.callbacks as callbacks

    calls = []
    monkeypatch.setattr(callbacks, "full_state_dict_of", lambda root, inner: calls.append(1) or {})
    trainer = _fsdp_trainer(lit)
    trainer.is_global_zero = False  # rank 1: takes part in the collective, writes nothing
    saver = AdapterSaver(str(tmp_path / "rank1"))
    saver.on_validation_end(trainer, lit)
    saver.on_train_end(trainer, lit)
    assert calls == [1, 1] and not (tmp_path / "rank1").exists()


def test_other_strategies_do_not_gather(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy

    lit = _lit()
    import mmembed.lit.callbacks as callbacks

    monkeypatch.setattr(callbacks, "full_state_dict_of", lambda *a: pytest.fail("gathered outside FSDP"))
    trainer = SimpleNamespace(strategy=DDPStrategy(), is_global_zero=True)
    AdapterSaver(str(tmp_path / "ddp")).on_train_end(trainer, lit)
    assert (tmp_path / "ddp" / "last" / "adapter_model.safetensors").is_file()
