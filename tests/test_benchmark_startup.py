"""benchmarks/startup.py's fresh-process measurement, on the smallest zoo model."""
from __future__ import annotations

from benchmarks import startup, zoo


def test_a_fresh_process_reports_its_import_session_and_first_run(tmp_path):
    model = tmp_path / "mlp.onnx"
    model.write_bytes(zoo.build_bytes("mlp"))
    t = startup.fresh_process(model, threads=1)
    assert set(t) == {"import", "session", "first_run", "total"}
    assert all(v > 0 for v in t.values())
    assert abs(t["total"] - (t["import"] + t["session"] + t["first_run"])) < 1e-3


def test_a_failing_child_is_reported(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    try:
        startup.fresh_process(bad, threads=1)
    except RuntimeError as e:
        assert "not a valid ONNX model" in str(e)
    else:
        raise AssertionError("a child that failed was not reported")
