"""bninfer's exception classes: each subclasses the built-in that fits, so callers can catch either."""


class BninferError(Exception):
    """Base of every error bninfer raises on purpose."""


class UnsupportedOperatorError(BninferError, NotImplementedError):
    """The model uses an operator, attribute or data type bninfer does not implement."""

    def __init__(self, message: str, nodes: list[str] | None = None):
        super().__init__(message)
        self.nodes = nodes or []


class ModelError(BninferError, ValueError):
    """The model file or graph is malformed, unsafe or inconsistent."""


class InputError(BninferError, ValueError):
    """A feed passed to run() has the wrong name, rank or shape."""


class InputTypeError(BninferError, TypeError):
    """A feed passed to run() has the wrong type or dtype."""


class TrainingModeError(UnsupportedOperatorError):
    """A BatchNormalization (or similar) asks for batch statistics: not an inference graph."""


class WorkerError(BninferError, RuntimeError):
    """A kernel failed in a worker thread, but not when the caller ran the same calls again."""
