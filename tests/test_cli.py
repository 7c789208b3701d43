"""The `bninfer` commands convert, run, inspect and the bench additions (--profile, --trace, progress),
through a subprocess (`python -m bninfer.cli ...`) on the torch-exported fixtures and small zoo models;
user errors in process (faster) and a few through a subprocess: one line on stderr, exit code 2."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import bninfer
from bninfer import cli

DATA = Path(__file__).parent / "data"


def _cli(*args: str, cwd: Path, env: dict | None = None, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", "bninfer.cli", *args], cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300)


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fixture(name: str) -> tuple[Path, dict]:
    return DATA / f"{name}.onnx", dict(np.load(DATA / f"{name}.npz"))


def _ort(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _line(out: str, start: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith(start))


# ------------------------------------------------------------------------------------------------
# convert
# ------------------------------------------------------------------------------------------------
def test_convert_bninfer_and_onnx(tmp_path: Path):
    """A dynamic-batch torch export with two BNs: written as .bninfer (bit-identical outputs when
    loaded) and as ONNX (same outputs in onnxruntime, no BatchNormalization left)."""
    src, data = _fixture("mnist_bn_relu_classic")
    out_b, out_o = tmp_path / "m.bninfer", tmp_path / "m.onnx"
    p = _cli("convert", str(src), "-o", str(out_b), "--onnx", str(out_o), cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = p.stdout
    assert "input       input: float32 [batch, 1, 28, 28] -> bound to [1, 1, 28, 28]" in out
    assert "dynamic dimension 0 ('batch') bound to 1 (default; choose with --shape input=N,1,28,28)" in out
    summary = _line(out, "optimized")
    assert "12 -> 7 nodes" in summary and "BatchNormalization 2: 2 folded into weights" in summary
    assert "3 fused chains" in summary
    assert "'/bn1/BatchNormalization': folded into the weights of Conv '/conv1/Conv'" in out
    assert _line(out, f"wrote       {out_b} (.bninfer")
    assert "no BatchNormalization or Dropout" in _line(out, f"wrote       {out_o} (ONNX opset 21")

    x = data["input"]
    original = bninfer.InferenceSession(str(src)).run(None, {"input": x})
    loaded = bninfer.InferenceSession(str(out_b))
    assert loaded.get_inputs()[0].shape == [1, 1, 28, 28]
    converted = loaded.run(None, {"input": x})
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(original, converted))

    ops = [n.op_type for n in onnx.load(str(out_o)).graph.node]
    assert "BatchNormalization" not in ops and "Dropout" not in ops
    for a, b in zip(original, _ort(out_o, {"input": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_convert_with_shape_binding(tmp_path: Path):
    """--shape binds the dynamic batch: the .bninfer file takes batch 3 and gives bit-identical outputs."""
    src, data = _fixture("resnet_block_dynamo")
    out_b, out_o = tmp_path / "r3.bninfer", tmp_path / "r3.onnx"
    p = _cli("convert", str(src), "-o", str(out_b), "--onnx", str(out_o), "--shape", "input=3,3,16,16",
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "-> bound to [3, 3, 16, 16]" in p.stdout
    assert "dynamic dimension 0 ('batch') bound to 3 (from --shape)" in p.stdout
    x = data["input_b3"]
    original = bninfer.InferenceSession(str(src)).run(None, {"input": x})
    converted = bninfer.InferenceSession(str(out_b)).run(None, {"input": x})
    assert all(np.array_equal(a, b) for a, b in zip(original, converted))
    np.testing.assert_allclose(converted[0], data["output_b3"], rtol=1e-4, atol=1e-5)
    for a, b in zip(original, _ort(out_o, {"input": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_convert_zoo_mlp_drops_batchnorm_and_dropout(tmp_path: Path):
    from benchmarks import zoo

    assert {"BatchNormalization", "Dropout"} <= {n.op_type for n in zoo.build("mlp").graph.node}
    p = _cli("convert", "mlp", "--onnx", "mlp.onnx", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "mlp.bninfer").exists()  # --onnx alone writes only the ONNX file
    summary = _line(p.stdout, "optimized")
    assert "1 folded into weights" in summary and "1 eliminated (Dropout 1)" in summary
    ops = [n.op_type for n in onnx.load(str(tmp_path / "mlp.onnx")).graph.node]
    assert ops == ["Gemm", "Relu", "Gemm"]
    feeds = zoo.input_for(zoo.build("mlp"))
    ours = bninfer.InferenceSession(zoo.build_bytes("mlp")).run(None, feeds)
    np.testing.assert_allclose(_ort(tmp_path / "mlp.onnx", feeds)[0], ours[0], rtol=1e-5, atol=1e-6)


def test_convert_default_output_in_process(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, "convert", "mnist-cnn-nobn")
    assert code == 0, err
    assert (tmp_path / "mnist-cnn-nobn.bninfer").is_file()
    assert "no BatchNormalization" in _line(out, "optimized")
    # A .bninfer model converts too (to ONNX here); it must not overwrite itself.
    code, out, err = _main(capsys, "convert", "mnist-cnn-nobn.bninfer", "--onnx", "again.onnx")
    assert code == 0, err
    assert (tmp_path / "again.onnx").is_file()
    code, out, err = _main(capsys, "convert", "mnist-cnn-nobn.bninfer")
    assert code == 2 and "refusing to overwrite the model itself" in err


# ------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------
def test_run_onnx_with_npy_input_and_npz_output(tmp_path: Path):
    src, data = _fixture("mnist_bn_relu_classic")
    np.save(tmp_path / "x.npy", data["input"])
    p = _cli("run", str(src), "--input", "input=x.npy", "--output", "out.npz", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = p.stdout
    assert "input       input: float32 [1, 1, 28, 28] (x.npy)" in out
    expected = bninfer.InferenceSession(str(src)).run(None, {"input": data["input"]})[0]
    head = _line(out, "output      output: float32 [1, 10]")
    fields = head.split()
    stats = {fields[i]: float(fields[i + 1]) for i in range(len(fields) - 1) if fields[i] in ("min", "max", "mean")}
    assert stats["min"] == pytest.approx(float(expected.min()), rel=1e-5)
    assert stats["max"] == pytest.approx(float(expected.max()), rel=1e-5)
    assert stats["mean"] == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-6)
    top = _line(out, "            top-5 (index, value):")
    order = np.argsort(-expected[0], kind="stable")[:5]
    assert top.split(":", 1)[1].strip() == ", ".join(f"({i}, {expected[0, i]:.6g})" for i in order)
    assert "time" in out.split() and "wrote       out.npz (1 array: output" in out
    with np.load(tmp_path / "out.npz", allow_pickle=False) as saved:
        assert saved.files == ["output"]
        assert np.array_equal(saved["output"], expected)
    np.testing.assert_allclose(expected, data["output"], rtol=1e-4, atol=1e-5)  # torch's output


def test_run_bninfer_and_zoo_random(tmp_path: Path):
    """A converted file with an .npz input (arrays named after the inputs; others ignored), and a zoo
    model on a seeded random input, saved and checked against the session API."""
    src, data = _fixture("preact_block_classic")
    bninfer.InferenceSession(str(src)).save_optimized(str(tmp_path / "p.bninfer"))
    p = _cli("run", "p.bninfer", "--input", str(DATA / "preact_block_classic.npz"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "preact_block_classic.npz[input])" in p.stdout
    expected = bninfer.InferenceSession(str(src)).run(None, {"input": data["input"]})[0]
    assert f"max {expected.max():.6g}" in _line(p.stdout, "output      output: float32 [1, 10]")

    p = _cli("run", "mnist-cnn", "--random", "--seed", "3", "-o", "z.npz", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "input       input: float32 [1, 1, 28, 28] (random, seed 3)" in p.stdout
    from benchmarks import zoo

    x = np.random.default_rng(3).standard_normal((1, 1, 28, 28)).astype(np.float32)
    ours = bninfer.InferenceSession(zoo.build_bytes("mnist-cnn")).run(None, {"input": x})[0]
    with np.load(tmp_path / "z.npz") as z:
        assert np.array_equal(z["output"], ours)


def test_run_output_summary_shapes():
    """top-5 only for a (1, C) output, C >= 2; fewer than 5 classes -> top-C; non-finite values counted."""
    lines = cli._output_lines("y", np.array([[1.0, 3.0, 2.0]], np.float32))
    assert lines[1].strip() == "top-3 (index, value): (1, 3), (2, 2), (0, 1)"
    assert len(cli._output_lines("y", np.zeros((2, 10), np.float32))) == 1
    assert len(cli._output_lines("y", np.zeros((1, 1), np.float32))) == 1
    line = cli._output_lines("y", np.array([[1.0, np.nan, np.inf, -2.0]], np.float32))[0]
    assert "min -2  max 1  mean -0.5  (2 non-finite)" in line


def test_run_two_inputs_in_process(capsys, tmp_path: Path):
    """NAME=FILE per input; a missing input is an error unless --random fills it."""
    from tests.util import make_model

    model = make_model([onnx.helper.make_node("Add", ["a", "b"], ["y"])], {"a": [1, 4], "b": ["n", 4]}, ["y"])
    path = tmp_path / "add.onnx"
    onnx.save(model, str(path))
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", 10 * a)
    code, out, err = _main(capsys, "run", str(path), "--input", f"a={tmp_path / 'a.npy'}",
                           "--input", f"b={tmp_path / 'b.npy'}", "-o", str(tmp_path / "y.npz"))
    assert code == 0, err
    assert "min 0  max 33  mean 16.5" in out
    assert "top-4 (index, value): (3, 33), (2, 22), (1, 11), (0, 0)" in out
    with np.load(tmp_path / "y.npz") as y:
        assert np.array_equal(y["y"], 11 * a)
    code, out, err = _main(capsys, "run", str(path), "--input", f"a={tmp_path / 'a.npy'}")
    assert code == 2 and "missing input(s) b" in err and "--random" in err
    code, out, err = _main(capsys, "run", str(path), "--input", f"a={tmp_path / 'a.npy'}", "--random",
                           "--shape", "b=1,4")
    assert code == 0, err
    assert "input       b: float32 [1, 4] (random, seed 0)" in out
    code, out, err = _main(capsys, "run", str(path), "--input", str(tmp_path / "a.npy"))
    assert code == 2 and "write --input NAME=" in err


def test_dot_text_is_well_formed():
    """Every edge joins declared ids, labels are escaped, fused nodes show their op chain."""
    import re

    from bninfer import dot

    sess = bninfer.InferenceSession(str(DATA / "preact_block_classic.onnx"))
    g = sess.optimized_graph().copy()
    g.nodes[0].name = 'evil"name\\with\nstuff'
    text = dot.to_dot(g, "title")
    assert text.startswith('digraph "main_graph" {') and text.rstrip().endswith("}")
    declared = set(re.findall(r"^  (\w+) \[", text, re.M)) - {"node", "edge"}
    edges = re.findall(r"^  (\w+) -> (\w+)", text, re.M)
    assert edges and all(a in declared and b in declared for a, b in edges)
    assert len(declared) == len(g.nodes) + len(g.inputs) + len(g.outputs)
    assert 'evil\\"name\\\\with\\nstuff' in text
    assert "Affine>Relu>Conv>Relu" in text and dot.FUSED_COLOR in text
    assert "[1, 8, 16, 16]" in text  # edge labels: value shapes
    before, _ = bninfer.passes.optimize(sess._graph, {"input": (1, 3, 16, 16)}, 0)
    assert dot.BN_COLOR in dot.to_dot(before, "before")  # surviving BNs stand out


# ------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------
def _fake_dot(directory: Path) -> Path:
    """A stand-in for Graphviz: checks its arguments, reads DOT from stdin, writes a small SVG."""
    directory.mkdir(exist_ok=True)
    script = directory / "dot"
    script.write_text(f"#!{sys.executable}\n"
                      "import sys\n"
                      "assert sys.argv[1] == '-Tsvg' and sys.argv[2] == '-o', sys.argv\n"
                      "text = sys.stdin.read()\n"
                      "assert text.startswith('digraph'), text[:50]\n"
                      "open(sys.argv[3], 'w').write('<svg>%d</svg>' % len(text))\n")
    script.chmod(0o755)
    return directory


def test_inspect_report_dot_and_svg(tmp_path: Path):
    src, _ = _fixture("preact_block_classic")
    bin_dir = _fake_dot(tmp_path / "bin")
    p = _cli("inspect", str(src), "--dot", "g.dot", "--svg", "g.svg", cwd=tmp_path,
             env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = p.stdout
    assert "input       input: float32 [1, 3, 16, 16]" in out and "output      output: float32 [1, 10]" in out
    table = out[out.index("nodes"):out.index("summary")]
    rows = {ln.split()[-3]: ln.split()[-2:] for ln in table.splitlines()[1:] if len(ln.split()) >= 3}
    assert rows["BatchNormalization"] == ["5", "0"] and rows["Relu"] == ["5", "0"]
    assert rows["Conv"] == ["6", "6"] and rows["total"] == ["21", "9"]
    assert "Affine>Relu>Conv>Relu 2" in _line(out, "kernels     fused:")
    assert "BatchNormalization (5):" in out and "fused chains (7):" in out
    assert "'/bn/BatchNormalization': scale+shift and Relu in the prologue of GlobalAveragePool" in out
    assert "scale+shift and Relu in the prologue of Conv '/block2/shortcut/Conv'" in out
    deviation = float(_line(out, "deviation").split()[-1])
    assert 0 <= deviation < 1e-4
    text = (tmp_path / "g.dot").read_text()
    assert text.startswith("digraph") and text.count("subgraph cluster_") == 2
    assert "before: unoptimized, constants folded (21 nodes)" in text and "after: optimized (9 nodes)" in text
    assert "Affine>Relu>Conv>Relu" in text and "style=dashed" in text
    assert (tmp_path / "g.svg").read_text() == f"<svg>{len(text)}</svg>"


def test_inspect_svg_without_graphviz(tmp_path: Path):
    """No `dot` on PATH: --svg alone is an error (exit 2, before any work); beside --dot a one-line
    warning and exit 0 (the DOT text was written)."""
    src, _ = _fixture("mlp_bn1d_classic")
    env = {"PATH": str(tmp_path / "empty")}
    p = _cli("inspect", str(src), "--svg", "g.svg", cwd=tmp_path, env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Graphviz 'dot' program is not installed" in p.stderr
    p = _cli("inspect", str(src), "--svg", "g.svg", "--dot", "g.dot", cwd=tmp_path, env=env)
    assert p.returncode == 0
    assert p.stderr.count("\n") == 1 and "warning: --svg g.svg not written" in p.stderr
    assert (tmp_path / "g.dot").is_file() and not (tmp_path / "g.svg").exists()


def test_inspect_bninfer_file_in_process(capsys, tmp_path: Path):
    src, _ = _fixture("se_silu_classic")
    bninfer.InferenceSession(str(src)).save_optimized(str(tmp_path / "s.bninfer"))
    code, out, err = _main(capsys, "inspect", str(tmp_path / "s.bninfer"), "--dot", str(tmp_path / "s.dot"))
    assert code == 0, err
    assert "not measured: a .bninfer file holds only the optimized graph" in out
    assert "BatchNormalization (3):" in out and "Conv>Swish" in out
    text = (tmp_path / "s.dot").read_text()
    assert text.count("subgraph cluster_") == 1 and "after: optimized" in text


def test_dot_text_renders_with_graphviz(tmp_path: Path):
    """The DOT text is valid Graphviz input (checked with the real `dot` when it is installed)."""
    from bninfer import dot

    dot_program = shutil.which("dot")
    if dot_program is None:
        pytest.skip("Graphviz is not installed")
    sess = bninfer.InferenceSession(str(DATA / "densenet_block_classic.onnx"))
    g = sess.optimized_graph().copy()
    g.nodes[0].name = 'a "quoted"\\name\nwith newline' + "x" * 80
    text = dot.to_dot_pair(g, g)
    p = subprocess.run([dot_program, "-Tsvg"], input=text.encode(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert b"<svg" in p.stdout
    assert subprocess.run([dot_program, "-Tsvg"], input=dot.to_dot(g, "t").encode(),
                          capture_output=True, timeout=120).returncode == 0


# ------------------------------------------------------------------------------------------------
# bench --profile / --trace, progress
# ------------------------------------------------------------------------------------------------
def _check_trace(path: Path) -> list[dict]:
    events = json.loads(path.read_text())
    assert isinstance(events, list) and events
    for e in events:
        for key in ("name", "ph", "ts", "dur", "pid", "tid", "cat"):
            assert key in e, (key, e)
        assert e["ph"] == "X" and isinstance(e["ts"], (int, float)) and e["dur"] >= 0
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
    return events


def test_bench_profile_and_trace(tmp_path: Path):
    p = _cli("bench", "mnist-cnn", "--no-compare", "--runs", "4", "--warmup", "1", "--profile",
             "--trace", "trace.json", "--json", "b.json", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr  # stderr is a pipe: no progress counter
    out = p.stdout
    header = _line(out, "profile     per kernel, mean over 4 profiled runs, slowest first")
    assert "of" in header and "per run" in header
    lines = out.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("  node"))
    assert lines[k].split()[:3] == ["node", "fused", "ops"] and "GFLOP/s" in lines[k] and "share" in lines[k]
    rows = []
    for ln in lines[k + 1:]:
        if not ln.startswith("  "):
            break
        rows.append(ln.split())
    assert len(rows) == 6  # Conv>Relu x2, MaxPool, Flatten, Gemm>Relu, Gemm
    means = [float(r[-3]) for r in rows]
    assert means == sorted(means, reverse=True)
    assert sum(float(r[-1].rstrip("%")) for r in rows) == pytest.approx(100, abs=0.5)
    chains = {r[0]: r[1] for r in rows}
    assert chains["conv_1"] == "Conv>Relu" and chains["gemm_1"] == "Gemm>Relu"
    assert next(r for r in rows if r[0] == "conv_1")[-2] != "-"  # GFLOP/s for a conv
    assert next(r for r in rows if r[1] == "MaxPool")[-2] == "-"
    assert _line(out, "trace       trace.json (Chrome trace JSON")
    events = _check_trace(tmp_path / "trace.json")
    node_events = [e for e in events if e["cat"] == "Node"]
    assert len(node_events) == 6 * 4 and sum(e["cat"] == "Session" for e in events) == 4
    assert {"op_name", "fused_ops", "gflops"} <= set(node_events[0]["args"])
    doc = json.loads((tmp_path / "b.json").read_text())
    assert len(doc["profile"]) == 6 and doc["profile"][0]["mean_us"] >= doc["profile"][-1]["mean_us"]


def test_end_profiling_trace_in_process(tmp_path: Path):
    so = bninfer.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    src, data = _fixture("resnet_block_classic")
    sess = bninfer.InferenceSession(str(src), so)
    for _ in range(2):
        sess.run(None, {"input": data["input"]})
    path = sess.end_profiling()
    assert Path(path).parent == tmp_path and path.endswith(".json")
    events = _check_trace(Path(path))
    assert {e["cat"] for e in events} == {"Node", "Session"}
    assert any(e["args"].get("fused_ops") == "Conv+Add>Relu" for e in events if e["cat"] == "Node")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counter_only_on_a_terminal():
    tty = _Tty()
    progress = cli.Progress(True, tty)
    progress.show("warm-up 1/10")
    progress.show("warm-up 2/10")
    progress.show("x")
    progress.clear()
    assert tty.getvalue() == "\rwarm-up 1/10\rwarm-up 2/10\rx" + " " * 11 + "\r \r"
    with cli.Progress(True, tty).ticking("compiling", interval=0.01):
        import time
        time.sleep(0.05)
    assert "\rcompiling 0.0 s" in tty.getvalue()
    for p in (cli.Progress(False, _Tty()), cli.Progress(True, io.StringIO())):  # --quiet, a pipe
        p.show("x")
        with p.ticking("y"):
            pass
        p.clear()
        assert p.stream.getvalue() == ""


def test_progress_on_a_real_terminal(tmp_path: Path):
    """stderr on a pseudo-terminal: the counter appears, redrawn with carriage returns and erased
    (with --quiet it is not shown: see test_progress_counter_only_on_a_terminal)."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        p = _cli("run", "mlp", cwd=tmp_path, stderr=slave)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert p.returncode == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "bninfer: loading mlp" in text and "bninfer: first run (compiling kernels)" in text
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")  # the line is erased at the end


# ------------------------------------------------------------------------------------------------
# user errors: one line on stderr, exit code 2, no traceback
# ------------------------------------------------------------------------------------------------
def _det_model(path: Path) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("err")
    src, data = _fixture("mnist_bn_relu_classic")
    f = {"model": src, "dir": d}
    np.save(d / "x.npy", data["input"])
    np.save(d / "x64.npy", data["input"].astype(np.float64))
    np.save(d / "small.npy", data["input"][:, :, :10])
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    bninfer.InferenceSession(str(src)).save_optimized(str(d / "m.bninfer"))
    (d / "corrupt.bninfer").write_bytes((d / "m.bninfer").read_bytes()[:2000])
    _det_model(d / "det.onnx")
    for k, name in (("x", "x.npy"), ("x64", "x64.npy"), ("small", "small.npy"), ("obj", "obj.npy"),
                    ("garbage", "garbage.npy"), ("mb", "m.bninfer"), ("corrupt", "corrupt.bninfer"),
                    ("det", "det.onnx")):
        f[k] = d / name
    return f


ERRORS = [
    (("convert", "{dir}/missing.onnx"), "model file not found"),
    (("convert", "{dir}"), "is a directory"),
    (("convert", "{model}", "-o", "{dir}/out.onnx"), "-o writes the .bninfer format"),
    (("convert", "{model}", "-o", "{dir}/no/such/dir/m.bninfer"), "does not exist"),
    (("convert", "{model}", "--shape", "nope=1,1,28,28"), "unknown input name 'nope'"),
    (("convert", "{model}", "--shape", "input=1,1,28"), "has rank 4"),
    (("convert", "{model}", "--shape", "input=1,3,28,28"), "dimension 1 of input 'input' is fixed at 1"),
    (("convert", "{model}", "--shape", "input=a,b"), "expected positive integers"),
    (("convert", "{det}"), "bninfer cannot run det.onnx"),
    (("convert", "{corrupt}", "--onnx", "{dir}/c.onnx"), "cannot load corrupt.bninfer"),
    (("convert", "no-such-zoo-model"), "unknown model"),
    (("run", "{model}", "--input", "{dir}/missing.npy"), "file not found"),
    (("run", "{model}", "--input", "{garbage}"), "not a readable .npy/.npz file"),
    (("run", "{model}", "--input", "{obj}"), "not a readable .npy/.npz file"),
    (("run", "{model}", "--input", "{small}"), "input 'input' has shape (1, 1, 10, 28)"),
    (("run", "{model}", "--input", "{x64}"), "has dtype float64; expected float32"),
    (("run", "{model}", "--input", "nope={x}"), "unknown input name 'nope'"),
    (("run", "{model}", "--input", "{x}", "--input", "input={x}"), "given twice"),
    (("run", "{model}", "--input", "{x}", "--shape", "input=2,1,28,28"), "--shape only applies"),
    (("run", "{model}", "--output", "{dir}/no/dir/o.npz"), "does not exist"),
    (("run", "{model}", "--seed", "-1"), "--seed"),
    (("run", "{corrupt}"), "not a readable .bninfer file"),
    (("run", "{det}"), "Det"),
    (("inspect", "{det}"), "bninfer cannot run det.onnx"),
    (("inspect", "{corrupt}"), "cannot load corrupt.bninfer"),
    (("inspect", "{model}", "--dot", "{dir}"), "is a directory"),
    (("inspect",), "the following arguments are required: MODEL"),
    (("bench", "{mb}"), "bench needs the .onnx model"),
    (("bench", "mlp", "--trace", "{dir}/no/dir/t.json"), "does not exist"),
    (("frobnicate",), "invalid choice"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(ERRORS)])
def test_user_errors_are_one_line_exit_2(capsys, files, argv, message):
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    code, out, err = _main(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("bninfer") and "error:" in err, err
    assert message in err, err
    assert "Traceback" not in err


def test_inspect_svg_alone_without_dot_in_process(capsys, files, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, out, err = _main(capsys, "inspect", str(files["model"]), "--svg", str(files["dir"] / "g.svg"))
    assert code == 2 and out == "" and "not installed" in err and err.count("\n") == 1


def test_errors_through_a_subprocess(files):
    """The process itself: exit code 2, one line, nothing on stdout for a failure before any output."""
    for argv, message in ((("run", str(files["corrupt"])), "not a readable .bninfer"),
                          (("convert", str(files["model"]), "--shape", "x=1"), "unknown input name")):
        p = _cli(*argv, cwd=files["dir"])
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and message in p.stderr and "Traceback" not in p.stderr
    # A user error after the report was printed (wrong input shape) still ends with one stderr line.
    p = _cli("run", str(files["model"]), "--input", str(files["small"]), cwd=files["dir"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "expected" in p.stderr


def test_help_lists_every_command(capsys):
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and all(c in out for c in ("bench", "convert", "run", "inspect"))
    for command, flags in (("convert", ("--onnx", "--shape", "-o")), ("run", ("--input", "--random", "--seed")),
                           ("inspect", ("--dot", "--svg")), ("bench", ("--profile", "--trace", "--quiet"))):
        code, out, _ = _main(capsys, command, "--help")
        assert code == 0 and all(f in out for f in flags), (command, out)
