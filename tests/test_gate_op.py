"""The gate op (DS-Net's dynamic gate) in the .slim format and the engine: its head against the
numpy reference, gated runs against static runs, per-image choices, the cap, bad files."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import safetensors.numpy

import slimrt
from slimrt import format as fmt
from slimrt.builder import ModelBuilder
from slimrt.errors import InvalidModelError, ProfileError
from slimrt.reference import run_reference, run_reference_gated

from gate_models import SIZES, force, gated_model, inputs, per_image_model  # noqa: E402


def load(slim: fmt.SlimFile) -> slimrt.Model:
    return slimrt.load(fmt.to_bytes(slim))


def engine_error(data: bytes) -> str:
    with pytest.raises(InvalidModelError) as info:
        slimrt.load(data)
    return str(info.value)


# -- the head against the reference ------------------------------------------------------------

@pytest.mark.parametrize("stem, shared, hidden, body", SIZES)
def test_gated_run_matches_the_reference_logits_choices_and_output(stem, shared, hidden, body) -> None:
    slim = gated_model(stem, shared, hidden, body, seed=stem, slim_scale=3.0)
    model = load(slim)
    assert model.has_gate
    x = inputs(7, seed=stem)
    session = model.session()
    out = session.run(x, profile="gate")
    ref_out, ref_choice, ref_logits = run_reference_gated(slim, x)
    np.testing.assert_allclose(session.last_logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert session.last_choice.tolist() == np.argmax(session.last_logits, axis=1).tolist()
    top2 = np.sort(ref_logits, axis=1)[:, -2:] if ref_logits.shape[1] > 1 else None
    clear = np.ones(len(x), bool) if top2 is None else top2[:, 1] - top2[:, 0] > 1e-3
    assert (session.last_choice[clear] == ref_choice[clear]).all()
    rows = np.flatnonzero(session.last_choice == ref_choice)
    np.testing.assert_allclose(out[rows], ref_out[rows], rtol=1e-4, atol=1e-4)
    assert out.shape == (7, 5)


def test_the_head_is_the_double_head_of_the_spec() -> None:
    """An independent count of the gate's arithmetic (not the reference's code): logits and the
    attention's effect on the next layer, from the stem's output computed by a static run."""
    slim = gated_model()
    t = slim.tensors
    x = inputs(3, seed=4)
    meta = copy.deepcopy(slim.meta)  # the stem alone: output the stem tensor (7 active channels)
    meta["output"] = "stem"
    stem = run_reference(fmt.SlimFile(meta, t), x, "p0")
    pooled = stem.mean(axis=(2, 3))
    h = np.maximum(np.einsum("nc,cd->nd", pooled, t["g.reduce.weight"]) + t["g.reduce.bias"], 0)
    logits = np.einsum("nd,dk->nk", h, t["g.slim.weight"]) + t["g.slim.bias"]
    session = load(slim).session()
    session.run(x, "gate")
    np.testing.assert_allclose(session.last_logits, logits, rtol=1e-4, atol=1e-5)
    meta["output"] = "g"
    att = 2 / (1 + np.exp(-(np.einsum("nd,dc->nc", h, t["g.expand.weight"]) + t["g.expand.bias"])))
    np.testing.assert_allclose(run_reference(fmt.SlimFile(meta, t), x, "p0"), stem * att[:, :, None, None],
                               rtol=1e-9)


# -- gated runs against static runs ----------------------------------------------------------------

@pytest.mark.parametrize("stem, shared, hidden, body", SIZES)
def test_a_forced_choice_equals_the_static_run_of_that_profile(stem, shared, hidden, body) -> None:
    base = gated_model(stem, shared, hidden, body, seed=stem + 1)
    x = inputs(4, seed=2)
    for k in range(len(body)):
        slim = force(base, k)
        session = load(slim).session()
        out = session.run(x, profile="gate")
        assert session.last_choice.tolist() == [k] * 4
        np.testing.assert_allclose(out, session.run(x, profile=k), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out, run_reference(slim, x, k), rtol=1e-4, atol=1e-4)
    # the choice matters: the profiles give different outputs
    session = load(base).session()
    assert not np.allclose(session.run(x, 0), session.run(x, len(body) - 1), atol=1e-3)


def test_per_image_choices_at_batch_above_one_keep_the_batch_order() -> None:
    slim = per_image_model()
    x = inputs(9, seed=5)
    session = load(slim).session(threads=2)
    out = session.run(x, profile="gate")
    choice = session.last_choice
    assert len(set(choice.tolist())) == 3, choice
    _, ref_choice, _ = run_reference_gated(slim, x)
    assert choice.tolist() == ref_choice.tolist()
    for i, k in enumerate(choice.tolist()):
        np.testing.assert_allclose(out[i], session.run(x[i:i + 1], profile=k)[0], rtol=1e-5, atol=1e-6)
    for i in range(9):  # one image alone chooses as it does in the batch
        session.run(x[i:i + 1], "gate")
        assert session.last_choice.tolist() == [choice[i]]
    # the batch order is kept: a reversed batch gives reversed rows
    np.testing.assert_allclose(session.run(x[::-1].copy(), "gate"), out[::-1], rtol=1e-6, atol=1e-7)
    assert session.last_choice.tolist() == choice.tolist()[::-1]


def test_max_profile_caps_the_choice() -> None:
    slim = per_image_model()
    x = inputs(9, seed=5)
    model = load(slim)
    session = model.session()
    session.run(x, "gate")
    free, logits = session.last_choice.copy(), session.last_logits.copy()
    for cap in range(3):
        for key in (cap, model.profiles[cap].name, model.profiles[cap]):
            out = session.run(x, profile="gate", max_profile=key)
            assert session.last_choice.tolist() == np.argmax(logits[:, :cap + 1], axis=1).tolist()
        assert session.last_choice.max() <= cap
        _, ref_choice, _ = run_reference_gated(slim, x, max_profile=cap)
        assert session.last_choice.tolist() == ref_choice.tolist()
        for i, k in enumerate(session.last_choice.tolist()):
            np.testing.assert_allclose(out[i], session.run(x[i:i + 1], k)[0], rtol=1e-5, atol=1e-6)
    assert free.max() == 2 and free.min() == 0


def test_bad_gated_run_arguments_give_clear_errors() -> None:
    model = load(gated_model())
    session = model.session()
    x = inputs(2)
    for bad, expect in ((3, "profile index 3 is out of range"), ("p9", "unknown profile 'p9'"),
                        (0.5, "max_profile is a profile name, an index or a Profile"), (-1, "out of range")):
        with pytest.raises(ProfileError, match=re.escape(expect)):
            session.run(x, "gate", max_profile=bad)
    assert session.last_choice is None
    with pytest.raises(ValueError, match="max_profile caps the choice of a gated run"):
        session.run(x, "p0", max_profile=1)
    with pytest.raises(ValueError, match="the model takes 3"):
        session.run(np.zeros((1, 2, 9, 11), np.float32), "gate")
    # a multiplier that gives the gate other than its channels is refused
    with pytest.raises(ValueError, match="op 'g' \\(gate\\) reads 9 active channels here, its head takes 7"):
        session.run(x, 1.0)
    plain = slimrt.load(slimrt.default_model_path())
    assert not plain.has_gate
    with pytest.raises(ProfileError, match="has no gate op"):
        plain.session().run(np.zeros(plain.input_shape, np.float32), "gate")


def test_gated_run_at_other_input_sizes_and_after_static_runs() -> None:
    slim = force(gated_model(hw=(9, 11)), 1)
    session = load(slim).session()
    for hw in ((9, 11), (13, 7), (9, 11)):
        x = inputs(3, seed=hw[0], hw=hw)
        static = session.run(x, 1)
        np.testing.assert_allclose(session.run(x, "gate"), static, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(static, run_reference(slim, x, 1), rtol=1e-4, atol=1e-4)


# -- file format: round trip and refusals --------------------------------------------------------

def test_gated_model_round_trips_through_save_and_load(tmp_path) -> None:
    slim = per_image_model()
    model = load(slim)
    path = tmp_path / "gated.slim"
    model.save(path)
    again = slimrt.load(path)
    assert again.has_gate and fmt.read(path).meta == slim.meta
    x = inputs(9, seed=5)
    a, b = model.session(), again.session()
    np.testing.assert_array_equal(a.run(x, "gate"), b.run(x, "gate"))
    assert a.last_choice.tolist() == b.last_choice.tolist()
    # costs: the gate's 2*C*D + D*K MACs are in every profile
    c, d, k = 7, 3, 3
    for p, q in zip(model.profiles, slim.meta["profiles"]):
        assert p.macs == q["macs"] and p.params == q["params"]
    with_gate = [fmt.profile_cost(slim, p.widths)[0] for p in model.profiles]
    assert with_gate == [p.macs for p in model.profiles]
    meta = copy.deepcopy(slim.meta)
    meta["ops"] = [op for op in meta["ops"] if op["op"] != "gate"]
    next(op for op in meta["ops"] if op["name"] == "body")["inputs"] = ["stem"]
    assert [fmt.profile_cost(meta, p.widths)[0] + 2 * c * d + d * k for p in model.profiles] == with_gate


def broken(slim: fmt.SlimFile, edit=None, tensors=None) -> tuple[dict, dict]:
    meta = copy.deepcopy(slim.meta)
    if edit:
        edit(meta)
    return meta, dict(slim.tensors if tensors is None else tensors)


def _gate(meta: dict) -> dict:
    return next(op for op in meta["ops"] if op["op"] == "gate")


def _second_gate(meta: dict) -> None:
    g = copy.deepcopy(_gate(meta))
    g.update(name="g2", inputs=["g"], output="g2")
    meta["ops"].insert(2, g)


def _shared_width(meta: dict) -> None:
    meta["profiles"][2]["widths"][0] = 8


def _epilogue_tensors(slim: fmt.SlimFile) -> dict:
    return dict(slim.tensors, **{"stem.scale@p1": np.ones(7, np.float32)})


def _output_width(meta: dict) -> None:
    meta["output"] = "body"


CASES = [
    ("second gate", _second_gate, None, "op 'g2' is a second gate; a model has at most one (the first is 'g')"),
    ("choices", lambda m: _gate(m).update(choices=2), None,
     "gate 'g' has 2 choices, the model has 3 profiles; a gate chooses among all of them"),
    ("shared width", _shared_width, None,
     "group 'stem' is written before gate 'g' and runs at one shared width, but profile 'p0' gives it 7 and "
     "profile 'p2' 8"),
    ("channels", lambda m: [p["widths"].__setitem__(0, 6) for p in m["profiles"]], None,
     "gate 'g' reads 6 active channels at profile 'p0', its \"channels\" is 7"),
    ("epilogue before the gate", None, _epilogue_tensors,
     "op 'stem' runs before gate 'g' and has the per-profile epilogue 'stem.scale@p1'; the ops before a gate "
     "run alike at every profile"),
    ("output width", _output_width, None,
     "the output 'body' has 3 channels at profile 'p0' and 5 at profile 'p1'; a gated model's output has one "
     "width at every profile"),
]


@pytest.mark.parametrize("name, edit, tensors, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_gated_models_are_refused_by_both_readers(name, edit, tensors, expect) -> None:
    slim = gated_model()
    meta, t = broken(slim, edit, tensors(slim) if tensors else None)
    data = safetensors.numpy.save(t, metadata={"slimrt": json.dumps(meta)})
    with pytest.raises(InvalidModelError) as info:
        fmt.read(data)
    assert expect in str(info.value)
    assert expect in engine_error(data)


@pytest.mark.parametrize("tensor", fmt.GATE_TENSORS)
def test_gate_tensors_missing_or_misshapen_are_refused(tensor: str) -> None:
    slim = gated_model()
    name = f"g.{tensor}"
    missing = {k: v for k, v in slim.tensors.items() if k != name}
    data = safetensors.numpy.save(missing, metadata={"slimrt": json.dumps(slim.meta)})
    assert f"op 'g' needs tensor '{name}', which" in engine_error(data)
    with pytest.raises(InvalidModelError, match=re.escape(f"op 'g' needs tensor '{name}', which")):
        fmt.read(data)
    shape = slim.tensors[name].shape
    wrong = dict(slim.tensors, **{name: np.ones(shape[:-1] + (shape[-1] + 1,), np.float32)})
    data = safetensors.numpy.save(wrong, metadata={"slimrt": json.dumps(slim.meta)})
    expect = f"tensor '{name}' has shape {list(wrong[name].shape)}, op 'g' needs {list(shape)}"
    assert engine_error(data) == expect
    with pytest.raises(InvalidModelError, match=re.escape(expect)):
        fmt.read(data)


@pytest.mark.parametrize("field, value, engine, python", [
    ("channels", 0, "op 'g' channels is 0, expected 1..", "\"channels\" must be an integer in [1, "),
    ("hidden", "3", "op 'g' hidden must be an integer", "\"hidden\" must be an integer in [1, "),
    ("choices", None, "op 'g' has no \"choices\"", "op 'g' has no \"choices\" field"),
])
def test_gate_fields_are_checked_before_use(field, value, engine, python) -> None:
    slim = gated_model()

    def edit(meta: dict) -> None:
        if value is None:
            del _gate(meta)[field]
        else:
            _gate(meta)[field] = value
    meta, t = broken(slim, edit)
    data = safetensors.numpy.save(t, metadata={"slimrt": json.dumps(meta)})
    assert engine in engine_error(data)
    with pytest.raises(InvalidModelError, match=re.escape(python)):
        fmt.read(data)


def test_a_huge_gate_is_refused_before_anything_is_allocated() -> None:
    slim = gated_model()
    meta, t = broken(slim, lambda m: _gate(m).update(hidden=1 << 20))
    data = safetensors.numpy.save(t, metadata={"slimrt": json.dumps(meta)})
    assert "tensor 'g.reduce.weight' has shape [7, 3], op 'g' needs [7, 1048576]" == engine_error(data)


def test_gate_needs_a_rank_4_input() -> None:
    b = ModelBuilder("flat", input_shape=(1, 3, 4, 4))
    f = b.flatten(b.input)
    with pytest.raises(InvalidModelError, match="op 'g' \\(gate\\) needs a rank-4 input"):
        b.gate(f, np.ones((2, 48)), np.ones(2), np.ones((48, 2)), np.ones(48), np.ones((1, 2)), np.ones(1), name="g")


def test_onnx_export_and_to_torch_of_a_gated_model() -> None:
    """At every profile the exported graph computes the static run, and its second output is the
    gate's logits: onnxruntime's choice is the engine's."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from slimrt.convert import to_onnx, to_torch
    from slimrt.convert.export import count_macs
    from slimrt.convert.ir import ConversionError

    slim = per_image_model()
    model = load(slim)
    session = model.session()
    x = inputs(9, seed=5)
    session.run(x, "gate")
    choice, logits = session.last_choice, session.last_logits
    for p in model.profiles:
        proto = to_onnx(slim, p.name)
        assert [o.name for o in proto.graph.output] == ["fc", "g.logits"]
        assert count_macs(proto) == p.macs
        run = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out, got = run.run(None, {"input": x})
        np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-5)
        assert np.argmax(got, axis=1).tolist() == choice.tolist()
        static = session.run(x, p.name)
        np.testing.assert_allclose(out, static, rtol=1e-4, atol=1e-5)
        import torch

        with torch.no_grad():
            np.testing.assert_allclose(to_torch(slim, p.name)(torch.from_numpy(x)).numpy(), static, rtol=1e-4,
                                       atol=1e-5)
    with pytest.raises(ConversionError, match="op 'g' \\(gate\\) reads 9 active channels at this profile"):
        to_onnx(slim, 1.0)
