"""Data-movement and shape ops against onnxruntime: float32 tensors at run time, int64/bool shape tensors in
constant subgraphs that must fold at load (Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch
exports them)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import bninfer
from bninfer.errors import ModelError, UnsupportedOperatorError
from tests.util import assert_matches_ort, make_model, randn

INT_MAX = np.iinfo(np.int64).max
INT_MIN = np.iinfo(np.int64).min


def i64(*values):
    return np.array(values, np.int64)


def node(op, inputs, outputs=("y",), name=None, **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name or f"{op.lower()}_{outputs[0]}", **attrs)


def check(nodes, inputs, inits=None, opset=13, outputs=("y",)):
    """Compare with onnxruntime on random inputs; return the bninfer session."""
    feeds = {n: randn(*s) for n, s in inputs.items()}
    model = make_model(nodes, inputs, list(outputs), inits or {}, opset=opset)
    assert_matches_ort(model, feeds)
    return bninfer.InferenceSession(model.SerializeToString())


def assert_folded(session, allowed=()):
    """Every shape-computing node went away at load: only `allowed` ops remain to run."""
    left = set(session.optimization_report().nodes_after)
    assert left <= set(allowed), left


def load_error(nodes, inputs, inits, cls, node_name, opset=13):
    model = make_model(nodes, inputs, ["y"], inits, opset=opset)
    with pytest.raises(cls) as info:
        bninfer.InferenceSession(model.SerializeToString())
    assert repr(node_name) in str(info.value), str(info.value)
    return str(info.value)


# -- Concat, Split -----------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,shapes", [
    (0, [(2, 3), (1, 3), (4, 3)]), (1, [(2, 3, 4), (2, 1, 4)]), (-1, [(2, 3, 1), (2, 3, 5), (2, 3, 2)]),
    (2, [(1, 2, 3, 4), (1, 2, 5, 4)]), (-4, [(1, 2, 3, 4), (3, 2, 3, 4)])])
def test_concat(axis, shapes):
    names = [f"x{k}" for k in range(len(shapes))]
    check([node("Concat", names, axis=axis)], dict(zip(names, shapes)))


def test_concat_with_constant():
    check([node("Concat", ["x", "c"], axis=1)], {"x": [2, 3, 5]}, {"c": randn(2, 4, 5)})


def test_concat_mismatch_names_node():
    msg = load_error([node("Concat", ["a", "b"], name="cat7", axis=0)], {"a": [2, 3], "b": [2, 4]}, {},
                     ModelError, "cat7")
    assert "(2, 4)" in msg


@pytest.mark.parametrize("shape,axis,split,opset", [
    ((3, 8, 2), 1, [2, 5, 1], 13), ((7, 3), 0, [1, 6], 13), ((4, 9), -1, [4, 0, 5], 13),
    ((3, 8, 2), 1, [3, 5], 11), ((6, 5), 0, [2, 2, 2], 2)])
def test_split_sizes(shape, axis, split, opset):
    outs = [f"y{k}" for k in range(len(split))]
    if opset < 13:
        nodes, inits = [node("Split", ["x"], outs, axis=axis, split=split)], {}
    else:
        nodes, inits = [node("Split", ["x", "s"], outs, axis=axis)], {"s": i64(*split)}
    check(nodes, {"x": list(shape)}, inits, opset=opset, outputs=outs)


@pytest.mark.parametrize("shape,axis,n", [((9, 2), 0, 3), ((2, 10), -1, 5), ((4, 6, 2), 1, 2)])
def test_split_even(shape, axis, n):
    outs = [f"y{k}" for k in range(n)]
    check([node("Split", ["x"], outs, axis=axis)], {"x": list(shape)}, opset=13, outputs=outs)


@pytest.mark.parametrize("dim,n", [(7, 3), (8, 3), (10, 4), (6, 3), (5, 5)])
def test_split_num_outputs(dim, n):
    """Opset 18: num_outputs chunks of ceil(dim / n), the last one smaller."""
    outs = [f"y{k}" for k in range(n)]
    check([node("Split", ["x"], outs, axis=1, num_outputs=n)], {"x": [2, dim]}, opset=18, outputs=outs)


def test_split_errors_name_node():
    msg = load_error([node("Split", ["x", "s"], ["y", "z"], name="bad_split", axis=1)], {"x": [2, 8]},
                     {"s": i64(3, 4)}, ModelError, "bad_split")
    assert "sum" in msg
    load_error([node("Split", ["x"], ["y", "z"], name="odd_split", axis=1)], {"x": [2, 7]}, {},
               ModelError, "odd_split")
    load_error([node("Split", ["x"], ["y", "z", "w", "v"], name="n_split", axis=1, num_outputs=4)],
               {"x": [2, 5]}, {}, ModelError, "n_split", opset=18)


# -- Slice -------------------------------------------------------------------------------------------

SLICES = [
    ([1], [4], [0], None),
    ([-3, 0], [INT_MAX, -1], [2, 1], None),
    ([4], [INT_MIN], [0], [-1]),
    ([-1, 5], [-8, 0], [1, 2], [-2, -3]),
    ([0, 1, 2], [5, 6, 7], None, [2, 2, 3]),
    ([-100], [100], [1], [1]),
    ([10], [-10], [2], [-1]),
    ([1], [3], [-1], None),
    ([5], [1], [-2], [-2]),
    ([2, 2], [3, 3], [-1, 0], [5, 7]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES, ids=[str(k) for k in range(len(SLICES))])
def test_slice(starts, ends, axes, steps):
    inputs, inits = ["x", "s", "e"], {"s": i64(*starts), "e": i64(*ends)}
    if axes is not None or steps is not None:
        inputs.append("a" if axes is not None else "")
        if axes is not None:
            inits["a"] = i64(*axes)
    if steps is not None:
        inputs.append("t")
        inits["t"] = i64(*steps)
    check([node("Slice", inputs)], {"x": [5, 6, 7]}, inits)


def test_slice_empty_result():
    # An empty slice concatenated back: the zero-size tensor must flow through planning.
    nodes = [node("Slice", ["x", "s", "e", "a"], ["empty"], name="sl"),
             node("Concat", ["empty", "x"], name="cat", axis=0)]
    check(nodes, {"x": [3, 4]}, {"s": i64(2), "e": i64(1), "a": i64(0)})


@pytest.mark.parametrize("opset", [1, 9, 10])
def test_slice_old_opsets(opset):
    if opset < 10:
        nodes, inits = [node("Slice", ["x"], starts=[1, -4], ends=[INT_MAX, -1], axes=[0, 2])], {}
    else:
        nodes = [node("Slice", ["x", "s", "e", "a"])]
        inits = {"s": i64(1, -4), "e": i64(INT_MAX, -1), "a": i64(0, 2)}
    check(nodes, {"x": [4, 3, 6]}, inits, opset=opset)


def test_slice_zero_step_names_node():
    load_error([node("Slice", ["x", "s", "e", "a", "t"], name="slice0")], {"x": [4, 4]},
               {"s": i64(0), "e": i64(3), "a": i64(0), "t": i64(0)}, ModelError, "slice0")


# -- Flatten, Reshape, Transpose, Squeeze, Unsqueeze ----------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check([node("Flatten", ["x"], axis=axis)], {"x": [2, 3, 4]})


@pytest.mark.parametrize("shape", [[0, -1], [-1], [2, 0, 2, -1], [4, 6], [0, 0, 4], [-1, 1, 3], [24, 1]])
def test_reshape(shape):
    check([node("Reshape", ["x", "s"])], {"x": [2, 3, 4]}, {"s": i64(*shape)})


def test_reshape_allowzero():
    check([node("Reshape", ["x", "s"], allowzero=1)], {"x": [2, 3, 4]}, {"s": i64(3, 8)}, opset=14)
    # allowzero=1 keeps a literal 0: an empty int64 constant reshaped to (3, 0) and back, then Cast
    nodes = [node("Reshape", ["c", "s"], ["r"], allowzero=1), node("Concat", ["r", "r"], ["r2"], axis=1),
             node("Reshape", ["r2", "s2"], ["r3"], allowzero=1), node("Cast", ["r3"], ["rc"], to=TensorProto.FLOAT),
             node("Concat", ["rc", "x"], ["y"], axis=0)]
    check(nodes, {"x": [2, 3]}, {"c": np.zeros((0, 3), np.int64), "s": i64(3, 0), "s2": i64(0, 3)}, opset=14)


def test_reshape_opset1_attribute():
    check([node("Reshape", ["x"], shape=[6, -1])], {"x": [2, 3, 4]}, opset=1)


def test_reshape_errors_name_node():
    msg = load_error([node("Reshape", ["x", "s"], name="rs1")], {"x": [2, 3, 4]}, {"s": i64(5, 5)},
                     ModelError, "rs1")
    assert "24" in msg
    load_error([node("Reshape", ["x", "s"], name="rs2")], {"x": [2, 3, 4]}, {"s": i64(-1, -1)},
               ModelError, "rs2")
    load_error([node("Reshape", ["x", "s"], name="rs3")], {"x": [2, 3, 4]}, {"s": i64(5, -1)},
               ModelError, "rs3")


def test_reshape_runtime_shape_is_refused():
    nodes = [node("Cast", ["s"], ["si"], to=TensorProto.INT64), node("Reshape", ["x", "si"], name="dyn")]
    load_error(nodes, {"x": [2, 3, 4], "s": [2]}, {}, UnsupportedOperatorError, "dyn")


@pytest.mark.parametrize("shape,perm", [((2, 3, 4), None), ((2, 3, 4), [0, 2, 1]), ((2, 3, 4), [2, 0, 1]),
                                        ((2, 3, 4, 5), [1, 0, 3, 2]), ((3, 5), [1, 0]), ((7,), [0])])
def test_transpose(shape, perm):
    attrs = {} if perm is None else {"perm": perm}
    check([node("Transpose", ["x"], **attrs)], {"x": list(shape)})


def test_transpose_bad_perm_names_node():
    load_error([node("Transpose", ["x"], name="tp", perm=[0, 0, 1])], {"x": [2, 3, 4]}, {}, ModelError, "tp")


@pytest.mark.parametrize("axes", [None, [0], [-3], [0, 2], [2, 0, -1]])
def test_squeeze(axes):
    inits = {} if axes is None else {"a": i64(*axes)}
    check([node("Squeeze", ["x"] + (["a"] if axes is not None else []))], {"x": [1, 3, 1, 4, 1]}, inits)


def test_squeeze_opset11_attribute():
    check([node("Squeeze", ["x"], axes=[0, -2])], {"x": [1, 3, 1, 4]}, opset=11)


def test_squeeze_non_unit_axis_names_node():
    load_error([node("Squeeze", ["x", "a"], name="sq")], {"x": [1, 3]}, {"a": i64(1)}, ModelError, "sq")


@pytest.mark.parametrize("axes", [[0], [-1], [0, 3], [1, -1], [4, 0, 2]])
def test_unsqueeze(axes):
    check([node("Unsqueeze", ["x", "a"])], {"x": [3, 4]}, {"a": i64(*axes)})


def test_unsqueeze_opset11_attribute():
    check([node("Unsqueeze", ["x"], axes=[0, -1])], {"x": [3, 4]}, opset=11)


def test_unsqueeze_repeated_axis_names_node():
    load_error([node("Unsqueeze", ["x", "a"], name="usq")], {"x": [3]}, {"a": i64(0, -3)}, ModelError, "usq")


# -- Pad ---------------------------------------------------------------------------------------------

PADS = [[0, 1, 2, 0, 2, 1], [1, 0, 0, 1, 2, 3], [0, -1, 2, 0, 1, -2], [0, 2, 4, 0, 1, 3], [0, 0, -2, 0, 0, -1]]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", PADS, ids=[str(k) for k in range(len(PADS))])
def test_pad_modes(mode, pads):
    check([node("Pad", ["x", "p"], mode=mode)], {"x": [2, 3, 5]}, {"p": i64(*pads)}, opset=19)


def test_pad_constant_value_and_axes():
    check([node("Pad", ["x", "p", "v"])], {"x": [2, 3, 5]}, {"p": i64(0, 1, 2, 1, 0, 3),
                                                               "v": np.float32(-1.5)}, opset=13)
    check([node("Pad", ["x", "p", "v", "a"])], {"x": [2, 3, 5]},
          {"p": i64(2, -1, 1, 3), "v": np.float32(4.0), "a": i64(-1, 0)}, opset=18)
    check([node("Pad", ["x", "p", "", "a"], mode="reflect")], {"x": [2, 3, 5]},
          {"p": i64(1, 2), "a": i64(1)}, opset=18)


@pytest.mark.parametrize("opset", [2, 11])
def test_pad_old_opsets(opset):
    if opset < 11:
        nodes, inits = [node("Pad", ["x"], pads=[0, 1, 2, 1, 0, 3], value=2.5)], {}
    else:
        nodes, inits = [node("Pad", ["x", "p", "v"], mode="edge")], {"p": i64(0, 1, 2, 1, 0, 3),
                                                                      "v": np.float32(0)}
    check(nodes, {"x": [2, 3, 5]}, inits, opset=opset)


def test_pad_errors_name_node():
    load_error([node("Pad", ["x", "p"], name="pad_crop")], {"x": [2, 3]}, {"p": i64(0, -2, 0, -2)},
               ModelError, "pad_crop")
    load_error([node("Pad", ["x", "p"], name="pad_refl", mode="reflect")], {"x": [2, 3]},
               {"p": i64(0, 3, 0, 0)}, ModelError, "pad_refl")
    load_error([node("Pad", ["x", "p"], name="pad_len")], {"x": [2, 3]}, {"p": i64(0, 1, 0)},
               ModelError, "pad_len")


# -- Gather, Expand, Tile ----------------------------------------------------------------------------

@pytest.mark.parametrize("axis,indices", [
    (0, np.array(1, np.int64)), (0, i64(2, 0, -1)), (1, np.array([[0, 2], [-3, 1]], np.int64)),
    (-1, i64(4, 0, 0)), (2, np.array(-2, np.int64)), (1, np.array([1, 0], np.int32))])
def test_gather(axis, indices):
    check([node("Gather", ["x", "i"], axis=axis)], {"x": [3, 4, 5]}, {"i": indices})


def test_gather_out_of_range_names_node():
    msg = load_error([node("Gather", ["x", "i"], name="gat", axis=1)], {"x": [3, 4]}, {"i": i64(0, 4)},
                     ModelError, "gat")
    assert "4" in msg


@pytest.mark.parametrize("in_shape,shape", [((3, 1), (2, 1, 4)), ((1, 4), (3, 4)), ((2, 3), (2, 3)),
                                            ((3, 1, 5), (1, 1, 2, 1)), ((4,), (2, 1))])
def test_expand(in_shape, shape):
    check([node("Expand", ["x", "s"])], {"x": list(in_shape)}, {"s": i64(*shape)})


def test_expand_incompatible_names_node():
    load_error([node("Expand", ["x", "s"], name="exp")], {"x": [3, 2]}, {"s": i64(4, 2, 4)},
               ModelError, "exp")


@pytest.mark.parametrize("shape,repeats", [((2, 3), (2, 1)), ((2, 3), (1, 3)), ((2, 1, 3), (2, 2, 2)),
                                           ((5,), (1,))])
def test_tile(shape, repeats):
    check([node("Tile", ["x", "r"])], {"x": list(shape)}, {"r": i64(*repeats)})


# -- Range, ConstantOfShape (constants only) -----------------------------------------------------------

@pytest.mark.parametrize("start,limit,delta", [(0.5, 7.3, 0.7), (3.0, -2.0, -0.3), (1.0, 1.0, 1.0),
                                               (0.1, 1.0, 0.1)])
def test_range_float(start, limit, delta):
    nodes = [node("Range", ["a", "b", "c"], ["r"]), node("Unsqueeze", ["r", "z"], ["ru"]),
             node("Add", ["x", "ru"])]
    n = max(int(np.ceil((np.float32(limit) - np.float32(start)) / np.float64(np.float32(delta)))), 0)
    inits = {"a": np.float32(start), "b": np.float32(limit), "c": np.float32(delta), "z": i64(0)}
    check(nodes, {"x": [2, n]}, inits, opset=13)


@pytest.mark.parametrize("start,limit,delta", [(10, 1, -3), (0, 7, 2), (5, 5, 1), (-4, 4, 3)])
def test_range_int(start, limit, delta):
    nodes = [node("Range", ["a", "b", "c"], ["r"]), node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             node("Concat", ["rf", "x"], axis=0)]
    check(nodes, {"x": [3]}, {"a": np.int64(start), "b": np.int64(limit), "c": np.int64(delta)})


def test_constant_of_shape_values():
    value_f = helper.make_tensor("v", TensorProto.FLOAT, [1], [2.5])
    value_i = helper.make_tensor("v", TensorProto.INT64, [1], [7])
    nodes = [node("ConstantOfShape", ["s"], ["c0"]),  # default: float 0
             node("ConstantOfShape", ["s"], ["c1"], name="cos1", value=value_f),
             node("ConstantOfShape", ["s"], ["c2"], name="cos2", value=value_i),
             node("Cast", ["c2"], ["c2f"], to=TensorProto.FLOAT),
             node("Sum", ["x", "c0", "c1", "c2f"])]
    session = check(nodes, {"x": [2, 3]}, {"s": i64(2, 3)})
    assert_folded(session, {"Sum", "Add"})


# -- int64 / bool constant subgraphs (fold at load) ------------------------------------------------------

def test_int64_constant_chain_folds():
    """Every shape op evaluated on int64 constants at load, the result used at run time."""
    data = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    nodes = [node("Transpose", ["d"], ["t"], perm=[2, 0, 1]),               # (4, 2, 3)
             node("Slice", ["t", "s", "e", "a", "st"], ["sl"]),              # (4, 2, 2)
             node("Split", ["sl", "sp"], ["p0", "p1"], axis=0),             # (1,2,2), (3,2,2)
             node("Concat", ["p1", "p0"], ["c"], axis=0),                    # (4, 2, 2)
             node("Gather", ["c", "gi"], ["g"], axis=1),                     # (4, 2, 2)
             node("Pad", ["g", "pads", "pv"], ["pd"]),                      # (4, 3, 2)
             node("Reshape", ["pd", "rs"], ["r"]),                           # (2, 12)
             node("Tile", ["r", "rep"], ["tl"]),                             # (2, 24)
             node("Unsqueeze", ["tl", "ua"], ["tl2"]),                       # (1, 2, 24)
             node("Squeeze", ["tl2", "sa"], ["sq"]),
             node("Expand", ["sq", "es"], ["ex"]),                           # (2, 24)
             node("Cast", ["ex"], ["f"], to=TensorProto.FLOAT),
             node("Add", ["x", "f"])]
    inits = {"d": data, "s": i64(-1), "e": i64(INT_MIN), "a": i64(2), "st": i64(-2),
             "sp": i64(1, 3), "gi": i64(1, -2), "pads": i64(0, 1, 0, 0, 0, 0), "pv": np.int64(-7),
             "rs": i64(2, -1), "rep": i64(1, 2), "sa": i64(0), "ua": i64(0), "es": i64(2, 24)}
    session = check(nodes, {"x": [2, 24]}, inits)
    assert_folded(session, {"Add"})


def test_bool_and_int32_constants_fold():
    mask = np.array([[True, False, True], [False, False, True]])
    nodes = [node("Transpose", ["m"], ["mt"]), node("Concat", ["mt", "mt"], ["mc"], axis=1),
             node("Reshape", ["mc", "s"], ["mr"]), node("Where", ["mr", "x", "z"]),
             ]
    check(nodes, {"x": [2, 6]}, {"m": mask, "s": i64(2, 6), "z": np.float32(0)})
    idx = np.array([2, 0, 1], np.int32)
    check([node("Gather", ["c", "i"], ["g"], axis=0), node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT),
           node("Mul", ["x", "gf"])], {"x": [3]}, {"c": np.array([4, 5, 6], np.int32), "i": idx})


# -- torch-style shape subgraphs on run-time inputs (Shape folds once input shapes are bound) -----------

def test_torch_flatten_chain():
    """x.view(x.size(0), -1)"""
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "i0"], ["n"], axis=0),
             node("Unsqueeze", ["n", "ax"], ["nu"]), node("Concat", ["nu", "m1"], ["shp"], axis=0),
             node("Reshape", ["x", "shp"])]
    session = check(nodes, {"x": [2, 3, 4, 5]}, {"i0": np.array(0, np.int64), "ax": i64(0), "m1": i64(-1)})
    assert_folded(session, {"Reshape"})


def test_torch_merge_last_dims_chain():
    """x.reshape(b, c, h * w) with every size read from Shape, sliced, multiplied."""
    nodes = [node("Shape", ["x"], ["s"]), node("Slice", ["s", "z", "two", "z"], ["bc"]),
             node("Gather", ["s", "i2"], ["h"]), node("Gather", ["s", "i3"], ["w"]),
             node("Mul", ["h", "w"], ["hw"]), node("Unsqueeze", ["hw", "z"], ["hwu"]),
             node("Concat", ["bc", "hwu"], ["shp"], axis=0), node("Reshape", ["x", "shp"])]
    inits = {"z": i64(0), "two": i64(2), "i2": np.array(2, np.int64), "i3": np.array(3, np.int64)}
    session = check(nodes, {"x": [2, 3, 4, 5]}, inits)
    assert_folded(session, {"Reshape"})


def test_shape_start_end_and_size():
    nodes = [node("Shape", ["x"], ["s1"], start=1, end=-1), node("Shape", ["x"], ["s2"], start=-2),
             node("Shape", ["x"], ["s3"], start=-10, end=10), node("Size", ["x"], ["n"]),
             node("Unsqueeze", ["n", "z"], ["nu"]), node("Concat", ["s1", "s2", "s3", "nu"], ["all"], axis=0),
             node("Cast", ["all"], ["y"], to=TensorProto.FLOAT)]
    check(nodes, {"x": [2, 3, 4, 5]}, {"z": i64(0)}, opset=15)


def test_constant_of_shape_from_shape():
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])
    nodes = [node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], ["c"], value=value),
             node("Add", ["x", "c"])]
    session = check(nodes, {"x": [2, 3, 5]})
    assert_folded(session, {"Add"})


def test_expand_to_shape_of_other_input():
    nodes = [node("Shape", ["b"], ["s"]), node("Expand", ["a", "s"], ["e"]), node("Mul", ["e", "b"])]
    session = check(nodes, {"a": [3, 1], "b": [2, 3, 4]})
    assert_folded(session, {"Expand", "Mul"})
