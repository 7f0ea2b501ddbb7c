"""Run configs: shipped files load, bad files fail naming the file and key, checkpoints round-trip."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from radsim.errors import ConfigError
from radsim.train.config import load_run_config, run_config_from_dict

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_run_config(path)
    assert cfg.name == path.stem
    raw = asdict(cfg)
    raw["distill"]["thresholds"] = list(raw["distill"]["thresholds"])
    raw["distill"]["retired_option"] = 3  # a key an older radsim wrote
    assert run_config_from_dict(raw) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nkind = "magic"\n', "'kind' is 'magic'; allowed: radial_scratch"),
        ('name = "x"\nkind = "dense_scratch"\n[train]\nsteps = "many"\n', "[train].steps must be int"),
        ('name = "x"\nkind = "dense_scratch"\n[train]\nsteps = -1\n', "[train].steps must be >= 0"),
        (
            'name = "x"\nkind = "dense_scratch"\n[train]\nlearning_rate = 1\n',
            "unknown key(s) ['learning_rate'] in [train]",
        ),
        ('name = "x"\nkind = "dense_scratch"\ncolour = 1\n', "unknown key(s) ['colour']"),
        ('kind = "dense_scratch"\n', "'name' must be a string"),
        (
            'name = "x"\nkind = "radial_adapt"\n[adapt]\ndepth_targets = [0.75, 1.5]\n',
            "[adapt].depth_targets is [0.75, 1.5]; allowed: a non-empty list of fractions in (0, 1]",
        ),
        (
            'name = "x"\nkind = "radial_adapt"\n[adapt]\nlora_rank = 0\n',
            "[adapt].lora_rank is 0; allowed: >= 1",
        ),
        (
            'name = "x"\nkind = "radial_adapt"\n[adapt]\nkv_policy = "magic"\n',
            "[adapt].kv_policy is 'magic'; allowed: none",
        ),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad_run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert "bad_run.toml" in str(info.value) and message in str(info.value)
