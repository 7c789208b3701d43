"""The MNIST CNN's three BN orders run in the same time as the no-BN net (ratio printed, not asserted:
speed is measured, never a test's pass/fail); the kernel counts are equal (asserted)."""
from benchmarks.bn_orders import measure, table
from benchmarks.compare import ort_available


def test_bn_orders_ratio(capsys):
    results = measure(runs=100, engines=("bninfer", "onnxruntime") if ort_available() else ("bninfer",))
    kernels = {order: row[2] for order, row in results["bninfer"].items()}
    assert len(set(kernels.values())) == 1, kernels
    with capsys.disabled():
        print("\nMNIST CNN, BN orders vs no BN (median of per-round ratios):\n" + table(results))
