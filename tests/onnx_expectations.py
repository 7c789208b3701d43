"""ONNX test cases that bninfer refuses (with UnsupportedOperatorError), each with the reason.

Cases using an op bninfer does not implement, or non-float32 inputs/outputs, need no entry: the test
knows them. This list names float32 cases of supported ops that are refused on purpose.
"""

EXPECTED: dict[str, str] = {
}
