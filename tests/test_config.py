"""The typed config layer: unknown keys and wrong types fail naming the dotted key."""

import pytest

from seal_core.config import from_dict, parse_overrides, deep_merge
from seal_core.errors import ConfigError
from seal_core.ranker.config import RankConfig


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="selector.updat"):
        from_dict(RankConfig, {"selector": {"updat": "centered"}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="'epochs'.*integer"):
        from_dict(RankConfig, {"epochs": "three"})
    with pytest.raises(ConfigError, match="'method'.*one of"):
        from_dict(RankConfig, {"method": "magic"})


def test_overrides_parse_yaml_values_and_exponent_floats():
    over = parse_overrides(["model_lr=1e-5", "selector.update=reference", "lora.target_modules=[q_proj, k_proj]"])
    cfg = from_dict(RankConfig, deep_merge({"epochs": 2}, over))
    # PyYAML reads "1e-5" as a string; a float field still takes it as the number it means.
    assert cfg.model_lr == 1e-5 and cfg.epochs == 2
    assert cfg.selector.update == "reference" and cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.selector.lr == 1.0  # resolved default for sgd


def test_post_init_checks():
    with pytest.raises(ConfigError, match="gamma0"):
        from_dict(RankConfig, {"gamma0": 1.5})
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["epochs"])
