"""The .bninfer format (bninfer/serialize.py): a round trip keeps the graph and the outputs exactly, and
every hostile or damaged file is refused with a ModelError that names the problem (never another
exception, never an unpickled object)."""
from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bninfer
from bninfer import serialize
from bninfer.ir import Graph
from tests.graphs import Builder

DATA = Path(__file__).parent / "data"


def _assert_same_value(a, b) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            _assert_same_value(x, y)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (a, b)
        for k in a:
            _assert_same_value(a[k], b[k])
    else:
        assert a == b and type(a) is type(b), (a, b)


def assert_graphs_equal(a: Graph, b: Graph) -> None:
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.name == b.name
    assert len(a.nodes) == len(b.nodes)
    for m, n in zip(a.nodes, b.nodes):
        assert (m.op, m.name, m.inputs, m.outputs) == (n.op, n.name, n.inputs, n.outputs)
        _assert_same_value(m.attrs, n.attrs)
    consts_a = {k: v for k, v in a.values.items() if v.is_const}
    consts_b = {k: v for k, v in b.values.items() if v.is_const}
    assert set(consts_a) == set(consts_b)
    for k, v in consts_a.items():
        _assert_same_value(v.data, consts_b[k].data)
    for name in a.inputs:
        assert tuple(a.values[name].shape) == tuple(b.values[name].shape)
        assert a.values[name].dtype == b.values[name].dtype


def _every_fusion_model():
    """A small graph with a prologue (BN-PRelu before a conv), a residual, Clip and Swish activations,
    a post affine (BN after Relu) and a Gemm epilogue: attributes with tuples, dicts and slopes."""
    b = Builder(3)
    h = b.node("PRelu", [b.bn("x", 4), b.const("slope", np.linspace(0.1, 0.4, 4, dtype=np.float32)
                                                    .reshape(4, 1, 1))])
    c = b.conv(h, 4, 4)
    c = b.node("Add", [b.bn(c, 4), "x"])
    c = b.node("Clip", [c, b.const("lo", np.float32(-1)), b.const("hi", np.float32(2))])
    s = b.conv(c, 4, 6)
    s = b.node("Mul", [s, b.node("Sigmoid", [s])])
    s = b.bn(b.node("Relu", [b.conv(s, 6, 6)]), 6)
    g = b.node("Flatten", [b.node("GlobalAveragePool", [s])])
    y = b.node("Relu", [b.node("Gemm", [g, b.const("W", np.random.default_rng(0).standard_normal((6, 5))
                                                     .astype(np.float32))])])
    return b.model({"x": [1, 4, 7, 9]}, [y])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(session, path of its .bninfer file, feeds, outputs)."""
    model = _every_fusion_model()
    sess = bninfer.InferenceSession(model.SerializeToString())
    path = tmp_path_factory.mktemp("ser") / "model.bninfer"
    sess.save_optimized(str(path))
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 4, 7, 9)).astype(np.float32)}
    return sess, path, feeds, sess.run(None, feeds)


def test_round_trip_graph_and_outputs(saved):
    sess, path, feeds, expected = saved
    graph, report = serialize.load(str(path))
    assert_graphs_equal(sess.optimized_graph(), graph)
    ours = sess.optimization_report()
    assert (report.nodes_before, report.nodes_after, report.batchnorms, report.fusions, report.eliminated) == \
        (ours.nodes_before, ours.nodes_after, ours.batchnorms, ours.fusions, ours.eliminated)
    kinds = {k for n in graph.nodes for k in n.attrs.get("extras", {})}
    assert {"pre_scale", "pre_slope", "residual", "post_scale"} <= kinds, kinds
    loaded = bninfer.InferenceSession(str(path))
    for a, b in zip(expected, loaded.run(None, feeds)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # From bytes as well, and metadata before any run.
    from_bytes = bninfer.InferenceSession(path.read_bytes())
    assert [(a.name, a.shape, a.type) for a in from_bytes.get_outputs()] == \
        [(a.name, [1, 5], "tensor(float)") for a in sess.get_outputs()]
    assert from_bytes.get_inputs()[0].shape == [1, 4, 7, 9]
    assert str(from_bytes.optimization_report()) == str(ours)


@pytest.mark.parametrize("fixture", ["preact_block_classic", "mlp_bn1d_dynamo_noopt", "se_silu_dynamo"])
def test_round_trip_torch_fixtures(tmp_path, fixture):
    sess = bninfer.InferenceSession(str(DATA / f"{fixture}.onnx"))
    x = np.load(DATA / f"{fixture}.npz")["input"]
    expected = sess.run(None, {sess.get_inputs()[0].name: x})
    path = tmp_path / "m.bninfer"
    sess.save_optimized(str(path))
    graph, _ = serialize.load(str(path))
    assert_graphs_equal(sess.optimized_graph(), graph)
    got = bninfer.InferenceSession(str(path)).run(None, {sess.get_inputs()[0].name: x})
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


# ------------------------------------------------------------------------------------------------
# Hostile files
# ------------------------------------------------------------------------------------------------
def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _with_manifest(path: Path, edit) -> bytes:
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    return _zip(members)


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _refused(data: bytes, *words: str, session_only: bool = False) -> str:
    """The file is refused by serialize.load and by InferenceSession, with a ModelError naming it
    (session_only: a graph that reads well but whose nodes do not fit is refused when it is planned)."""
    for load in (bninfer.InferenceSession,) if session_only else (serialize.load, bninfer.InferenceSession):
        with pytest.raises(bninfer.ModelError) as info:
            load(data)
        message = str(info.value)
        for word in words:
            assert word in message, (word, message)
    return message


def _first_const(manifest: dict) -> tuple[str, str]:
    return next(iter(manifest["graph"]["constants"].items()))


def test_not_a_zip():
    with pytest.raises(bninfer.ModelError, match="not a readable .bninfer"):
        serialize.load(b"this is not a zip archive at all")
    _refused(serialize.MAGIC + b"\x00" * 64, "not a readable .bninfer")


def test_truncated_zip(saved):
    data = saved[1].read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        _refused(data[:cut], "not a readable .bninfer")


def test_corrupted_member_bad_crc(saved):
    data = bytearray(saved[1].read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("tensors/0.npy")
    # Flip a byte inside the tensor's data (after its local header and the .npy header).
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    _refused(bytes(data), "tensors/0.npy", "cannot be read")


def test_missing_manifest(saved):
    members = _members(saved[1])
    del members["manifest.json"]
    _refused(_zip(members), "no manifest.json")


def test_bad_json(saved):
    members = _members(saved[1])
    members["manifest.json"] = b'{"format": "bninfer", "version": 1, "graph": {'
    _refused(_zip(members), "not valid JSON")
    members["manifest.json"] = b"\xff\xfe\x00garbage"
    _refused(_zip(members), "not valid JSON")


def test_wrong_format_tag(saved):
    _refused(_with_manifest(saved[1], lambda m: m.update(format="onnx")), "wrong format tag")
    members = _members(saved[1])
    members["manifest.json"] = b"[1, 2, 3]"
    _refused(_zip(members), "wrong format tag")


def test_future_version(saved):
    _refused(_with_manifest(saved[1], lambda m: m.update(version=2)), "version 2", "not supported")


@pytest.mark.parametrize("ref", ["../outside.npy", "/etc/passwd", "manifest.json", "tensors/999.npy", 7])
def test_tensor_reference_outside_tensors_or_missing(saved, ref):
    def edit(m):
        name, _ = _first_const(m)
        m["graph"]["constants"][name] = ref

    _refused(_with_manifest(saved[1], edit), "missing tensor")


def test_tensor_reference_in_attributes_is_checked_too(saved):
    def edit(m):
        m["graph"]["nodes"][0]["attrs"]["bogus"] = {"__tensor__": "../../secret.npy"}

    _refused(_with_manifest(saved[1], edit), "missing tensor", "secret")


def test_pickled_object_array_is_refused(saved):
    members = _members(saved[1])
    manifest = json.loads(members["manifest.json"])
    _, ref = _first_const(manifest)
    members[ref] = _npy(np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    message = _refused(_zip(members), ref)
    assert "allow_pickle" in message or "Object arrays" in message


def test_unsupported_dtype_tensor_is_refused(saved):
    members = _members(saved[1])
    manifest = json.loads(members["manifest.json"])
    name, ref = _first_const(manifest)
    shape = bninfer.InferenceSession(saved[1].read_bytes()).optimized_graph().values[name].shape
    for bad in (np.zeros(shape, np.complex64), np.full(shape, "x")):
        members[ref] = _npy(bad)
        _refused(_zip(members), "unsupported dtype")


def test_unknown_op(saved):
    _refused(_with_manifest(saved[1], lambda m: m["graph"]["nodes"][0].update(op="RunShellCommand")),
             "unknown op", "RunShellCommand")


def test_node_reading_an_undefined_name(saved):
    _refused(_with_manifest(saved[1], lambda m: m["graph"]["nodes"][-1]["inputs"].__setitem__(0, "ghost")),
             "reads undefined", "ghost")


def test_undefined_output_and_redefined_value(saved):
    _refused(_with_manifest(saved[1], lambda m: m["graph"]["outputs"][0].update(name="nowhere")),
             "not defined", "nowhere")

    def dup(m):
        m["graph"]["nodes"].append(copy.deepcopy(m["graph"]["nodes"][0]))
    _refused(_with_manifest(saved[1], dup), "redefines")


def test_giant_declared_member(saved):
    """A member whose central directory entry declares more than MAX_MEMBER_BYTES (a zip bomb's
    promise) is refused before anything is read or allocated."""
    members = _members(saved[1])
    buf = io.BytesIO()
    z = zipfile.ZipFile(buf, "w")
    for name, data in members.items():
        z.writestr(name, data)
    z.getinfo("tensors/0.npy").file_size = serialize.MAX_MEMBER_BYTES + (1 << 30)  # ZIP64 on close
    z.close()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as check:
        assert check.getinfo("tensors/0.npy").file_size > serialize.MAX_MEMBER_BYTES
    _refused(buf.getvalue(), "tensors/0.npy", "too large")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["graph"]["nodes"][0].update(inputs="x"), ("malformed",)),
    (lambda m: m["graph"]["nodes"][0].update(attrs=[1, 2]), ("malformed",)),
    (lambda m: m["graph"]["nodes"][0].pop("op"), ("malformed",)),
    (lambda m: m["graph"]["inputs"][0].update(dtype="object"), ("bad dtype",)),
    (lambda m: m["graph"]["inputs"][0].update(shape=[1, -4, 7, 9]), ("bad dtype or shape",)),
    (lambda m: m["graph"].update(nodes={"a": 1}), ("malformed",)),
    (lambda m: m.update(graph="x"), ("no graph",)),
    (lambda m: m.update(report={"batchnorms": 5}), ("report is malformed",)),
])
def test_malformed_manifests(saved, edit, words):
    _refused(_with_manifest(saved[1], edit), *words)


@pytest.mark.parametrize("edit", [
    lambda m: m["graph"]["nodes"][0]["attrs"].update(pads="abc"),
    lambda m: m["graph"]["nodes"][0]["attrs"].update(extras={"residual": 99}),
    lambda m: m["graph"]["nodes"][0]["attrs"].update(pre_activation=["NoSuchActivation", {}]),
])
def test_nodes_that_do_not_fit_are_refused_when_planned(saved, edit):
    _refused(_with_manifest(saved[1], edit), "inconsistent", session_only=True)
