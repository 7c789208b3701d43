"""The parts of the `onnx` package the importer needs, loaded without running `import onnx`.

The importer needs ONNX's generated protobuf classes and its C++ extension (checker, operator schemas).
`import onnx` also imports onnx.helper -> ml_dtypes, and ml_dtypes 0.7 with numpy 2.4 takes 1.1 s to
import (it registers its casts through numpy's ufunc loop list, whose cost grows with its length). That
was a third of the time a fresh process needed to reach its first ResNet-50 output. Both parts load
from onnx's own files in about 25 ms.

- The protobuf module is executed from onnx's file under a private name. upb keeps one class per
  descriptor, so its ModelProto *is* onnx.ModelProto once onnx is imported.
- The C++ extension can be initialised once per process only (nanobind refuses a second copy), so it
  is registered under its real name, where a later `import onnx` finds and reuses it. A one-shot import
  hook then sets it as the onnx package's attribute, as a normal import would have.

When `onnx` is already imported, or its files are not where this expects them, the full package is used.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_EXT = "onnx.onnx_cpp2py_export"
MAX_PROTOBUF_BYTES = 2 << 30


def _exec_file(name: str, path: Path, register: bool) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if register:
            sys.modules.pop(name, None)
        raise
    return module


class _AttachExtension(importlib.abc.MetaPathFinder):
    """On the first `import onnx`, give the package the extension module already loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "onnx":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            module.onnx_cpp2py_export = sys.modules.get(_EXT)
            run(module)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def _load_parts() -> tuple[ModuleType, ModuleType]:
    """(protobuf module, C++ extension) from onnx's files, without executing onnx/__init__.py."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnx is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    pb2 = _exec_file("bninfer_onnx_ml_pb2", folder / "onnx_ml_pb2.py", register=False)
    if _EXT not in sys.modules:
        candidates = [folder / f"onnx_cpp2py_export{suffix}"
                      for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise ImportError(f"no onnx_cpp2py_export extension in {folder}")
        _exec_file(_EXT, found[0], register=True)
        sys.meta_path.insert(0, _AttachExtension())
    return pb2, sys.modules[_EXT]


def _full_onnx() -> tuple[ModuleType, ModuleType]:
    import onnx
    import onnx.onnx_cpp2py_export as ext
    return onnx, ext


def _load() -> tuple[ModuleType, ModuleType, bool]:
    if "onnx" in sys.modules:
        return (*_full_onnx(), True)
    try:
        return (*_load_parts(), False)
    except Exception:  # an onnx laid out differently: pay for the full import
        return (*_full_onnx(), True)


_pb2, _ext, FULL_IMPORT = _load()

ModelProto = _pb2.ModelProto
GraphProto = _pb2.GraphProto
NodeProto = _pb2.NodeProto
TensorProto = _pb2.TensorProto
SparseTensorProto = _pb2.SparseTensorProto
AttributeProto = _pb2.AttributeProto
ValueInfoProto = _pb2.ValueInfoProto
ValidationError = _ext.checker.ValidationError
SchemaError = _ext.defs.SchemaError


def check_model(model: ModelProto | bytes | str) -> None:
    """ONNX's checker (as onnx.checker.check_model with its defaults) on a message, its serialized bytes
    or a file path."""
    if isinstance(model, str):
        _ext.checker.check_model_path(model, False, False, False)
        return
    data = model if isinstance(model, bytes) else model.SerializeToString()
    if len(data) > MAX_PROTOBUF_BYTES:
        raise ValueError("the model is above protobuf's 2 GiB limit; load it from its path")
    _ext.checker.check_model(data, False, False, False)


def newest_opset() -> int:
    """The newest opset of the default domain that this onnx knows."""
    return _ext.defs.schema_version_map()[""][1]


def onnx_version() -> str:
    from importlib.metadata import version
    return version("onnx")


def attribute_defaults(op: str, opset: int, domain: str = "") -> dict[str, AttributeProto]:
    """The attributes with a default in `op`'s schema for `opset`, as AttributeProtos ({} if no schema)."""
    try:
        schema = _ext.defs.get_schema(op, opset, domain)
    except SchemaError:
        return {}
    defaults = {}
    for name, a in schema.attributes.items():
        raw = a._default_value  # what onnx.defs' `default_value` property parses
        if not raw:
            continue
        attr = AttributeProto()
        attr.ParseFromString(raw)
        if attr.type != AttributeProto.UNDEFINED:
            defaults[name] = attr
    return defaults
