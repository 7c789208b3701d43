"""Resize (and the Upsample / Resize-10 forms the converter upgrades) against onnxruntime: every mode,
nearest_mode and coordinate_transformation_mode, scales or sizes, axes, keep_aspect_ratio_policy,
antialias, tf_crop_and_resize with roi and extrapolation, on odd shapes."""
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import bninfer
from bninfer.errors import ModelError, UnsupportedOperatorError
from bninfer.kernels import resize as K
from tests.util import assert_matches_ort, make_model, randn

F32 = np.float32
COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_crop_and_resize"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SCALES = [[1, 1, 2, 2], [1, 1, 0.5, 0.6], [1, 1, 1.7, 0.8], [1, 1, 3, 1], [1, 1, 1, 0.45]]


def f32(*values):
    return np.array(values, F32)


def i64(*values):
    return np.array(values, np.int64)


def roi_for(rank, axes=None):
    """A crop that reaches outside the input on the last axis (extrapolation) and inside on the others."""
    n = rank if axes is None else len(axes)
    start, end = [0.1] * n, [0.8] * n
    start[-1], end[-1] = -0.2, 1.15
    return f32(*(start + end))


def resize(inputs, name="rs", **attrs):
    return helper.make_node("Resize", list(inputs), ["y"], name=name, **attrs)


def check(nodes, shape, inits, opset=19, x=None, **kw):
    x = randn(*shape) if x is None else x
    return assert_matches_ort(make_model(nodes, {"x": list(shape)}, ["y"], inits, opset=opset), {"x": x}, **kw)


def load_error(nodes, shape, inits, cls, node_name, opset=19, extra_inputs=None):
    inputs = {"x": list(shape), **(extra_inputs or {})}
    model = make_model(nodes, inputs, ["y"], inits, opset=opset)
    with pytest.raises(cls) as info:
        bninfer.InferenceSession(model.SerializeToString())
    assert repr(node_name) in str(info.value), str(info.value)
    return str(info.value)


# -- nearest -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("nearest_mode", NEAREST)
@pytest.mark.parametrize("coord", COORDS)
def test_nearest_scales(coord, nearest_mode, scales):
    node = resize(["x", "roi", "sc"], mode="nearest", coordinate_transformation_mode=coord,
                  nearest_mode=nearest_mode, extrapolation_value=-3.0)
    check([node], (1, 2, 5, 7), {"roi": roi_for(4), "sc": f32(*scales)})


@pytest.mark.parametrize("nearest_mode", NEAREST)
@pytest.mark.parametrize("coord", COORDS + ["tf_half_pixel_for_nn"])
def test_nearest_picks_exactly(coord, nearest_mode):
    """Many length pairs at once on ramps: every picked index must equal onnxruntime's, including
    coordinates that float32 puts a hair off a half (2 / (4/7) = 3.4999998)."""
    lengths_in, lengths_out = [1, 2, 3, 5, 7, 10, 13, 21], [1, 2, 3, 4, 6, 9, 11, 17, 25, 40]
    nodes, inputs, outputs, inits = [], {}, [], {"roi": f32(0, 0, 0, 0.13, 1, 1, 1, 0.91), "e": f32()}
    feeds = {}
    for n_in in lengths_in:
        inputs[f"x{n_in}"] = [1, 1, 1, n_in]
        feeds[f"x{n_in}"] = np.arange(n_in, dtype=F32).reshape(1, 1, 1, n_in)
        for n_out in lengths_out:
            if n_out == n_in:
                continue
            inits[f"s{n_out}"] = i64(1, 1, 1, n_out)
            outputs.append(f"y{n_in}_{n_out}")
            nodes.append(helper.make_node("Resize", [f"x{n_in}", "roi", "e", f"s{n_out}"], [outputs[-1]],
                                          mode="nearest", coordinate_transformation_mode=coord,
                                          nearest_mode=nearest_mode, extrapolation_value=-1.0))
    opset = 11 if coord == "tf_half_pixel_for_nn" else 19
    assert_matches_ort(make_model(nodes, inputs, outputs, inits, opset=opset), feeds, rtol=0, atol=0)


@pytest.mark.parametrize("sizes", [[1, 2, 9, 4], [1, 2, 1, 1], [1, 2, 11, 13], [2, 3, 5, 3], [1, 1, 5, 7]],
                         ids=str)
@pytest.mark.parametrize("coord", COORDS)
def test_nearest_sizes(coord, sizes):
    node = resize(["x", "roi", "", "sz"], mode="nearest", coordinate_transformation_mode=coord,
                  nearest_mode="round_prefer_ceil")
    check([node], (1, 2, 5, 7), {"roi": roi_for(4), "sz": i64(*sizes)})


@pytest.mark.parametrize("shape,scales", [((7,), [2.5]), ((6,), [0.5]), ((3, 5, 7), [2, 0.5, 1.5]),
                                          ((1, 2, 3, 5, 7), [1, 1, 2, 0.5, 1.5]), ((1, 5, 7, 3), [1, 2, 0.6, 1]),
                                          ((2, 3, 5, 7), [2, 1, 1, 1]), ((2, 3, 5, 7), [1, 2, 1, 1.5])])
def test_nearest_ranks(shape, scales):
    for coord in ("asymmetric", "half_pixel", "tf_crop_and_resize"):
        node = resize(["x", "roi", "sc"], mode="nearest", coordinate_transformation_mode=coord)
        check([node], shape, {"roi": roi_for(len(shape)), "sc": f32(*scales)})


# -- linear and cubic --------------------------------------------------------------------------------

@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("coord", COORDS)
def test_linear(coord, scales):
    node = resize(["x", "roi", "sc"], mode="linear", coordinate_transformation_mode=coord,
                  extrapolation_value=2.5)
    check([node], (1, 2, 5, 7), {"roi": roi_for(4), "sc": f32(*scales)})


@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("coord", COORDS)
def test_cubic(coord, scales, exclude_outside):
    node = resize(["x", "roi", "sc"], mode="cubic", coordinate_transformation_mode=coord,
                  exclude_outside=exclude_outside, cubic_coeff_a=-0.5 if exclude_outside else -0.75,
                  extrapolation_value=-1.0)
    check([node], (1, 2, 5, 7), {"roi": roi_for(4), "sc": f32(*scales)})


@pytest.mark.parametrize("mode,shape,scales", [
    ("linear", (5, 7), [2, 0.6]), ("linear", (3, 5, 7), [2, 0.5, 1.5]), ("linear", (1, 2, 3, 5, 7),
                                                                          [1, 1, 2, 0.5, 1.5]),
    ("linear", (1, 5, 7, 3), [1, 2, 0.6, 1]), ("linear", (2, 3, 5, 7), [1, 1, 1, 2.5]),
    ("linear", (2, 3, 5, 7), [1, 1, 2.5, 1]), ("cubic", (5, 7), [1.6, 0.7]), ("cubic", (1, 5, 7, 2),
                                                                             [1, 2, 1.5, 1])])
def test_interpolation_ranks(mode, shape, scales):
    """2-D, trilinear (3-D and 5-D: the N-D kernel), NHWC layouts, one resized axis."""
    for coord in ("half_pixel", "align_corners", "tf_crop_and_resize"):
        node = resize(["x", "roi", "sc"], mode=mode, coordinate_transformation_mode=coord)
        check([node], shape, {"roi": roi_for(len(shape)), "sc": f32(*scales)})


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_sizes_odd(mode):
    for sizes in ([1, 2, 8, 3], [1, 2, 13, 11], [1, 2, 1, 9]):
        node = resize(["x", "", "", "sz"], mode=mode, coordinate_transformation_mode="pytorch_half_pixel")
        check([node], (1, 2, 5, 7), {"sz": i64(*sizes)})


# -- antialias ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("scales", [[1, 1, 0.5, 0.4], [1, 1, 0.33, 0.77], [1, 1, 2, 1.5], [1, 1, 1, 0.3]],
                         ids=str)
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialias(mode, coord, scales, exclude_outside):
    node = resize(["x", "roi", "sc"], mode=mode, coordinate_transformation_mode=coord, antialias=1,
                  exclude_outside=exclude_outside, extrapolation_value=-2.0)
    check([node], (1, 2, 9, 11), {"roi": roi_for(4), "sc": f32(*scales)})


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialias_2d_and_nhwc(mode):
    node = resize(["x", "", "sc"], mode=mode, antialias=1)
    check([node], (9, 11), {"sc": f32(0.5, 0.4)})
    check([node], (1, 9, 11, 3), {"sc": f32(1, 0.5, 0.4, 1)})
    node = resize(["x", "", "", "sz"], mode=mode, antialias=1, axes=[2, 3])
    check([node], (1, 2, 16, 12), {"sz": i64(5, 7)})


# -- sizes policies, axes, crop ----------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("axes,sizes", [([2, 3], [7, 5]), ([3, 2], [5, 20]), ([3], [9]), ([2, 3], [10, 3])])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_sizes_policy_axes(mode, axes, sizes, policy):
    node = resize(["x", "", "", "sz"], mode=mode, axes=axes, keep_aspect_ratio_policy=policy)
    check([node], (1, 3, 10, 14), {"sz": i64(*sizes)}, opset=18)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_sizes_policy_all_axes(policy):
    node = resize(["x", "", "", "sz"], mode="linear", keep_aspect_ratio_policy=policy)
    check([node], (10, 14), {"sz": i64(7, 5)}, opset=18)


@pytest.mark.parametrize("axes,scales", [([2, 3], [0.5, 1.7]), ([3], [2.2]), ([1], [1.5])])
def test_scales_axes(axes, scales):
    node = resize(["x", "", "sc"], mode="linear" if 1 not in axes else "nearest", axes=axes)
    check([node], (1, 3, 10, 14), {"sc": f32(*scales)}, opset=18)


def test_negative_axes_match_positive():
    """onnxruntime ignores negative axes (a bug); bninfer normalizes them, as the spec says."""
    x = randn(1, 3, 10, 14)
    pos = make_model([resize(["x", "", "", "sz"], mode="linear", axes=[2, 3])], {"x": [1, 3, 10, 14]}, ["y"],
                     {"sz": i64(6, 9)}, opset=18)
    neg = make_model([resize(["x", "", "", "sz"], mode="linear", axes=[-2, -1])], {"x": [1, 3, 10, 14]},
                     ["y"], {"sz": i64(6, 9)}, opset=18)
    want = assert_matches_ort(pos, {"x": x})[0]
    got = bninfer.InferenceSession(neg.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_crop_and_resize_axes(mode):
    node = resize(["x", "roi", "", "sz"], mode=mode, axes=[2, 3], coordinate_transformation_mode="tf_crop_and_resize",
                  extrapolation_value=3.0)
    check([node], (1, 3, 10, 14), {"roi": f32(-0.1, 0.2, 0.9, 1.3), "sz": i64(6, 9)}, opset=18)
    # one output row or column: the crop's centre
    check([node], (1, 3, 10, 14), {"roi": f32(0.2, 0.3, 0.6, 0.9), "sz": i64(1, 1)}, opset=18)


def test_identity_resizes_copy():
    check([resize(["x", "", "sc"], mode="linear")], (1, 2, 5, 7), {"sc": f32(1, 1, 1, 1)})
    check([resize(["x", "", "", "sz"], mode="cubic")], (1, 2, 5, 7), {"sz": i64(1, 2, 5, 7)})
    # scale 1 on an axis ignores the crop there (onnxruntime copies the axis)
    node = resize(["x", "roi", "sc"], mode="linear", coordinate_transformation_mode="tf_crop_and_resize")
    check([node], (1, 2, 5, 7), {"roi": roi_for(4), "sc": f32(1, 1, 1, 2)})


# -- opset forms -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.5, 1.5], [1.0, 1.0, 1.0, 2.0]], ids=str)
def test_upsample_7_and_9(mode, scales):
    check([helper.make_node("Upsample", ["x"], ["y"], mode=mode, scales=scales)], (1, 2, 5, 7), {}, opset=7)
    check([helper.make_node("Upsample", ["x", "sc"], ["y"], mode=mode)], (1, 2, 5, 7), {"sc": f32(*scales)},
          opset=9)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 1.5, 2.5], [1, 1, 0.5, 0.6], [1, 1, 0.35, 1]], ids=str)
def test_resize_10(mode, scales):
    check([helper.make_node("Resize", ["x", "sc"], ["y"], mode=mode)], (1, 2, 5, 7), {"sc": f32(*scales)},
          opset=10)


@pytest.mark.parametrize("opset", [11, 13, 18, 19])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_opsets(opset, mode):
    empty_roi = "roi" if opset < 13 else ""
    inits = {"roi": f32()} if opset < 13 else {}
    check([resize(["x", empty_roi, "sc"], mode=mode)], (1, 2, 5, 7), {**inits, "sc": f32(1, 1, 1.5, 0.7)},
          opset=opset)
    check([resize(["x", empty_roi, "e", "sz"], mode=mode)], (1, 2, 5, 7),
          {**inits, "e": f32(), "sz": i64(1, 2, 8, 3)}, opset=opset)


def test_tf_half_pixel_for_nn_opset11():
    node = resize(["x", "roi", "sc"], mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn")
    check([node], (1, 2, 5, 7), {"roi": f32(), "sc": f32(1, 1, 1.6, 0.7)}, opset=11)


# -- constants, threads, compilations ------------------------------------------------------------------

def test_resize_of_constants_folds():
    c = randn(1, 1, 3, 4)
    nodes = [resize(["c", "", "sc"], name="rc", mode="linear"), helper.make_node("Add", ["x", "y"], ["z"])]
    model = make_model(nodes, {"x": [1, 1, 6, 8]}, ["z"], {"c": c, "sc": f32(1, 1, 2, 2)}, opset=13)
    assert_matches_ort(model, {"x": randn(1, 1, 6, 8)})
    session = bninfer.InferenceSession(model.SerializeToString())
    assert "Resize" not in session.optimization_report().nodes_after
    ints = np.arange(12, dtype=np.int32).reshape(1, 1, 3, 4)
    nodes = [resize(["c", "", "sc"], name="ri", mode="nearest"),
             helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "yf"], ["z"])]
    model = make_model(nodes, {"x": [1, 1, 6, 6]}, ["z"], {"c": ints, "sc": f32(1, 1, 2, 1.5)}, opset=13)
    assert_matches_ort(model, {"x": randn(1, 1, 6, 6)})


def test_concurrent_runs():
    model = make_model([resize(["x", "", "sc"], mode="cubic")], {"x": [1, 3, 9, 11]}, ["y"],
                       {"sc": f32(1, 1, 1.7, 0.6)}, opset=13)
    session = bninfer.InferenceSession(model.SerializeToString())
    xs = [randn(1, 3, 9, 11) for _ in range(4)]
    want = [session.run(None, {"x": x})[0] for x in xs]
    errors = []

    def work(k):
        for _ in range(20):
            got = session.run(None, {"x": xs[k]})[0]
            if not np.array_equal(got, want[k]):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_one_compilation_per_kernel():
    """Sizes are runtime ints and arrays keep fixed dtypes: every resize above shares one signature."""
    assert len(K.resize_2d.signatures) <= 1, K.resize_2d.signatures
    assert len(K.resize_nd.signatures) <= 1, K.resize_nd.signatures


# -- errors --------------------------------------------------------------------------------------------

def test_errors_name_node():
    shape = (1, 2, 5, 7)
    msg = load_error([resize(["x", "", "sc", "sz"], name="both")], shape,
                     {"sc": f32(1, 1, 2, 2), "sz": i64(1, 2, 10, 14)}, ModelError, "both")
    assert "scales" in msg and "sizes" in msg
    load_error([resize(["x", "", "sc"], name="short")], shape, {"sc": f32(2, 2)}, ModelError, "short")
    load_error([resize(["x", "", "sc"], name="zero")], shape, {"sc": f32(1, 1, 0, 2)}, ModelError, "zero")
    load_error([resize(["x", "", "sc"], name="neg")], shape, {"sc": f32(1, 1, -2, 2)}, ModelError, "neg")
    load_error([resize(["x", "", "", "sz"], name="sizes3")], shape, {"sz": i64(1, 10, 14)}, ModelError,
               "sizes3")
    load_error([resize(["x", "e", "e"], name="none")], shape, {"e": f32()}, ModelError, "none", opset=11)
    load_error([resize(["x", "roi", "sc"], name="roi", coordinate_transformation_mode="tf_crop_and_resize")],
               shape, {"roi": f32(0, 1), "sc": f32(1, 1, 2, 2)}, ModelError, "roi")


def test_unsupported_name_node():
    shape = (1, 2, 5, 7)
    load_error([resize(["x", "", "s"], name="dyn")], shape, {}, UnsupportedOperatorError, "dyn",
               extra_inputs={"s": [4]})
    load_error([resize(["x", "", "sc"], name="area", mode="area")], shape, {"sc": f32(1, 1, 2, 2)},
               UnsupportedOperatorError, "area")
    ints = np.arange(35, dtype=np.int32).reshape(1, 1, 5, 7)
    nodes = [resize(["c", "", "sc"], name="int_linear", mode="linear"),
             helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT)]
    model = make_model(nodes, {}, ["yf"], {"c": ints, "sc": f32(1, 1, 2, 2)}, opset=13)
    with pytest.raises(UnsupportedOperatorError, match="int_linear"):
        bninfer.InferenceSession(model.SerializeToString())
