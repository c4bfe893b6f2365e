"""The .slim format's Python twin: round trips, validation errors, widths, channel maps, costs."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import corrupt
import slimrt
from slimrt import format as fmt
from slimrt.builder import ModelBuilder
from slimrt.errors import InvalidModelError, ProfileError
from slimrt.models import concat_net, default_model, tiny_resnet, vgg_like

MODELS = {"tiny_resnet": tiny_resnet, "vgg_like": vgg_like, "concat_net": concat_net}


@pytest.fixture(scope="module")
def models() -> dict[str, fmt.SlimFile]:
    return {name: make() for name, make in MODELS.items()}


def assert_same_model(a: fmt.SlimFile, b: fmt.SlimFile) -> None:
    assert a.meta == b.meta
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, array in a.tensors.items():
        assert b.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(array, b.tensors[name], err_msg=name)


# -- round trip -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_round_trip_bytes_and_path(models: dict[str, fmt.SlimFile], name: str, tmp_path) -> None:
    slim = models[name]
    data = fmt.to_bytes(slim)
    assert_same_model(slim, fmt.read(data))
    path = tmp_path / f"{name}.slim"
    fmt.write(slim, path)
    assert path.read_bytes() == data
    assert_same_model(slim, fmt.read(path))
    assert_same_model(slim, fmt.read(str(path)))


def test_models_are_seeded() -> None:
    assert fmt.to_bytes(concat_net(seed=3)) == fmt.to_bytes(concat_net(seed=3))
    assert fmt.to_bytes(concat_net(seed=3)) != fmt.to_bytes(concat_net(seed=4))


def test_bundled_default_model_is_the_trained_one() -> None:
    """scripts/make_default_model.py's net: MobileNetV2-small on cluttered-digits (1x24x24),
    uniform profiles with per-profile batch norm, and the record of how it was trained."""
    bundled = default_model()
    assert bundled.meta["input"]["shape"] == [1, 1, 24, 24]
    assert [p["name"] for p in bundled.meta["profiles"]] == ["0.25", "0.5", "0.75", "1.0"]
    assert bundled.meta["trained_on"]["data"] == "cluttered-digits"
    assert any("@0.25" in name for name in bundled.tensors)
    kinds = {op["op"] for op in bundled.meta["ops"]}
    assert {"conv", "add", "linear"} <= kinds
    assert any(op["op"] == "conv" and "out_group" not in op for op in bundled.meta["ops"])  # depthwise
    torch = pytest.importorskip("torch")
    from slimrt import zoo
    from slimrt.convert import torch_to_slim

    fresh = torch_to_slim(zoo.mobilenet_v2_small(10, in_channels=1), torch.zeros(1, 1, 24, 24), importance="none")
    assert [(g["name"], g["size"]) for g in fresh.meta["groups"]] == \
        [(g["name"], g["size"]) for g in bundled.meta["groups"]]
    assert [p["macs"] for p in fresh.meta["profiles"]] == [p["macs"] for p in bundled.meta["profiles"]]


def test_missing_path_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        fmt.read(tmp_path / "absent.slim")


# -- corrupted files --------------------------------------------------------------------------

CORRUPTIONS = corrupt.all_corruptions(fmt.to_bytes(concat_net()))


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_corrupted_bytes_are_refused(case: corrupt.Corruption) -> None:
    with pytest.raises(InvalidModelError) as info:
        fmt.read(case.data)
    assert case.expect.lower() in str(info.value).lower()


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_corrupted_files_are_refused(case: corrupt.Corruption, tmp_path) -> None:
    path = tmp_path / "bad.slim"
    path.write_bytes(case.data)
    with pytest.raises(InvalidModelError) as info:
        fmt.read(path)
    assert case.expect.lower() in str(info.value).lower()


def test_corruptions_of_every_model_are_refused(models: dict[str, fmt.SlimFile]) -> None:
    for name, slim in models.items():
        for case in corrupt.all_corruptions(fmt.to_bytes(slim)):
            with pytest.raises(InvalidModelError) as info:
                fmt.read(case.data)
            assert case.expect.lower() in str(info.value).lower(), (name, case.name)


def test_writer_refuses_an_invalid_model(models: dict[str, fmt.SlimFile], tmp_path) -> None:
    slim = copy.deepcopy(models["vgg_like"])
    slim.meta["profiles"][0]["widths"][0] = 0
    with pytest.raises(InvalidModelError, match="width 0"):
        fmt.to_bytes(slim)
    with pytest.raises(InvalidModelError, match="width 0"):
        fmt.write(slim, tmp_path / "x.slim")
    assert not (tmp_path / "x.slim").exists()


# -- validation of the model JSON and tensors -----------------------------------------------

Mutation = Callable[[fmt.SlimFile], None]


def op_named(slim: fmt.SlimFile, name: str) -> dict[str, Any]:
    return next(op for op in slim.meta["ops"] if op["name"] == name)


def set_profile(index: int, **fields: Any) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        slim.meta["profiles"][index].update(fields)
    return mutate


def set_op(name: str, **fields: Any) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        op_named(slim, name).update(fields)
    return mutate


def set_meta(**fields: Any) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        slim.meta.update(fields)
    return mutate


def drop_field(op: str, key: str) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        del op_named(slim, op)[key]
    return mutate


def set_tensor(name: str, value: Callable[[np.ndarray], np.ndarray]) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        slim.tensors[name] = value(slim.tensors.get(name, np.zeros(3, np.float32)))
    return mutate


def set_group(index: int, **fields: Any) -> Mutation:
    def mutate(slim: fmt.SlimFile) -> None:
        slim.meta["groups"][index].update(fields)
    return mutate


def swap_profiles(slim: fmt.SlimFile) -> None:
    p = slim.meta["profiles"]
    p[0], p[-1] = p[-1], p[0]


def duplicate_op_name(slim: fmt.SlimFile) -> None:
    slim.meta["ops"][1]["name"] = slim.meta["ops"][0]["name"]


def duplicate_group(slim: fmt.SlimFile) -> None:
    slim.meta["groups"][1]["name"] = slim.meta["groups"][0]["name"]


def duplicate_output(slim: fmt.SlimFile) -> None:
    slim.meta["ops"][2]["output"] = slim.meta["ops"][1]["output"]


def fixed_group_narrow(slim: fmt.SlimFile) -> None:
    index = next(i for i, g in enumerate(slim.meta["groups"]) if g["fixed"])
    slim.meta["profiles"][0]["widths"][index] -= 1


# (name, mutation of vgg_like, expected substring of the error)
VGG_CASES: list[tuple[str, Mutation, str]] = [
    ("format", set_meta(format="onnx"), "\"format\""),
    ("version_zero", set_meta(format_version=0), "format_version 0"),
    ("version_string", set_meta(format_version="1"), "format_version '1'"),
    ("newer_version", set_meta(format_version=7), "format_version 7"),
    ("no_ops", lambda s: s.meta.pop("ops"), "\"ops\""),
    ("min_multiplier_zero", set_meta(min_multiplier=0), "min_multiplier"),
    ("min_multiplier_big", set_meta(min_multiplier=1.5), "min_multiplier"),
    ("input_rank", set_meta(input={"name": "input", "shape": [1, 3, 32]}), "the model input"),
    ("output_missing", set_meta(output="nowhere"), "'nowhere'"),
    ("duplicate_group", duplicate_group, "used by an earlier group"),
    ("group_size", set_group(0, size=0), "'c1'"),
    ("group_fixed_type", set_group(0, fixed="no"), "\"fixed\""),
    ("duplicate_op", duplicate_op_name, "used by an earlier op"),
    ("duplicate_output", duplicate_output, "already exists"),
    ("unknown_kind", set_op("c2", op="conv3d"), "'conv3d'"),
    ("unknown_act", set_op("c2", act="gelu_tanh"), "'gelu_tanh'"),
    ("missing_kernel", drop_field("c2", "kernel"), "\"kernel\""),
    ("bad_stride", set_op("c2", stride=[0, 1]), "\"stride\""),
    ("bad_pads", set_op("c2", pads=[1, 1, 1]), "\"pads\""),
    ("out_group_range", set_op("c2", out_group=17), "channel group 17, the model has 6"),
    ("no_out_group", drop_field("c2", "out_group"), "no out_group"),
    ("group_size_mismatch", set_op("c2", out_group=2), "'c2.weight'"),
    ("used_before", set_op("c1", inputs=["c2"]), "'c2' before"),
    ("input_count", set_op("c2", inputs=["c1", "c1"]), "2 inputs"),
    ("linear_rank", set_op("fc1", inputs=["pool3"]), "insert a flatten"),
    ("pool_pads", set_op("pool3", pads=[3, 3, 3, 3]), "smaller than the kernel"),
    ("pool_too_big", set_op("pool1", kernel=[40, 2], pads=[0, 0, 0, 0]),
     "smaller than the kernel"),
    ("conv_empty", set_op("c1", kernel=[40, 3]), "empty output"),
    ("ceil_type", set_op("pool2", ceil_mode=1), "\"ceil_mode\""),
    ("profile_widths", set_profile(0, widths=[8, 8]),
     "profile '0.25' has 2 widths, the model has 6 channel groups"),
    ("profile_width_zero", set_profile(0, widths=[0, 8, 8, 8, 16, 10]), "width 0"),
    ("profile_fixed", fixed_group_narrow, "fixed group 'classes'"),
    ("profile_name", set_profile(0, name=""), "\"name\""),
    ("profile_duplicate", set_profile(1, name="0.25"), "used by an earlier profile"),
    ("profile_macs", set_profile(0, macs=1), "records macs 1"),
    ("profile_params", set_profile(0, params=1), "params 1"),
    ("profile_order", swap_profiles, "cheapest first"),
    ("tensor_dtype", set_tensor("c1.weight", lambda a: a.astype(np.float64)), "'c1.weight'"),
    ("tensor_shape", set_tensor("c1.bias", lambda a: a[:-1]), "'c1.bias'"),
    ("tensor_missing", lambda s: s.tensors.pop("fc2.weight"), "'fc2.weight'"),
    ("tensor_unused", set_tensor("c9.weight", lambda a: a), "'c9.weight'"),
    ("epilogue_unknown_profile", set_tensor("c1.scale@0.3", lambda a: a), "'c1.scale@0.3'"),
    ("epilogue_length", set_tensor("c1.bias@0.5", lambda a: np.zeros(16, np.float32)),
     "'c1.bias@0.5'"),
]


@pytest.mark.parametrize("name, mutate, expect", VGG_CASES, ids=[c[0] for c in VGG_CASES])
def test_validation_names_the_item(models: dict[str, fmt.SlimFile], name: str, mutate: Mutation,
                                   expect: str) -> None:
    slim = copy.deepcopy(models["vgg_like"])
    fmt.validate(slim)
    mutate(slim)
    with pytest.raises(InvalidModelError) as info:
        fmt.validate(slim)
    assert expect in str(info.value)


def test_epilogue_of_the_right_length_is_accepted(models: dict[str, fmt.SlimFile]) -> None:
    slim = copy.deepcopy(models["vgg_like"])
    widths = dict(zip([g["name"] for g in slim.meta["groups"]],
                      next(p["widths"] for p in slim.meta["profiles"] if p["name"] == "0.5")))
    slim.tensors["c1.bias@0.5"] = np.zeros(widths["c1"], np.float32)
    fmt.validate(slim)


def small_builder() -> ModelBuilder:
    b = ModelBuilder("small", input_shape=(1, 4, 8, 8))
    b.group("g", 8)
    b.group("h", 8)
    b.group("fixed", 8, fixed=True)
    return b


def test_add_of_a_narrowing_concat_is_refused() -> None:
    b = small_builder()
    rng = np.random.default_rng(0)
    g = b.conv(b.input, rng.normal(size=(8, 4, 1, 1)), out_group="g")
    h = b.conv(b.input, rng.normal(size=(8, 4, 1, 1)), out_group="h")
    cat = b.concat([g, h])
    wide = b.conv(b.input, rng.normal(size=(16, 4, 1, 1)), name="wide")
    b.add(cat, wide)
    with pytest.raises(InvalidModelError, match="zero padding match needs prefix operands"):
        b.build()


def test_add_of_a_concat_behind_fixed_groups_is_accepted() -> None:
    b = small_builder()
    rng = np.random.default_rng(0)
    f = b.conv(b.input, rng.normal(size=(8, 4, 1, 1)), out_group="fixed")
    g = b.conv(b.input, rng.normal(size=(8, 4, 1, 1)), out_group="g")
    cat = b.concat([f, g])
    wide = b.conv(b.input, rng.normal(size=(16, 4, 1, 1)), name="wide")
    b.add(cat, wide)
    b.uniform_profiles((0.5, 1.0))
    infos = fmt.channel_maps(b.build().meta, [4, 8, 8, 8])
    assert infos[cat].runs == ((0, 12),)


def test_grouped_conv_must_be_fixed() -> None:
    b = small_builder()
    g = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g")
    b.conv(g, np.ones((8, 4, 3, 3)), groups=2, out_group="h")
    with pytest.raises(InvalidModelError, match="must run at full width"):
        b.build()


def test_depthwise_without_matching_groups_is_refused(models: dict[str, fmt.SlimFile]) -> None:
    slim = copy.deepcopy(models["concat_net"])
    op_named(slim, "c")["groups"] = 8
    with pytest.raises(InvalidModelError, match="no out_group but groups 8"):
        fmt.validate(slim)


def test_add_of_mismatched_spatial_shapes_is_refused() -> None:
    b = small_builder()
    g = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g")
    h = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="h", stride=2)
    with pytest.raises(InvalidModelError, match="only their channel counts may differ"):
        b.add(g, h)


# -- uniform widths and profile resolution ----------------------------------------------------

def nearest_multiple_of_8(size: int, m: float) -> int:
    """Independent statement of the rule: of the multiples of 8 below size and size itself, the
    one nearest to size*m (halves go up), at least min(8, size)."""
    target = size * m
    candidates = [c for c in range(0, size, 8)] + [size]
    best = min(candidates, key=lambda c: (abs(c - target), -c))
    return max(best, min(8, size))


def test_full_multiplier_is_every_group_whole() -> None:
    sizes = list(range(1, 68))
    meta = {"min_multiplier": 0.1, "groups": [{"name": f"g{s}", "size": s} for s in sizes]}
    assert fmt.uniform_widths(meta, 1.0) == sizes
    for s in sizes:  # near the top a group never loses the channels above its last multiple of 8
        assert fmt.uniform_width(s, 0.999) in (s, 8 * ((s - 1) // 8) if s > 8 else s)


def test_engine_and_python_agree_on_uniform_widths() -> None:
    """Group sizes 1..67 in one chain of 1x1 convs: the C++ rule equals the Python twin."""
    rng = np.random.default_rng(3)
    b = ModelBuilder("sweep", input_shape=(1, 2, 3, 3), min_multiplier=0.05)
    t, cin = b.input, 2
    for s in range(1, 68):
        t = b.conv(t, rng.standard_normal((s, cin, 1, 1)).astype(np.float32), out_group=b.group(f"g{s}", s))
        cin = s
    b.set_output(t)
    b.uniform_profiles((1.0,))
    slim = b.build()
    model = slimrt.load(fmt.to_bytes(slim))
    for m in [0.05, 0.1, 0.26, 0.33, 0.5, 0.61, 0.75, 0.874, 0.9, 0.95, 0.99, 0.999, 1.0]:
        assert list(model.widths(m)) == fmt.uniform_widths(slim.meta, m), m
    assert list(model.widths(1.0)) == list(range(1, 68))


def test_uniform_widths_follow_the_rule() -> None:
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.integers(1, 300, size=40)] + [1, 3, 7, 8, 13, 16, 127]
    meta = {"min_multiplier": 0.1,
            "groups": [{"name": f"g{i}", "size": s, "fixed": i % 9 == 4}
                       for i, s in enumerate(sizes)]}
    for m in list(rng.uniform(0.1, 1.0, size=30)) + [0.1, 0.25, 0.5, 1.0]:
        expected = [s if i % 9 == 4 else nearest_multiple_of_8(s, float(m))
                    for i, s in enumerate(sizes)]
        assert fmt.uniform_widths(meta, float(m)) == expected, m


@pytest.mark.parametrize("m", [0.2, 1.01, -1.0, math.nan, math.inf])
def test_uniform_widths_out_of_range(models: dict[str, fmt.SlimFile], m: float) -> None:
    with pytest.raises(ProfileError, match="outside the model's range"):
        fmt.uniform_widths(models["vgg_like"].meta, m)


def test_resolve_widths(models: dict[str, fmt.SlimFile]) -> None:
    meta = models["tiny_resnet"].meta
    profiles = meta["profiles"]
    for index, p in enumerate(profiles):
        assert fmt.resolve_widths(meta, p["name"]) == (p["widths"], p["name"])
        assert fmt.resolve_widths(meta, index) == (p["widths"], p["name"])
        assert fmt.resolve_widths(meta, np.int64(index)) == (p["widths"], p["name"])
    by_name = {p["name"]: p["widths"] for p in profiles}
    assert fmt.resolve_widths(meta, 0.5) == (by_name["0.5"], "0.5")
    widths, name = fmt.resolve_widths(meta, 0.6)
    assert name is None and widths == fmt.uniform_widths(meta, 0.6)


@pytest.mark.parametrize("key, expect", [("nope", "unknown profile 'nope'"), (9, "index 9"),
                                         (-1, "index -1"), (True, "name, an index"),
                                         (None, "name, an index"), (0.1, "outside")])
def test_resolve_widths_errors(models: dict[str, fmt.SlimFile], key: Any, expect: str) -> None:
    with pytest.raises(ProfileError, match=expect):
        fmt.resolve_widths(models["tiny_resnet"].meta, key)


# -- channel maps -----------------------------------------------------------------------------

def group_widths(slim: fmt.SlimFile, profile: str) -> dict[str, int]:
    p = next(p for p in slim.meta["profiles"] if p["name"] == profile)
    return dict(zip([g["name"] for g in slim.meta["groups"]], p["widths"]))


def test_channel_maps_of_concat_and_flatten(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["concat_net"]
    w = group_widths(slim, "thin")
    infos = fmt.channel_maps(slim.meta, [w[g["name"]] for g in slim.meta["groups"]])
    side, a, b, c = 6, 13, 7, 16    # full sizes of the concat's inputs
    cat = ((0, side + w["a"]), (side + a, w["b"]), (side + a + b, w["stem"]))
    assert infos["cat"].runs == cat
    assert infos["d"].runs == infos["q"].runs == cat
    assert infos["feats"].runs == cat + ((side + a + b + c, w["mix"]),)
    pixels = 3 * 3
    assert infos["feats"].shape[2:] == (3, 3)
    assert infos["flat"].runs == tuple((o * pixels, k * pixels) for o, k in infos["feats"].runs)
    assert infos["flat"].width == (side + w["a"] + w["b"] + w["stem"] + w["mix"]) * pixels
    assert infos["fc"].runs == ((0, 3),)
    np.testing.assert_array_equal(
        infos["cat"].channel_index(),
        np.r_[0:side + w["a"], side + a:side + a + w["b"], side + a + b:side + a + b + w["stem"]])


def test_channel_maps_of_zero_padding_add(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["tiny_resnet"]
    w = group_widths(slim, "pruned")
    assert w["stem"] != w["b1.project"]
    infos = fmt.channel_maps(slim.meta, [w[g["name"]] for g in slim.meta["groups"]])
    assert infos["b1.add"].runs == ((0, max(w["stem"], w["b1.project"])),)
    assert infos["b5.add"].runs == ((0, max(w["stage3"], w["b5.project"])),)
    assert infos["b1.dw"].runs == ((0, w["b1.expand"]),)


def test_channel_maps_at_another_input_size(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["tiny_resnet"]
    infos = fmt.channel_maps(slim.meta, slim.meta["profiles"][-1]["widths"], hw=(64, 48),
                             batch=3)
    assert infos["input"].shape == (3, 3, 64, 48)
    assert infos["stem"].shape == (3, 16, 32, 24)
    assert infos["classifier"].active_shape == (3, 10)


# -- cost -------------------------------------------------------------------------------------

def cost_model(epilogue: bool) -> fmt.SlimFile:
    """conv3x3 (3->g, scale+bias) on 6x6, depthwise 3x3/2 (bias), 1x1 g->h, pool, linear h->5."""
    rng = np.random.default_rng(1)
    b = ModelBuilder("cost", input_shape=(1, 3, 6, 6))
    b.group("g", 13)
    b.group("h", 7)
    b.group("classes", 5, fixed=True)
    x = b.conv(b.input, rng.normal(size=(13, 3, 3, 3)), out_group="g", padding=1,
               scale=np.ones(13), bias=np.zeros(13), name="conv")
    x = b.conv(x, rng.normal(size=(13, 1, 3, 3)), groups=13, stride=2, padding=1,
               bias=np.zeros(13), name="dw")
    x = b.conv(x, rng.normal(size=(7, 13, 1, 1)), out_group="h", name="pw")
    x = b.flatten(b.global_avgpool(x))
    b.linear(x, rng.normal(size=(5, 7)), out_group="classes", bias=np.zeros(5), name="fc")
    b.profile("p", {"g": 5, "h": 3})
    b.uniform_profiles((1.0,))
    if epilogue:
        b.epilogue("pw", "p", np.ones(3), None)
    return b.build()


def hand_count(g: int, h: int, pw_scale: bool) -> tuple[int, int]:
    macs = 6 * 6 * g * 3 * 3 * 3 + 3 * 3 * g * 3 * 3 + 3 * 3 * h * g + h * 5
    params = (3 * 3 * 3 * g + 2 * g) + (3 * 3 * g + g) + (g * h + (h if pw_scale else 0)) \
        + (h * 5 + 5)
    return macs, params


@pytest.mark.parametrize("g, h", [(13, 7), (5, 3), (1, 1), (8, 6)])
def test_profile_cost_matches_a_hand_count(g: int, h: int) -> None:
    slim = cost_model(epilogue=False)
    assert fmt.profile_cost(slim, [g, h, 5]) == hand_count(g, h, False)
    assert fmt.profile_cost(slim.meta, [g, h, 5], tensor_names=slim.tensors) == \
        hand_count(g, h, False)


def test_profiles_record_their_cost_and_epilogues_count() -> None:
    slim = cost_model(epilogue=True)
    recorded = {p["name"]: (p["macs"], p["params"]) for p in slim.meta["profiles"]}
    assert recorded == {"p": hand_count(5, 3, True), "1.0": hand_count(13, 7, False)}
    assert [p["name"] for p in slim.meta["profiles"]] == ["p", "1.0"]


def test_profiles_are_ordered_by_macs(models: dict[str, fmt.SlimFile]) -> None:
    for slim in models.values():
        macs = [p["macs"] for p in slim.meta["profiles"]]
        assert macs == sorted(macs)
        for p in slim.meta["profiles"]:
            assert fmt.profile_cost(slim, p["widths"], profile=p["name"]) == \
                (p["macs"], p["params"])


# -- builder ----------------------------------------------------------------------------------

def test_builder_stores_file_layouts() -> None:
    rng = np.random.default_rng(2)
    b = small_builder()
    dense = rng.normal(size=(8, 4, 3, 2)).astype(np.float32)
    dw = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    lin = rng.normal(size=(8, 8)).astype(np.float32)
    x = b.conv(b.input, dense, out_group="g", padding=1, name="dense")
    x = b.conv(x, dw, groups=8, padding=1, name="dw")
    x = b.flatten(b.global_avgpool(x))
    b.linear(x, lin, out_group="fixed", name="fc")
    b.uniform_profiles((1.0,))
    t = b.build().tensors
    for co in range(8):
        np.testing.assert_array_equal(t["fc.weight"][:, co], lin[co])
        for ci in range(4):
            np.testing.assert_array_equal(t["dense.weight"][:, :, ci, co], dense[co, ci])
        np.testing.assert_array_equal(t["dw.weight"][:, :, co], dw[co, 0])


@pytest.mark.parametrize("action, expect", [
    (lambda b: b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="h", name="input"), "already used"),
    (lambda b: b.conv(b.input, np.ones((8, 4, 1)), out_group="g"), "Cout, Cin/groups"),
    (lambda b: b.conv(b.input, np.ones((8, 3, 1, 1)), out_group="g"), "expected"),
    (lambda b: b.conv(b.input, np.ones((9, 4, 1, 1)), out_group="g"), "has size 8"),
    (lambda b: b.conv(b.input, np.ones((4, 1, 3, 3)), groups=4, out_group="g"), "depthwise"),
    (lambda b: b.conv("nope", np.ones((8, 4, 1, 1)), out_group="g"), "'nope'"),
    (lambda b: b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="zz"), "'zz'"),
    (lambda b: b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g", scale=np.ones(3)), "scale"),
    (lambda b: b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g", padding=(1, 2, 3)),
     "padding"),
    (lambda b: b.linear(b.input, np.ones((8, 4)), out_group="g"), "insert a flatten"),
    (lambda b: b.group("g", 4), "already exists"),
    (lambda b: b.epilogue("nope", "1.0", np.ones(3), None), "'nope'"),
])
def test_builder_errors(action: Callable[[ModelBuilder], Any], expect: str) -> None:
    with pytest.raises(ValueError, match=expect):
        action(small_builder())


def test_builder_failed_conv_leaves_no_group() -> None:
    b = small_builder()
    with pytest.raises(ValueError):
        b.conv(b.input, np.ones((6, 3, 1, 1)))
    g = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g")
    b.uniform_profiles((1.0,))
    assert len(b.build().meta["groups"]) == 3
    assert g == "conv1"


def test_builder_profiles_by_mapping_and_sequence() -> None:
    b = small_builder()
    x = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group="g")
    b.conv(x, np.ones((8, 8, 1, 1)), out_group="fixed")
    b.profile("map", {"g": 3, 1: 5})
    b.profile("seq", [2, 4, 8])
    b.profile("missing", {"g": 3})
    with pytest.raises(ProfileError, match="no width for groups h"):
        b.build()


def test_builder_auto_groups() -> None:
    b = ModelBuilder("auto", input_shape=(1, 4, 8, 8))
    x = b.conv(b.input, np.ones((6, 4, 1, 1)), name="a")
    y = b.conv(b.input, np.ones((6, 2, 3, 3)), groups=2, padding=1, name="grouped")
    b.concat([x, y])
    b.uniform_profiles((0.5, 1.0))
    groups = b.build().meta["groups"]
    assert [(g["name"], g["size"], g["fixed"]) for g in groups] == \
        [("a", 6, False), ("grouped", 6, True)]


def test_builder_duplicate_profile() -> None:
    b = small_builder()
    b.uniform_profiles((0.5,))
    with pytest.raises(ValueError, match="'0.5' already exists"):
        b.profile("0.5", [1, 1, 8])


# -- activations with parameters ----------------------------------------------------------------

def test_activation_parameters_default_as_in_onnx() -> None:
    b = ModelBuilder("acts", input_shape=(1, 3, 4, 4))
    x = b.conv(b.input, np.ones((4, 3, 1, 1)), out_group=b.group("a", 4), act="hardsigmoid")
    x = b.act(x, "leaky_relu", name="leaky")
    x = b.act(x, "elu", alpha=0.5, name="elu")
    b.act(x, "gelu", name="gelu")
    slim = b.build()
    written = {op["name"]: {k: v for k, v in op.items() if k.startswith("act_")} for op in slim.meta["ops"]}
    assert written == {"conv0": {"act_alpha": 0.2, "act_beta": 0.5}, "leaky": {"act_alpha": 0.01},
                       "elu": {"act_alpha": 0.5}, "gelu": {}}
    meta = copy.deepcopy(slim.meta)
    for op in meta["ops"]:
        op.pop("act_alpha", None)
        op.pop("act_beta", None)
    ops = {op.name: op for op in fmt.parse_ops(meta)}
    assert (ops["conv0"].act_alpha, ops["conv0"].act_beta) == (0.2, 0.5)
    assert (ops["leaky"].act_alpha, ops["elu"].act_alpha, ops["gelu"].act_alpha) == (0.01, 1.0, 0.0)


@pytest.mark.parametrize("act,extra,expect", [
    ("relu", {"act_alpha": 0.1}, "op 'a' has \"act_alpha\", which activation 'relu' does not take"),
    ("leaky_relu", {"act_beta": 0.1}, "op 'a' has \"act_beta\", which activation 'leaky_relu' does not take"),
    ("elu", {"act_alpha": "0.5"}, "op 'a' field \"act_alpha\" must be a finite number"),
    ("hardsigmoid", {"act_beta": True}, "op 'a' field \"act_beta\" must be a finite number"),
])
def test_activation_parameters_are_checked_by_both_readers(act: str, extra: dict, expect: str) -> None:
    import json

    import safetensors.numpy

    b = ModelBuilder("acts", input_shape=(1, 3, 4, 4))
    b.conv(b.input, np.ones((4, 3, 1, 1)), out_group=b.group("a", 4), name="a")
    slim = b.build()
    meta = copy.deepcopy(slim.meta)
    meta["ops"][0].update(act=act, **extra)
    with pytest.raises(InvalidModelError, match=re.escape(expect)):
        fmt.parse_ops(meta)
    data = safetensors.numpy.save(dict(slim.tensors), metadata={"slimrt": json.dumps(meta)})
    assert engine_error(data) == expect
    meta["ops"][0].update(act="leaky_relu", act_alpha=float("nan"))
    meta["ops"][0].pop("act_beta", None)
    with pytest.raises(InvalidModelError, match="must be a finite number"):
        fmt.parse_ops(meta)


# -- prelu ----------------------------------------------------------------------------------------

def test_prelu_needs_one_slope_per_channel_and_counts_its_active_slopes() -> None:
    b = ModelBuilder("prelu", input_shape=(1, 3, 4, 4), min_multiplier=0.5)
    x = b.conv(b.input, np.ones((16, 3, 1, 1)), out_group=b.group("a", 16))
    with pytest.raises(ValueError, match="'p' slope must have shape \\(16,\\)"):
        b.prelu(x, np.ones(15), name="p")
    b.prelu(x, np.ones(16), name="p")
    b.uniform_profiles((0.5, 1.0))
    slim = b.build()
    assert [p["params"] for p in slim.meta["profiles"]] == [3 * 8 + 8, 3 * 16 + 16]
    broken = fmt.SlimFile(slim.meta, {k: v for k, v in slim.tensors.items() if k != "p.slope"})
    with pytest.raises(InvalidModelError, match="op 'p' needs tensor 'p.slope'"):
        fmt.validate(broken)
    short = fmt.SlimFile(slim.meta, dict(slim.tensors, **{"p.slope": np.ones(8, np.float32)}))
    with pytest.raises(InvalidModelError, match="tensor 'p.slope' has shape \\[8\\], op 'p' needs \\[16\\]"):
        fmt.validate(short)
    import json

    import safetensors.numpy

    data = safetensors.numpy.save(dict(short.tensors), metadata={"slimrt": json.dumps(slim.meta)})
    assert engine_error(data) == "tensor 'p.slope' has shape [8], op 'p' needs [16]"


# -- scale_bias -------------------------------------------------------------------------------------

def test_scale_bias_vectors_and_profile_epilogues_are_checked_by_both_readers() -> None:
    import json

    import safetensors.numpy

    b = ModelBuilder("sb", input_shape=(1, 3, 4, 4), min_multiplier=0.5)
    x = b.conv(b.input, np.ones((16, 3, 1, 1)), out_group=b.group("a", 16))
    with pytest.raises(ValueError, match="'s' bias must have shape \\(16,\\)"):
        b.scale_bias(x, bias=np.ones(3), name="s")
    b.scale_bias(x, np.ones(16), act="relu", name="s")
    b.uniform_profiles((0.5, 1.0))
    b.epilogue("s", "0.5", np.full(8, 2.0), np.zeros(8))
    slim = b.build()
    # params: the conv's weights, the scale's active values, and the profile's own bias at 0.5
    assert [p["params"] for p in slim.meta["profiles"]] == [3 * 8 + 2 * 8, 3 * 16 + 16]
    bad = dict(slim.tensors, **{"s.bias@0.5": np.zeros(16, np.float32)})
    expect = "tensor 's.bias@0.5' has shape [16], op 's' at profile '0.5' needs [8]"
    with pytest.raises(InvalidModelError, match=re.escape(expect)):
        fmt.validate(fmt.SlimFile(slim.meta, bad))
    data = safetensors.numpy.save(bad, metadata={"slimrt": json.dumps(slim.meta)})
    assert engine_error(data) == expect


# -- channel gate ---------------------------------------------------------------------------------

def gate_builder() -> ModelBuilder:
    b = ModelBuilder("gate", input_shape=(1, 3, 6, 6), min_multiplier=0.5)
    rng = np.random.default_rng(5)
    a = b.group("a", 16)
    x = b.conv(b.input, rng.normal(size=(16, 3, 1, 1)), out_group=a, name="x")
    s = b.conv(b.global_avgpool(x), rng.normal(size=(8, 16, 1, 1)), out_group=b.group("se", 8), act="relu")
    g = b.conv(s, rng.normal(size=(16, 8, 1, 1)), out_group=a, act="sigmoid", name="g")
    b.mul(x, g, name="m")
    b.uniform_profiles((0.5, 1.0))
    return b.build()


def test_gate_must_be_n_c_1_1_of_its_input() -> None:
    b = ModelBuilder("gate", input_shape=(1, 3, 6, 6))
    x = b.conv(b.input, np.ones((16, 3, 1, 1)), out_group=b.group("a", 16))
    with pytest.raises(InvalidModelError, match=r"multiplies \[1, 16, 6, 6\] by \[1, 16, 6, 6\]; the gate"):
        b.mul(x, x)


def test_gate_from_another_group_is_refused_by_both_readers() -> None:
    import json

    import safetensors.numpy

    slim = gate_builder()
    assert fmt.channel_maps(slim.meta, [8, 4])["m"].runs == ((0, 8),)
    meta = copy.deepcopy(slim.meta)
    meta["groups"].append({"name": "other", "size": 16, "fixed": False, "why": ""})
    next(op for op in meta["ops"] if op["name"] == "g")["out_group"] = 2
    for p in meta["profiles"]:
        p["widths"].append(p["widths"][0])
    meta["profiles"].insert(0, {"name": "skew", "widths": [8, 8, 16], "macs": 0, "params": 0})
    message = ("mul 'm': its gate 'g' and its input 'x' must have the same channels at every width: the layer "
               "making the gate must write its input's channel group (or both must be fixed)")
    with pytest.raises(InvalidModelError) as info:
        fmt.validate(fmt.SlimFile(meta, slim.tensors))
    assert str(info.value) == message
    data = safetensors.numpy.save(dict(slim.tensors), metadata={"slimrt": json.dumps(meta)})
    assert engine_error(data) == message


# -- channel shuffle ----------------------------------------------------------------------------

def shuffle_builder(fixed: bool) -> ModelBuilder:
    b = ModelBuilder("shuffle", input_shape=(1, 4, 6, 6), min_multiplier=0.5)
    rng = np.random.default_rng(4)
    a = b.conv(b.input, rng.normal(size=(8, 4, 1, 1)), out_group=b.group("a", 8, fixed=fixed))
    s = b.shuffle(a, 2, name="s")
    b.conv(s, rng.normal(size=(8, 8, 1, 1)), out_group=b.group("b", 8))
    b.uniform_profiles((0.5, 1.0))
    return b


def test_shuffle_fed_by_a_sliceable_group_is_refused() -> None:
    with pytest.raises(InvalidModelError, match="shuffle 's' .* must run at full width.*fixed groups"):
        shuffle_builder(fixed=False).build()


def test_shuffle_behind_fixed_groups_keeps_one_full_run() -> None:
    slim = shuffle_builder(fixed=True).build()
    infos = fmt.channel_maps(slim.meta, [8, 4])
    assert infos["s"].runs == ((0, 8),)
    assert infos[slim.meta["output"]].runs == ((0, 4),)


def test_slice_of_a_sliceable_group_is_refused_and_must_fit() -> None:
    b = ModelBuilder("slice", input_shape=(1, 4, 6, 6), min_multiplier=0.5)
    a = b.conv(b.input, np.ones((8, 4, 1, 1)), out_group=b.group("a", 8))
    with pytest.raises(InvalidModelError, match=r"takes channels \[2, 9\) of an input with 8"):
        b.slice(a, 2, 9)
    b.slice(a, 2, 5, name="s")
    b.uniform_profiles((0.5, 1.0))
    with pytest.raises(InvalidModelError, match=r"slice 's' \[2, 5\) must run at full width"):
        b.build()


def test_shuffle_groups_must_divide_the_channels() -> None:
    b = shuffle_builder(fixed=True)
    with pytest.raises(InvalidModelError, match="groups 3 must divide its 8 input channels"):
        b.shuffle("s", 3)


def test_engine_refuses_a_shuffle_fed_by_a_sliceable_group() -> None:
    """The C++ loader's own check, a file whose writer skipped validation: refused at load for every
    width, not only at the profiles' (a multiplier would narrow it)."""
    import json

    import safetensors.numpy

    import slimrt

    slim = shuffle_builder(fixed=True).build()
    meta = copy.deepcopy(slim.meta)
    meta["groups"][0]["fixed"] = False
    meta["profiles"].insert(0, {"name": "narrow", "widths": [4, 4], "macs": 0, "params": 0})
    data = safetensors.numpy.save(dict(slim.tensors), metadata={"slimrt": json.dumps(meta)})
    with pytest.raises(InvalidModelError, match="shuffle 's' \\(groups 2\\) must run at full width: its input 'conv0' "
                                                "must come from fixed groups"):
        slimrt.load(data)


# -- hostile files: the engine and this reader refuse them alike, before allocating --------

_REFERENCE: list[bytes] = []


def bundled_bytes() -> bytes:
    """A fixed model whose op names the messages below quote: tiny_resnet(0) at 3x96x96."""
    if not _REFERENCE:
        _REFERENCE.append(fmt.to_bytes(tiny_resnet(seed=0, input_hw=(96, 96))))
    return _REFERENCE[0]


def engine_error(data: bytes) -> str:
    with pytest.raises(InvalidModelError) as info:
        slimrt.load(data)
    return str(info.value)


def reader_error(data: bytes) -> str:
    with pytest.raises(InvalidModelError) as info:
        fmt.read(data)
    return str(info.value)


def dense_conv_without_out_group(data: bytes) -> bytes:
    def edit(model: dict[str, Any]) -> None:
        del model["ops"][0]["out_group"]
    return corrupt._edit_model(data, edit)


def classes_index(data: bytes) -> int:
    return [g["name"] for g in corrupt._model(data)["groups"]].index("classes")


def overlap_case(data: bytes) -> tuple[bytes, str]:
    bad = corrupt.overlapping_tensors(data).data
    header, _ = corrupt._split(bad)
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in header.items()
                   if n != "__metadata__")
    (b0, e0, n0), (b1, e1, n1) = spans[:2]
    return bad, (f"tensors '{n0}' [{b0}, {e0}) and '{n1}' [{b1}, {e1}) overlap: the tensors of a "
                 "file may not share bytes")


DEEP_MODEL = "the model JSON (__metadata__.slimrt) nests deeper than 64 levels"
DEEP_HEADER = "the file header JSON nests deeper than 64 levels"

# name -> (bytes of the bundled model) -> (corrupted bytes, the exact message of both readers)
SAME_ERROR_CASES: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "linear_without_out_group": lambda d: (corrupt.linear_without_out_group(d).data,
                                           "op 'classifier' has no \"out_group\" field"),
    "dense_conv_without_out_group": lambda d: (
        dense_conv_without_out_group(d), "conv 'stem' has no out_group; only depthwise convs omit it"),
    "huge_group": lambda d: (corrupt.huge_group(d, classes_index(d)).data,
                             "tensor 'classifier.weight' has shape [320, 10], op 'classifier' needs "
                             "[320, 1048576]"),
    "shape_overflow_F32": lambda d: (corrupt.shape_overflow(d, "F32").data,
                                     "tensor 'stem.weight' has shape [4294967296, 4294967296] of F32, "
                                     "whose size overflows 64 bits (it holds 0 bytes)"),
    "shape_overflow_I8": lambda d: (corrupt.shape_overflow(d, "I8").data,
                                    "tensor 'stem.weight' has shape [4294967296, 4294967296] of I8, "
                                    "whose size overflows 64 bits (it holds 0 bytes)"),
    "shape_overflow_F64": lambda d: (corrupt.shape_overflow(d, "F64").data,
                                     "tensor 'stem.weight' has shape [2147483648, 1073741824, 4] of "
                                     "F64, whose size overflows 64 bits (it holds 0 bytes)"),
    "overlapping_tensors": overlap_case,
    "deep_model_json_1000": lambda d: (corrupt.deep_model_json(d, 1000).data, DEEP_MODEL),
    "deep_model_json_65": lambda d: (corrupt.deep_model_json(d, 65).data, DEEP_MODEL),
    "deep_header_json_1000": lambda d: (corrupt.deep_header_json(d, 1000).data, DEEP_HEADER),
    "deep_header_json_65": lambda d: (corrupt.deep_header_json(d, 65).data, DEEP_HEADER),
    "activation_parameter_not_taken": lambda d: (
        corrupt.activation_parameter_not_taken(d).data,
        "op 'stem' has \"act_beta\", which activation 'relu' does not take"),
    "activation_parameter_not_a_number": lambda d: (
        corrupt.activation_parameter_not_a_number(d).data, "op 'stem' field \"act_alpha\" must be a finite number"),
    "output_is_input": lambda d: (corrupt.output_is_input(d).data,
                                  "the model's output is its input 'input': the output must be "
                                  "produced by an op"),
}


@pytest.mark.parametrize("case", SAME_ERROR_CASES)
def test_engine_and_reader_refuse_with_the_same_message(case: str) -> None:
    data, message = SAME_ERROR_CASES[case](bundled_bytes())
    assert engine_error(data) == message
    assert reader_error(data) == message


HUGE_GROUP_PROBE = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import corrupt
import slimrt


def peak_kib():
    # VmHWM is this process's own peak. ru_maxrss on Linux also counts the RSS the parent had
    # when it forked this process, which would hide growth below the test runner's size.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


data = open(sys.argv[2], "rb").read()
cases = [corrupt.huge_group(data, i) for i in range(len(corrupt._model(data)["groups"]))]
errors = {}
before = peak_kib()
for case in cases:
    try:
        slimrt.load(case.data)
        errors[case.name] = None
    except slimrt.InvalidModelError as e:
        errors[case.name] = str(e)
print(json.dumps({"growth_kib": peak_kib() - before, "errors": errors}))
"""


def test_a_huge_group_size_is_refused_before_allocating(tmp_path: Path) -> None:
    """Any one group grown to 2^20 channels (the model is 330 KB): the engine refuses the file
    and its peak memory barely moves (it once zero-filled 1.3 GB before checking)."""
    data = bundled_bytes()
    path = tmp_path / "model.slim"
    path.write_bytes(data)
    run = subprocess.run([sys.executable, "-c", HUGE_GROUP_PROBE, str(Path(__file__).parent), str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(run.stdout)
    groups = corrupt._model(data)["groups"]
    assert len(result["errors"]) == len(groups)
    for name, message in result["errors"].items():
        assert message is not None, f"{name} was accepted"
    assert result["errors"][f"huge_group_{classes_index(data)}"] == \
        "tensor 'classifier.weight' has shape [320, 10], op 'classifier' needs [320, 1048576]"
    assert result["growth_kib"] < 200 * 1024, result


def test_json_nested_64_deep_is_accepted_by_both() -> None:
    data = corrupt.deep_model_json(bundled_bytes(), 64).data
    slimrt.load(data)
    fmt.read(data)


def test_brackets_inside_json_strings_do_not_count() -> None:
    name = '\\"' + "[" * 100 + "{" * 100 + "\\\\"
    data = corrupt._edit_model(bundled_bytes(), lambda m: m.update(name=name))
    assert slimrt.load(data).name == name
    assert fmt.read(data).meta["name"] == name


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, kind: str) -> None:
    path = {"fifo": tmp_path / "model.slim", "directory": tmp_path, "device": Path(os.devnull)}[kind]
    with corrupt.unblocking_fifo(path) if kind == "fifo" else contextlib.nullcontext():
        for load in (fmt.read, slimrt.load):
            start = time.monotonic()
            with pytest.raises(OSError) as info:
                load(path)
            assert str(info.value) == f"'{path}' is not a regular file", load
            assert time.monotonic() - start < 2.0, load


# -- one set of acceptance rules: files the differential fuzzer (tests/fuzz.py) found judged
# differently by the engine and this reader --------------------------------------------------

def _edit_header(data: bytes, edit: Callable[[dict[str, Any], bytes], bytes]) -> bytes:
    header, body = corrupt._split(data)
    body = edit(header, body)
    return corrupt._join(header, body)


def _first_op(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda model: next(op for op in model["ops"] if op["op"] == kind)


def _model_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    return lambda data: corrupt._edit_model(data, edit)


def _unused_tensor(header: dict[str, Any], body: bytes) -> bytes:
    header["stem.weihgt"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}
    return body + b"\0\0\0\0"


def _gap_between_tensors(header: dict[str, Any], body: bytes) -> bytes:
    """Every tensor moves 8 bytes up: a gap before the first (safetensors itself refuses it)."""
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [entry["data_offsets"][0] + 8, entry["data_offsets"][1] + 8]
    return bytes(8) + body


def _text_edit(old: str, new: str) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        pattern = re.escape(old).replace(":", r":\s*")
        out = corrupt._edit_model_text(data, lambda text: re.sub(pattern, new, text, count=1))
        assert out != data
        return out
    return edit


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    """The fields dropped from the first 1x1 conv (their values are the defaults)."""
    def edit(model: dict[str, Any]) -> None:
        op = next(op for op in model["ops"] if op["op"] == "conv" and op["kernel"] == [1, 1]
                  and op["stride"] == [1, 1] and op["pads"] == [0, 0, 0, 0])
        for key in keys:
            del op[key]
    return edit


def _on_every_op(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """An edit of tests/fuzz.py's model that has every op kind (the bundled one has no pools)."""
    import fuzz

    return lambda _: corrupt._edit_model(fmt.to_bytes(fuzz.every_op_model()), edit)


# name -> (edit of the bundled bytes, accepted?, the message of both readers when refused)
AGREEMENT_CASES: dict[str, tuple[Callable[[bytes], bytes], bool, str | None]] = {
    "profile_records_wrong_macs": (
        _model_edit(lambda m: m["profiles"][0].update(macs=m["profiles"][0]["macs"] + 1)), False, None),
    "profile_records_wrong_params": (
        _model_edit(lambda m: m["profiles"][-1].update(params=m["profiles"][-1]["params"] - 1)), False, None),
    "profiles_out_of_cost_order": (_model_edit(lambda m: m["profiles"].reverse()), False, None),
    "unused_tensor": (lambda d: _edit_header(d, _unused_tensor), False,
                      "tensor 'stem.weihgt' is not used by any op or profile; remove it or fix its name"),
    "gap_between_tensors": (lambda d: _edit_header(d, _gap_between_tensors), True, None),
    "nan_constant_in_json": (_text_edit('"min_multiplier":0.25', '"min_multiplier": NaN'), False, None),
    "infinity_constant_in_json": (_text_edit('"min_multiplier":0.25', '"min_multiplier": Infinity'), False,
                                  None),
    "lone_surrogate_in_json": (_text_edit('"name":"tiny_resnet"', '"name": "\\\\ud800"'), False, None),
    "empty_group_name": (_model_edit(lambda m: m["groups"][0].update(name="")), False, None),
    "empty_op_name": (_model_edit(lambda m: m["ops"][1].update(name="")), False, None),
    "duplicate_group_name": (_model_edit(lambda m: m["groups"][1].update(name=m["groups"][0]["name"])), False,
                             None),
    "group_why_not_a_string": (_model_edit(lambda m: m["groups"][0].update(why=3)), False, None),
    "model_name_not_a_string": (_model_edit(lambda m: m.update(name=7)), False, None),
    "model_name_absent": (_model_edit(lambda m: m.pop("name")), True, None),
    "min_multiplier_absent": (_model_edit(lambda m: m.pop("min_multiplier")), True, None),
    "conv_defaults": (_model_edit(_drop("stride", "pads", "dilation", "groups")), True, None),
    "conv_out_group_null": (_model_edit(lambda m: _first_op("conv")(m).update(out_group=None)), False,
                            "conv 'stem' has no out_group; only depthwise convs omit it"),
    "kernel_beyond_64": (_model_edit(lambda m: _first_op("conv")(m).update(kernel=[65, 1])), False, None),
    "pool_dilation_zero": (_on_every_op(lambda m: _first_op("avgpool")(m).update(dilation=[0, 1])), False,
                           None),
    "pool_defaults": (_on_every_op(lambda m: _first_op("avgpool")(m).pop("pads")),
                      True, None),
    "conv_ceil_mode_not_bool": (_model_edit(lambda m: _first_op("conv")(m).update(ceil_mode=5)), False, None),
    "act_on_an_op_without_one": (_model_edit(lambda m: _first_op("flatten")(m).update(act="bogus")), False,
                                 None),
    "input_dimension_beyond_2_20": (
        _model_edit(lambda m: m["input"].update(shape=[1 << 21, 3, 96, 96])), False, None),
    "shuffle_fed_by_a_sliceable_group": (None, False, None),  # built below
}


def _agreement_input(case: str) -> bytes:
    if case == "shuffle_fed_by_a_sliceable_group":  # every profile runs it full, a multiplier would not
        slim = shuffle_builder(fixed=True).build()
        meta = copy.deepcopy(slim.meta)
        meta["groups"][0]["fixed"] = False
        import safetensors.numpy
        return safetensors.numpy.save(dict(slim.tensors), metadata={"slimrt": json.dumps(meta)})
    edit = AGREEMENT_CASES[case][0]
    assert edit is not None
    return edit(bundled_bytes())


@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_engine_and_reader_accept_and_refuse_alike(case: str) -> None:
    data = _agreement_input(case)
    _, accepted, message = AGREEMENT_CASES[case]
    if accepted:
        model, slim = slimrt.load(data), fmt.read(data)
        assert [p.name for p in model.profiles] == [p["name"] for p in slim.meta["profiles"]]
        return
    engine, reader = engine_error(data), reader_error(data)
    if message is not None:
        assert engine == reader == message


def test_short_differential_fuzz_finds_nothing(tmp_path: Path) -> None:
    """A few hundred seeded mutants through tests/fuzz.py's examine (the CI runs thousands, under
    the sanitizers): both readers agree, nothing raises but InvalidModelError, loads stay small."""
    import fuzz

    seeds = fuzz.seed_models()
    meter = fuzz.PeakMeter()
    findings, loaded = [], 0
    for index in range(300):
        _, data = fuzz.mutant(99, index, seeds)
        verdict = fuzz.examine(data, tmp_path / "mutant.slim", meter, np.random.default_rng(index))
        findings += [(index, f) for f in verdict.findings]
        loaded += verdict.loaded
    assert findings == []
    assert loaded > 0  # some mutants (changed weights, reordered keys) are valid models that ran


@pytest.mark.parametrize("depth", [65, 1000])
def test_info_on_deeply_nested_json_prints_one_error_line(tmp_path: Path, capsys, depth: int) -> None:
    """`slimrt info` of a file whose model JSON nests 1000 deep once ended in a RecursionError
    traceback: now one line naming the limit, exit status 2."""
    pytest.importorskip("slimrt.convert.cli")  # the info command comes with the converter
    from slimrt.cli import main

    path = tmp_path / "deep.slim"
    path.write_bytes(corrupt.deep_model_json(bundled_bytes(), depth).data)
    assert main(["info", str(path)]) == 2
    assert capsys.readouterr().err == f"slimrt: error: {DEEP_MODEL}\n"
