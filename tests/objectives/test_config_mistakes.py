"""Objective settings a user can get wrong are refused when the objective is built, as one-line ConfigErrors
that name the setting (the entry points print those without a traceback), not as bare ValueErrors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from mmembed.errors import ConfigError
from mmembed.models.backbones import load_featurizer
from mmembed.objectives import Captioning, HardNegativeNCE, ImageTextInfoNCE, TextPairInfoNCE

CONF = Path(__file__).resolve().parents[2] / "conf"


# ---- temperature of the InfoNCE objectives (both word it the same way) ----
@pytest.mark.parametrize("objective", [TextPairInfoNCE, ImageTextInfoNCE])
@pytest.mark.parametrize("temperature", [0, -0.1])
def test_infonce_temperature_must_be_positive(objective, temperature):
    with pytest.raises(ConfigError, match=rf"^objective\.temperature must be > 0, got {temperature}$"):
        objective(temperature=temperature)


@pytest.mark.parametrize("objective", [TextPairInfoNCE, ImageTextInfoNCE])
def test_infonce_temperature_nan_is_refused(objective):
    # `temperature <= 0` is False for NaN: the check must be `not > 0`, or a NaN loss appears at step 1
    with pytest.raises(ConfigError, match=r"^objective\.temperature must be > 0, got nan$"):
        objective(temperature=math.nan)


@pytest.mark.parametrize("objective", [TextPairInfoNCE, ImageTextInfoNCE])
def test_infonce_positive_temperature_is_kept(objective):
    assert objective(temperature=0.02).temperature == 0.02


# ---- the captioning instruction must say where the image goes ----
def test_captioning_config_calls_it_instruction():
    # the message names `objective.instruction`: the key conf/objective/captioning.yaml sets
    assert "<image>" in OmegaConf.load(CONF / "objective" / "captioning.yaml").instruction


@pytest.mark.parametrize("instruction", ["Describe the image in one sentence.", "", "<img>"])
def test_captioning_instruction_without_image_is_refused(instruction):
    expected = f"objective.instruction must contain <image> (where the image goes), got {instruction!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        Captioning(instruction)


def test_captioning_instruction_with_image_is_kept():
    assert Captioning("Look: <image> now caption it.").instruction == "Look: <image> now caption it."


@pytest.fixture(scope="module")
def featurizer(tiny_smol_llava_dir):
    return load_featurizer(str(tiny_smol_llava_dir))


FEATURIZER_MESSAGE = ("the captioning instruction must contain <image> (set objective.instruction, "
                      "generation.instruction, the benchmark's instruction or model.caption_instruction), "
                      "got 'Describe the image.'")


def test_featurizer_caption_inputs_refuse_instruction_without_image(featurizer):
    image = Image.new("RGB", (32, 32), "white")
    with pytest.raises(ConfigError, match=f"^{re.escape(FEATURIZER_MESSAGE)}$"):
        featurizer.caption_inputs([image], ["a white square"], "Describe the image.")
    with pytest.raises(ConfigError, match=f"^{re.escape(FEATURIZER_MESSAGE)}$"):
        featurizer.generation_inputs([image], "Describe the image.")
    # the same call with the image marker goes through: the instruction was the only thing wrong
    assert featurizer.caption_inputs([image], ["a white square"], "<image>\nDescribe the image.")["labels"].shape[0] == 1


def test_featurizer_message_names_the_settings_the_configs_use():
    assert "caption_instruction" in OmegaConf.load(CONF / "model" / "mmgem.yaml")
    assert "instruction" in OmegaConf.load(CONF / "caption.yaml").generation


# ---- HardNegativeNCE: tau and k are checked at config time ----
@pytest.mark.parametrize("tau", [0, -1, math.nan])
def test_hard_negative_tau_must_be_positive(tau):
    with pytest.raises(ConfigError, match=rf"^objective\.tau must be > 0, got {tau}$"):
        HardNegativeNCE(tau=tau)


@pytest.mark.parametrize("k", [0, -3])
def test_hard_negative_k_must_be_at_least_one(k):
    with pytest.raises(ConfigError, match=rf"^objective\.k must be >= 1 hard negatives per query, got {k}$"):
        HardNegativeNCE(k=k)


def test_hard_negative_valid_settings_are_kept():
    objective = HardNegativeNCE(beta=0.2, k=1, tau=0.05)
    assert (objective.beta, objective.k, objective.tau) == (0.2, 1, 0.05)
