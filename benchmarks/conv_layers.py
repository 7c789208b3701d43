"""Per-layer convolution benchmark: bninfer's Conv kernel vs an onnxruntime single-node session.

Each layer is conv + bias + ReLU or Clip(0, 6) (fused in bninfer, a separate node that ORT fuses), batch 1,
float32, one thread. Both run interleaved in R rounds of a few calls each; the report gives the median of
the per-round speed ratios (ORT time / bninfer time: above 1 means bninfer is faster) and bninfer's
GFLOP/s (2 * MACs / median time).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.conv_layers [filter ...] [--rounds 21]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bninfer import ir, ops  # noqa: E402

# name: (cin, cout, size, k, stride, group)
LAYERS = {
    "r18-conv1 7x7s2 3-64@224": (3, 64, 224, 7, 2, 1),
    "r18 3x3 64-64@56": (64, 64, 56, 3, 1, 1),
    "r18 3x3s2 64-128@56": (64, 128, 56, 3, 2, 1),
    "r18 3x3 128-128@28": (128, 128, 28, 3, 1, 1),
    "r18 3x3s2 128-256@28": (128, 256, 28, 3, 2, 1),
    "r18 3x3 256-256@14": (256, 256, 14, 3, 1, 1),
    "r18 3x3 512-512@7": (512, 512, 7, 3, 1, 1),
    "r18 1x1s2 64-128@56": (64, 128, 56, 1, 2, 1),
    "1x1 256-64@56": (256, 64, 56, 1, 1, 1),
    "1x1 64-256@56": (64, 256, 56, 1, 1, 1),
    "mb2 1x1 32-16@112": (32, 16, 112, 1, 1, 1),
    "mb2 1x1 24-144@56": (24, 144, 56, 1, 1, 1),
    "mb2 1x1 144-24@56": (144, 24, 56, 1, 1, 1),
    "mb2 1x1 960-160@7": (960, 160, 7, 1, 1, 1),
    "mb2 stem 3x3s2 3-32@224": (3, 32, 224, 3, 2, 1),
    "dw 3x3 144@56": (144, 144, 56, 3, 1, 144),
    "dw 3x3 32@112": (32, 32, 112, 3, 1, 32),
    "dw 3x3 960@7": (960, 960, 7, 3, 1, 960),
    "dw 3x3 192@28": (192, 192, 28, 3, 1, 192),
    "dw 3x3 384@14": (384, 384, 14, 3, 1, 384),
    "dw 3x3s2 144@56": (144, 144, 56, 3, 2, 144),
    "dw 3x3s2 96@112": (96, 96, 112, 3, 2, 96),
    "dw 3x3s2 192@28": (192, 192, 28, 3, 2, 192),
    "mb2 1x1 16-96@112": (16, 96, 112, 1, 1, 1),
    "dw 5x5 240@14": (240, 240, 14, 5, 1, 240),
    "3x3 32-64@28": (32, 64, 28, 3, 1, 1),
    "3x3 1-32@28": (1, 32, 28, 3, 1, 1),
    "r50 1x1 512-128@28": (512, 128, 28, 1, 1, 1),
    "r50 1x1 128-512@28": (128, 512, 28, 1, 1, 1),
    "r50 1x1 1024-256@14": (1024, 256, 14, 1, 1, 1),
    "r50 1x1 256-1024@14": (256, 1024, 14, 1, 1, 1),
    "r50 1x1 2048-512@7": (2048, 512, 7, 1, 1, 1),
    "r50 1x1 512-2048@7": (512, 2048, 7, 1, 1, 1),
    "r50 1x1s2 512-1024@28": (512, 1024, 28, 1, 2, 1),
    "r50 3x3 512-512@7": (512, 512, 7, 3, 1, 1),
}


def _attrs(k, s, group):
    p = k // 2
    return dict(pads=[p, p, p, p], strides=[s, s], group=group, kernel_shape=[k, k])


ACT = {"relu": (("Relu", {}), "Relu", {}), "clip": (("Clip", {"min": 0.0, "max": 6.0}), "Clip", {})}
_act = "relu"


def bninfer_runner(x, w, b, attrs):
    node = ir.Node("Conv", "conv", ["x", "w", "b"], ["y"], {"auto_pad": "NOTSET", **attrs,
                                                            "activation": ACT[_act][0],
                                                            "pre_activation": None})
    ins = [ir.Value("x", x.shape, np.dtype(np.float32)), ir.Value("w", w.shape, np.dtype(np.float32), w),
           ir.Value("b", b.shape, np.dtype(np.float32), b)]
    opdef = ops.get("Conv")
    (shape, _), = opdef.infer(node, ins)
    t0 = time.perf_counter()
    run = opdef.build(node, ins, [ir.Value("y", shape, np.dtype(np.float32))])
    y = np.empty(shape, np.float32)
    args = [x, w, b]
    run(args, [y])
    build_s = time.perf_counter() - t0
    return (lambda: run(args, [y])), y, build_s


def ort_runner(x, w, b, attrs):
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs)]
        + ([helper.make_node("Relu", ["c"], ["y"])] if _act == "relu" else
           [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]),
        "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"x": x}
    return (lambda: s.run(None, feeds)), s.run(None, feeds)[0]


def bench_layer(name, spec, rounds=21, seed=0):
    cin, cout, size, k, s, group = spec
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = _attrs(k, s, group)
    ours, y, build_s = bninfer_runner(x, w, b, attrs)
    theirs, ref = ort_runner(x, w, b, attrs)
    err = float(np.max(np.abs(y - ref) / (np.abs(ref) + 1e-3)))
    # calls per round: about 20 ms of work
    t0 = time.perf_counter()
    ours()
    dt = time.perf_counter() - t0
    calls = max(1, min(50, int(0.01 / max(dt, 1e-6))))
    for _ in range(3):
        ours(), theirs()
    ratios, ts = [], []
    for r in range(rounds):
        pair = [("b", ours), ("o", theirs)]
        if r % 2:
            pair.reverse()
        t = {}
        for tag, f in pair:
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            t[tag] = (time.perf_counter() - t0) / calls
        ratios.append(t["o"] / t["b"])
        ts.append(t["b"])
    oh = (size + 2 * (k // 2) - k) // s + 1
    macs = cout * (cin // group) * k * k * oh * oh
    t_med = float(np.median(ts))
    return dict(name=name, ratio=float(np.median(ratios)), gflops=2 * macs / t_med / 1e9, us=t_med * 1e6,
                err=err, build_s=build_s)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("filters", nargs="*")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--act", choices=sorted(ACT), default="relu", help="fused activation")
    a = ap.parse_args(argv)
    global _act
    _act = a.act
    print(f"{'layer':30s} {'x ORT':>7s} {'GFLOP/s':>8s} {'us':>9s} {'max rel err':>11s} {'build s':>8s}")
    for name, spec in LAYERS.items():
        if a.filters and not any(f in name for f in a.filters):
            continue
        r = bench_layer(name, spec, a.rounds)
        print(f"{r['name']:30s} {r['ratio']:7.2f} {r['gflops']:8.1f} {r['us']:9.1f} {r['err']:11.2e} "
              f"{r['build_s']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
