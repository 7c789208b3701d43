"""`bninfer bench`: the default model end to end through a subprocess, and every user error as one
line on stderr with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bninfer import cli



def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "bninfer.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_bench_default_model(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    out_json = tmp_path / "bench.json"
    # Run from a directory outside the checkout: the CLI must find benchmarks/ next to the package.
    p = _run("bench", "--runs", "5", "--warmup", "1", "--json", str(out_json), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.splitlines()
    starts = [ln.split()[0] for ln in lines if ln.strip()]
    for word in ("model", "input", "settings", "bninfer", "output", "onnxruntime", "outputs", "latency",
                 "ratio", "json"):
        assert word in starts, f"no line starting with {word!r} in:\n{p.stdout}"
    assert any(ln.startswith("model") and "mnist-cnn" in ln for ln in lines)
    assert any(ln.startswith("input") and "[1, 1, 28, 28]" in ln for ln in lines)
    assert any(ln.startswith("bninfer") and "first run" in ln for ln in lines)
    header = next(ln for ln in lines if ln.startswith("latency"))
    assert header.split()[2:7] == ["p50", "p90", "p99", "mean", "min"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.split() and ln.split()[0] in
            ("bninfer", "onnxruntime") and len(ln.split()) >= 6 and ln.split()[1][0].isdigit()}
    assert set(rows) == {"bninfer", "onnxruntime"}
    for vals in rows.values():
        assert all(float(v) > 0 for v in vals[:5])

    doc = json.loads(out_json.read_text())
    assert doc["model"] == "mnist-cnn" and doc["threads"] == 1 and doc["runs"] == 5
    assert doc["inputs"] == {"input": {"dtype": "float32", "shape": [1, 1, 28, 28]}}
    eng = doc["engines"]
    assert len(eng["bninfer"]["times_ms"]) == 5 and len(eng["onnxruntime"]["times_ms"]) == 5
    assert eng["bninfer"]["ratio_median"] > 0
    assert eng["bninfer"]["max_rel_diff"] < 1e-3


def test_bench_missing_file_is_one_line(tmp_path: Path):
    p = _run("bench", str(tmp_path / "missing.onnx"), cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "model file not found" in p.stderr and "missing.onnx" in p.stderr


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    ((), "missing command"),
    (("frobnicate",), "invalid choice"),
    (("bench", "no-such-zoo-model"), "unknown model"),
    (("bench", "dir/missing.onnx"), "model file not found"),
    (("bench", "--threads", "0"), "--threads"),
    (("bench", "--threads", "two"), "--threads"),
    (("bench", "--runs", "-1"), "--runs"),
    (("bench", "--warmup", "x"), "--warmup"),
    (("bench", "--bogus"), "unrecognized arguments"),
    (("bench", "mlp", "--json", "/no/such/dir/out.json"), "does not exist"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bninfer") and "error:" in err, err
    assert message in err
    assert "Traceback" not in err


def test_unreadable_and_directory_models(capsys, tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 not a protobuf \x13\x37" * 10)
    code, out, err = _main(capsys, "bench", str(bad))
    assert code == 2 and err.count("\n") == 1 and "cannot read" in err
    code, out, err = _main(capsys, "bench", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "directory" in err


def test_unsupported_operator_is_one_line(capsys, tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    code, out, err = _main(capsys, "bench", str(path), "--runs", "1")
    assert code == 2 and err.count("\n") == 1 and "bninfer cannot run det.onnx" in err, err


def test_help_and_version(capsys):
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and "bench" in out
    code, out, _ = _main(capsys, "bench", "--help")
    assert code == 0 and "--no-compare" in out and "--json" in out
    code, out, _ = _main(capsys, "--version")
    assert code == 0 and out.startswith("bninfer ")


def test_bench_file_no_compare_in_process(capsys, tmp_path: Path):
    """A model given as a file (the zoo MLP saved to disk), bninfer only."""
    import onnx

    from benchmarks import zoo

    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.build("mlp"), str(path))
    code, out, err = _main(capsys, "bench", str(path), "--no-compare", "--runs", "3", "--warmup", "0")
    assert code == 0, err
    assert "mlp.onnx" in out and "input       input: float32 [1, 10]" in out
    assert "onnxruntime" not in out
    assert any(ln.startswith("bninfer ") and ln.split()[1][0].isdigit() for ln in out.splitlines())
