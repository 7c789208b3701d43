"""The benchmark model zoo: well-known CNN architectures built with onnx.helper (no torch, no downloads).

Every model is float32, opset 17, batch 1, with seeded random weights, and keeps its BatchNormalization
nodes unfolded, as ONNX files exported with BN preserved (tf2onnx, old model-zoo files, torch with
``training=TrainingMode.PRESERVE``) do.

Weights are He-scaled. While a model is built, the builder also runs it eagerly in numpy on a seeded
calibration input; each BatchNormalization takes its running statistics from the tensor that actually
reaches it, then perturbs them (mean shifted, variance scaled by a random factor, about 10 % of the gammas
negative). So the BN nodes are non-trivial, as in a trained network, and activations stay O(1) through
the 50+ layers of ResNet-50 instead of growing or vanishing geometrically.

Public API::

    ZOO: dict[str, Callable[[], onnx.ModelProto]]   # name -> builder
    build(name) -> onnx.ModelProto
    input_for(model, seed=0) -> {input name: np.ndarray}
    macs(model_or_name) -> int                      # multiply-accumulates of Conv/Gemm/MatMul
    DEFAULT_MODEL                                   # small model for `bninfer bench` with no argument
"""
from __future__ import annotations

import collections
import functools
import math
import zlib
from typing import Callable

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; every onnxruntime >= 1.10 loads it
INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_MODEL = "mnist-cnn"


# ------------------------------------------------------------------------------------------------
# The builder: emits ONNX nodes and runs them eagerly in numpy (for BN calibration).
# ------------------------------------------------------------------------------------------------
class _Net:
    def __init__(self, name: str, input_shape: tuple[int, ...], calib_batch: int = 1):
        self.name = name
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.input_shape = tuple(input_shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: collections.Counter = collections.Counter()
        self.v: dict[str, np.ndarray] = {}  # eager numpy values (calibration batch)
        calib = np.random.default_rng(12345).standard_normal((calib_batch,) + self.input_shape[1:])
        self.v[INPUT_NAME] = calib.astype(np.float32)
        self._shared: dict[str, str] = {}

    # -- plumbing --------------------------------------------------------------------------------
    def _uniq(self, prefix: str) -> str:
        self.count[prefix] += 1
        return f"{prefix}_{self.count[prefix]}"

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.require(array, requirements='C'), name))
        return name

    def _shared_const(self, key: str, value: float) -> str:
        if key not in self._shared:
            self._shared[key] = self._init(key, np.array(value, dtype=np.float32))
        return self._shared[key]

    def _emit(self, op: str, inputs: list[str], value: np.ndarray, prefix: str | None = None,
              **attrs) -> str:
        node_name = self._uniq(prefix or op.lower())
        out = node_name + "_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        self.v[out] = value.astype(np.float32, copy=False)
        return out

    def channels(self, x: str) -> int:
        return self.v[x].shape[1]

    # -- layers ----------------------------------------------------------------------------------
    def conv(self, x: str, cout: int, k: int, stride: int = 1, pad: int | None = None, groups: int = 1,
             bias: bool = False, gain: float = 2.0) -> str:
        cin = self.channels(x)
        pad = (k - 1) // 2 if pad is None else pad
        fan_in = cin // groups * k * k
        w = (self.rng.standard_normal((cout, cin // groups, k, k)) * math.sqrt(gain / fan_in)).astype(np.float32)
        name = self._uniq("conv")
        inputs = [x, self._init(name + ".weight", w)]
        b = None
        if bias:
            b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
            inputs.append(self._init(name + ".bias", b))
        out = name + "_out"
        self.nodes.append(helper.make_node("Conv", inputs, [out], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, group=groups,
                                           dilations=[1, 1]))
        self.v[out] = _conv_np(self.v[x], w, b, stride, pad, groups).astype(np.float32)
        return out

    def bn(self, x: str, eps: float = 1e-5, neg_frac: float = 0.1) -> str:
        """BatchNormalization with calibrated-then-perturbed running statistics."""
        val = self.v[x].astype(np.float64)
        c = val.shape[1]
        axes = tuple(i for i in range(val.ndim) if i != 1)
        mean, var = val.mean(axis=axes), val.var(axis=axes)
        std = np.sqrt(var + 1e-6)
        r = self.rng
        run_mean = mean + 0.1 * std * r.standard_normal(c)
        run_var = np.maximum(var, 1e-4) * r.uniform(0.7, 1.4, c)
        gamma = r.uniform(0.6, 1.4, c) * np.where(r.random(c) < neg_frac, -1.0, 1.0)
        if c >= 4 and not (gamma < 0).any():
            gamma[r.integers(c)] *= -1.0  # every BN has a negative gamma somewhere
        beta = 0.2 * r.standard_normal(c)
        name = self._uniq("bn")
        inputs = [x] + [self._init(f"{name}.{p}", a.astype(np.float32)) for p, a in
                        (("scale", gamma), ("bias", beta), ("mean", run_mean), ("var", run_var))]
        shape = (1, c) + (1,) * (val.ndim - 2)
        y = (val - run_mean.reshape(shape)) / np.sqrt(run_var.reshape(shape) + eps) \
            * gamma.reshape(shape) + beta.reshape(shape)
        out = name + "_out"
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=name, epsilon=eps,
                                           momentum=0.9))
        self.v[out] = y.astype(np.float32)
        return out

    def relu(self, x: str) -> str:
        return self._emit("Relu", [x], np.maximum(self.v[x], 0))

    def relu6(self, x: str) -> str:
        lo, hi = self._shared_const("clip_min_0", 0.0), self._shared_const("clip_max_6", 6.0)
        return self._emit("Clip", [x, lo, hi], np.clip(self.v[x], 0, 6), prefix="relu6")

    def sigmoid(self, x: str) -> str:
        return self._emit("Sigmoid", [x], 1.0 / (1.0 + np.exp(-self.v[x].astype(np.float64))))

    def silu(self, x: str) -> str:
        return self.mul(x, self.sigmoid(x))

    def add(self, a: str, b: str) -> str:
        return self._emit("Add", [a, b], self.v[a] + self.v[b])

    def mul(self, a: str, b: str) -> str:
        return self._emit("Mul", [a, b], self.v[a] * self.v[b])

    def maxpool(self, x: str, k: int, stride: int, pad: int = 0) -> str:
        val = self.v[x]
        if pad:
            val = np.pad(val, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
        win = sliding_window_view(val, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        return self._emit("MaxPool", [x], win.max(axis=(4, 5)), kernel_shape=[k, k],
                          strides=[stride, stride], pads=[pad] * 4)

    def avgpool(self, x: str, k: int, stride: int) -> str:
        win = sliding_window_view(self.v[x], (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        return self._emit("AveragePool", [x], win.mean(axis=(4, 5)), kernel_shape=[k, k],
                          strides=[stride, stride])

    def gap(self, x: str) -> str:
        return self._emit("GlobalAveragePool", [x], self.v[x].mean(axis=(2, 3), keepdims=True))

    def flatten(self, x: str) -> str:
        val = self.v[x]
        return self._emit("Flatten", [x], val.reshape(val.shape[0], -1), axis=1)

    def concat(self, xs: list[str]) -> str:
        if len(xs) == 1:
            return xs[0]
        return self._emit("Concat", list(xs), np.concatenate([self.v[x] for x in xs], axis=1), axis=1)

    def dropout(self, x: str, ratio: float = 0.5) -> str:
        r = self._shared_const(f"dropout_ratio_{ratio}", ratio)
        return self._emit("Dropout", [x, r], self.v[x])

    def gemm(self, x: str, nout: int, gain: float = 2.0) -> str:
        """torch.nn.Linear as exported: Gemm(x, W[out, in], b, transB=1)."""
        nin = self.v[x].shape[1]
        w = (self.rng.standard_normal((nout, nin)) * math.sqrt(gain / nin)).astype(np.float32)
        b = (self.rng.standard_normal(nout) * 0.05).astype(np.float32)
        name = self._uniq("gemm")
        out = name + "_out"
        self.nodes.append(helper.make_node("Gemm", [x, self._init(name + ".weight", w),
                                                    self._init(name + ".bias", b)], [out], name=name,
                                           alpha=1.0, beta=1.0, transB=1))
        self.v[out] = (self.v[x] @ w.T + b).astype(np.float32)
        return out

    # -- finishing -------------------------------------------------------------------------------
    def model(self, y: str, doc: str = "") -> onnx.ModelProto:
        nodes = self.nodes
        # Rename the last node's output to the graph output name.
        last = nodes[-1]
        assert last.output[0] == y, "the graph output must be the last node's output"
        last.output[0] = OUTPUT_NAME
        out_shape = [self.input_shape[0]] + list(self.v[y].shape[1:])
        graph = helper.make_graph(
            nodes, self.name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="bninfer-zoo", doc_string=doc)
        model.ir_version = IR_VERSION
        global _LAST_REFERENCE
        _LAST_REFERENCE = ({INPUT_NAME: self.v[INPUT_NAME][:1].copy()}, self.v[y][:1].copy())
        return model


_LAST_REFERENCE: tuple[dict, np.ndarray] | None = None


def _conv_np(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int,
             groups: int) -> np.ndarray:
    """Reference 2-D convolution (NCHW) in numpy, used only to calibrate BN statistics."""
    n, c, h, wd = x.shape
    cout, cg, k, _ = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    if groups == 1:
        if k == 1:
            cols = x[:, :, ::stride, ::stride][:, :, :ho, :wo].transpose(0, 2, 3, 1).reshape(-1, c)
        else:
            win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
            cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
        out = (cols @ w.reshape(cout, -1).T).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
    elif groups == c == cout:  # depthwise
        out = np.zeros((n, c, ho, wo), dtype=np.float32)
        for i in range(k):
            for j in range(k):
                patch = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                out += patch * w[:, 0, i, j][None, :, None, None]
    else:
        cin_g, cout_g = c // groups, cout // groups
        out = np.concatenate([_conv_np(x[:, g * cin_g:(g + 1) * cin_g], w[g * cout_g:(g + 1) * cout_g],
                                       None, stride, 0, 1) for g in range(groups)], axis=1)
    if b is not None:
        out = out + b[None, :, None, None]
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------
def _conv_bn(net: _Net, x: str, cout: int, k: int, stride: int = 1, act: str | None = "relu",
             groups: int = 1, eps: float = 1e-5) -> str:
    y = net.bn(net.conv(x, cout, k, stride, groups=groups), eps=eps)
    if act == "relu":
        return net.relu(y)
    if act == "relu6":
        return net.relu6(y)
    if act == "silu":
        return net.silu(y)
    return y


def _resnet(name: str, blocks: list[int], bottleneck: bool) -> onnx.ModelProto:
    net = _Net(name, (1, 3, 224, 224))
    x = _conv_bn(net, INPUT_NAME, 64, 7, 2)
    x = net.maxpool(x, 3, 2, 1)
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for i in range(n):
            stride = 2 if (i == 0 and stage > 0) else 1
            cout = width * 4 if bottleneck else width
            if bottleneck:  # torchvision v1.5: stride on the 3x3 conv
                y = _conv_bn(net, x, width, 1)
                y = _conv_bn(net, y, width, 3, stride)
                y = _conv_bn(net, y, cout, 1, act=None)
            else:
                y = _conv_bn(net, x, width, 3, stride)
                y = _conv_bn(net, y, cout, 3, act=None)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = _conv_bn(net, x, cout, 1, stride, act=None)
            x = net.relu(net.add(y, shortcut))
            cin = cout
    x = net.gemm(net.flatten(net.gap(x)), 1000, gain=1.0)
    return net.model(x, f"{name}: torchvision-style, BN unfolded, random weights")


def resnet18() -> onnx.ModelProto:
    return _resnet("resnet18", [2, 2, 2, 2], bottleneck=False)


def resnet50() -> onnx.ModelProto:
    return _resnet("resnet50", [3, 4, 6, 3], bottleneck=True)


def preact_resnet18() -> onnx.ModelProto:
    """Pre-activation ResNet-18 (He et al. 2016): BN->ReLU->conv inside the blocks; BN precedes convs,
    so it cannot be folded into them."""
    net = _Net("preact-resnet18", (1, 3, 224, 224))
    x = _conv_bn(net, INPUT_NAME, 64, 7, 2)
    x = net.maxpool(x, 3, 2, 1)
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            pre = net.relu(net.bn(x))
            shortcut = net.conv(pre, width, 1, stride) if (stride != 1 or cin != width) else x
            y = net.conv(pre, width, 3, stride)
            y = net.conv(net.relu(net.bn(y)), width, 3)
            x = net.add(y, shortcut)
            cin = width
    x = net.relu(net.bn(x))
    x = net.gemm(net.flatten(net.gap(x)), 1000, gain=1.0)
    return net.model(x, "pre-activation ResNet-18, BN unfolded, random weights")


def mobilenetv2() -> onnx.ModelProto:
    net = _Net("mobilenetv2", (1, 3, 224, 224))
    x = _conv_bn(net, INPUT_NAME, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = _conv_bn(net, y, hidden, 1, act="relu6")
            y = _conv_bn(net, y, hidden, 3, stride, act="relu6", groups=hidden)
            y = _conv_bn(net, y, c, 1, act=None)
            x = net.add(x, y) if (stride == 1 and cin == c) else y
            cin = c
    x = _conv_bn(net, x, 1280, 1, act="relu6")
    x = net.gemm(net.flatten(net.gap(x)), 1000, gain=1.0)
    return net.model(x, "MobileNetV2 (torchvision layout), ReLU6 as Clip, BN unfolded, random weights")


def efficientnet_b0() -> onnx.ModelProto:
    net = _Net("efficientnet-b0", (1, 3, 224, 224))
    eps = 1e-3
    x = _conv_bn(net, INPUT_NAME, 32, 3, 2, act="silu", eps=eps)
    cin = 32
    for t, k, s, c, n in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = _conv_bn(net, y, hidden, 1, act="silu", eps=eps)
            y = _conv_bn(net, y, hidden, k, stride, act="silu", groups=hidden, eps=eps)
            # squeeze-and-excitation
            sq = max(1, cin // 4)
            se = net.gap(y)
            se = net.silu(net.conv(se, sq, 1, bias=True))
            se = net.sigmoid(net.conv(se, hidden, 1, bias=True, gain=1.0))
            y = net.mul(y, se)
            y = _conv_bn(net, y, c, 1, act=None, eps=eps)
            x = net.add(y, x) if (stride == 1 and cin == c) else y
            cin = c
    x = _conv_bn(net, x, 1280, 1, act="silu", eps=eps)
    x = net.gemm(net.flatten(net.gap(x)), 1000, gain=1.0)
    return net.model(x, "EfficientNet-B0 (torchvision layout), SiLU as x*Sigmoid(x), SE, BN unfolded")


def densenet121() -> onnx.ModelProto:
    """DenseNet-121 as torchvision exports it: each dense layer concatenates all earlier features, then
    BN->ReLU->conv1x1->BN->ReLU->conv3x3."""
    net = _Net("densenet121", (1, 3, 224, 224))
    growth, bn_size = 32, 4
    x = _conv_bn(net, INPUT_NAME, 64, 7, 2)
    x = net.maxpool(x, 3, 2, 1)
    for b, n in enumerate((6, 12, 24, 16)):
        feats = [x]
        for _ in range(n):
            y = net.concat(feats)
            y = net.conv(net.relu(net.bn(y)), bn_size * growth, 1)
            y = net.conv(net.relu(net.bn(y)), growth, 3)
            feats.append(y)
        x = net.concat(feats)
        if b != 3:
            x = net.conv(net.relu(net.bn(x)), net.channels(x) // 2, 1)
            x = net.avgpool(x, 2, 2)
    x = net.relu(net.bn(x))
    x = net.gemm(net.flatten(net.gap(x)), 1000, gain=1.0)
    return net.model(x, "DenseNet-121 (torchvision layout), pre-activation, Concat, BN unfolded")


def _mnist(name: str, order: str) -> onnx.ModelProto:
    """The PyTorch MNIST example CNN: conv 1->32 3x3, conv 32->64 3x3, maxpool 2, flatten,
    Gemm 9216->128, ReLU, Gemm 128->10; order is 'bn-relu', 'relu-bn' or 'none'."""
    net = _Net(name, (1, 1, 28, 28))
    x = INPUT_NAME
    for cout in (32, 64):
        x = net.conv(x, cout, 3, pad=0, bias=True)
        if order == "bn-relu":
            x = net.relu(net.bn(x))
        elif order == "relu-bn":
            x = net.bn(net.relu(x))
        else:
            x = net.relu(x)
    x = net.flatten(net.maxpool(x, 2, 2))
    x = net.relu(net.gemm(x, 128))
    x = net.gemm(x, 10, gain=1.0)
    return net.model(x, f"MNIST CNN ({order}), random weights")


def mnist_cnn() -> onnx.ModelProto:
    return _mnist("mnist-cnn", "bn-relu")


def mnist_cnn_relu_bn() -> onnx.ModelProto:
    return _mnist("mnist-cnn-relu-bn", "relu-bn")


def mnist_cnn_nobn() -> onnx.ModelProto:
    return _mnist("mnist-cnn-nobn", "none")


def mlp() -> onnx.ModelProto:
    """Gemm(10->20) -> BatchNormalization (rank-2 input) -> Relu -> Dropout -> Gemm(20->1)."""
    net = _Net("mlp", (1, 10), calib_batch=512)
    x = net.gemm(INPUT_NAME, 20)
    x = net.dropout(net.relu(net.bn(x)))
    x = net.gemm(x, 1, gain=1.0)
    return net.model(x, "MLP Linear->BN1d->ReLU->Dropout->Linear (10->20->1)")


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "efficientnet-b0": efficientnet_b0,
    "densenet121": densenet121,
    "preact-resnet18": preact_resnet18,
    "mnist-cnn": mnist_cnn,
    "mnist-cnn-relu-bn": mnist_cnn_relu_bn,
    "mnist-cnn-nobn": mnist_cnn_nobn,
    "mlp": mlp,
}

# Models small enough to compile and run in a few seconds (used by quick test selections).
SMALL = ("mnist-cnn", "mnist-cnn-relu-bn", "mnist-cnn-nobn", "mlp")


def canonical_name(name: str) -> str | None:
    """The zoo key for name (case-insensitive, '_' and '-' interchangeable), or None."""
    key = name.strip().lower().replace("_", "-")
    if key in ZOO:
        return key
    compact = {k.replace("-", ""): k for k in ZOO}
    return compact.get(key.replace("-", ""))


@functools.lru_cache(maxsize=4)
def _build_bytes(key: str) -> bytes:
    return ZOO[key]().SerializeToString()


def build(name: str) -> onnx.ModelProto:
    """A fresh ModelProto of the zoo model name (built once per process, then copied)."""
    key = canonical_name(name)
    if key is None:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    model = onnx.ModelProto()
    model.ParseFromString(_build_bytes(key))
    return model


def build_with_reference(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    """(model, feeds, expected output): the builder's own numpy forward pass on its calibration input
    (float32, im2col convolutions), to check that an engine and the zoo agree on what the graph means."""
    key = canonical_name(name)
    if key is None:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    model = ZOO[key]()
    feeds, expected = _LAST_REFERENCE
    return model, feeds, expected


def build_bytes(name: str) -> bytes:
    """The serialized zoo model (what InferenceSession accepts directly)."""
    key = canonical_name(name)
    if key is None:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return _build_bytes(key)


# ------------------------------------------------------------------------------------------------
# Inputs and MACs (work on any ONNX model, not only the zoo's)
# ------------------------------------------------------------------------------------------------
def input_shapes(model: onnx.ModelProto) -> dict[str, tuple[list, np.dtype]]:
    """The graph inputs that are not initializers: name -> (shape with dim_param strings, numpy dtype)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        out[vi.name] = (dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return out


def input_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded feeds for every graph input: standard normal floats, zeros for integer/bool inputs;
    dynamic dimensions are bound to 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dims, dtype) in input_shapes(model).items():
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def macs(model: onnx.ModelProto | str) -> int:
    """Multiply-accumulates of one inference: Conv, ConvTranspose, Gemm and MatMul only (the usual
    convention; GFLOP/s = 2 * MACs / seconds). Tensors whose shapes cannot be inferred are skipped."""
    if isinstance(model, str):
        model = build(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a best-effort count
        inferred = model
    g = inferred.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
        else:  # bind dynamic dimensions to 1 (batch 1)
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in g.node:
        ins = [shapes.get(i) for i in node.input]
        outs = [shapes.get(o) for o in node.output]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and len(ins) > 1 and ins[1] and outs[0]:
            total += int(np.prod(outs[0])) * int(np.prod(ins[1][1:]))
        elif node.op_type == "ConvTranspose" and ins[0] and len(ins) > 1 and ins[1]:
            total += int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
        elif node.op_type == "Gemm" and ins[0] and len(ins) > 1 and ins[1]:
            m, k = ins[0][::-1] if attrs.get("transA", 0) else ins[0]
            n = ins[1][0] if attrs.get("transB", 0) else ins[1][1]
            total += m * k * n
        elif node.op_type == "MatMul" and ins[0] and len(ins) > 1 and ins[1] and outs[0]:
            total += int(np.prod(outs[0])) * ins[0][-1]
    return total


DESCRIPTIONS = {
    "resnet18": "ResNet-18, 224x224, torchvision layout",
    "resnet50": "ResNet-50 (v1.5 bottlenecks), 224x224",
    "mobilenetv2": "MobileNetV2, 224x224, ReLU6 as Clip, depthwise 3x3",
    "efficientnet-b0": "EfficientNet-B0, 224x224, SiLU as x*Sigmoid(x), SE, depthwise 3x3/5x5",
    "densenet121": "DenseNet-121, 224x224, pre-activation BN->ReLU->conv, Concat",
    "preact-resnet18": "pre-activation ResNet-18, 224x224",
    "mnist-cnn": "MNIST CNN 28x28, conv->BN->ReLU (the default bench model)",
    "mnist-cnn-relu-bn": "MNIST CNN 28x28, conv->ReLU->BN",
    "mnist-cnn-nobn": "MNIST CNN 28x28, no BN",
    "mlp": "MLP Gemm(10->20)->BN->Relu->Dropout->Gemm(20->1)",
}
