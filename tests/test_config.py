"""Typed configs: presets, YAML round trip, overrides, and clear errors for bad config files."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from uniemo.config import PRESETS, UniEmoConfig, load_config, merge, preset, save_config, to_dict
from uniemo.errors import UniEmoError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml(tmp_path, name):
    cfg = preset(name)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_presets_differ_where_the_paper_and_official_code_differ():
    assert preset("vit-b32").understanding.loss_weights == [0.25, 0.25, 0.5]
    assert preset("official").understanding.loss_weights == [0.05, 0.05, 0.9]
    assert preset("official").stage1.optim.backbone_lr == 8e-6
    assert preset("tiny").image_size == 64


def test_merge_applies_nested_overrides_and_keeps_the_rest():
    cfg = merge(preset("vit-b32"), {"understanding": {"query_len": 16}, "stage1": {"optim": {"lr": 3e-4}}})
    assert cfg.understanding.query_len == 16
    assert cfg.stage1.optim.lr == 3e-4
    assert cfg.stage1.optim.weight_decay == 1e-3


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UniEmoError, match="vit-b32"):
        preset("vit-h14")


@pytest.mark.parametrize("text, message", [
    ("understanding: {query_lenn: 3}", "unknown key"),
    ("understanding: {query_len: many}", "expected int"),
    ("stage1: [1, 2]", "expected a mapping"),
    ("understanding: {query_len: [", "malformed YAML"),
    ("- just a list", "mapping at the top level"),
    ("fusion: {margin: wide}", "fusion.margin: expected a number"),
    ("fusion: {joint_weights: [1, 2]}", "joint_weights: expected a list of 3"),
    ("understanding: {stages: [3]}", "stages: expected a list of 2"),
    ("stage1: {optim: {betas: [0.9]}}", "betas: expected a list of 2"),
])
def test_bad_config_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UniEmoError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_a_float_written_without_a_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("stage1: {optim: {lr: 1e-4, backbone_lr: 3}}")  # YAML 1.1 reads 1e-4 as a string
    cfg = load_config(path)
    assert cfg.stage1.optim.lr == 1e-4 and isinstance(cfg.stage1.optim.lr, float)
    assert cfg.stage1.optim.backbone_lr == 3.0 and isinstance(cfg.stage1.optim.backbone_lr, float)


def test_missing_config_names_the_path(tmp_path):
    with pytest.raises(UniEmoError, match=str(tmp_path / "nope.yaml")):
        load_config(tmp_path / "nope.yaml")


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(to_dict(UniEmoConfig())) + ["bogus"]), _values, max_size=4))
def test_arbitrary_yaml_either_loads_as_a_config_or_raises_uniemo_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path)
    except UniEmoError:
        return
    assert isinstance(cfg, UniEmoConfig)
