"""Renders the API reference (docs/API.md) from the public objects' signatures and docstrings, so the
docstrings stay its one source: `python -m fastconv._apidoc > docs/API.md` (tests/test_docs.py fails
when the file is stale)."""
import inspect

SECTIONS = [
    ("fastconv", "Functions, conversion, backends", None),
    ("fastconv.nn", "Modules", ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "SORT",
                                 "SORTConv2d", "Sequential", "ConvBNReLU", "BasicBlock", "Bottleneck",
                                 "SORTBasicBlock", "SORTBottleneck", "conv_bn_act"]),
    ("fastconv.models", "Models", None),
    ("fastconv.numba", "NumPy / CUDA-array entry points (numba kernels)", None),
    ("fastconv.onnx", "ONNX export", ["export", "translations"]),
    ("fastconv.tolerance", "Tolerance model of the checks", None),
    ("fastconv.timing", "Benchmark timer", None),
]


def _entry(module_name, name, obj):
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = "(...)"
    kind = "class " if inspect.isclass(obj) else ""
    own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__  # not a base class's
    doc = inspect.cleandoc(own) if own else "(undocumented)"
    return f"### `{kind}{module_name}.{name}{sig}`\n\n{doc}\n"


def render():
    import importlib
    out = ["# fastconv API reference", "",
           "Generated from the docstrings by `python -m fastconv._apidoc > docs/API.md`.", ""]
    for module_name, title, names in SECTIONS:
        mod = importlib.import_module(module_name)
        out += [f"## {title} (`{module_name}`)", "", inspect.getdoc(mod) or "", ""]
        for name in names or mod.__all__:
            obj = getattr(mod, name)
            if name == "__version__" or not callable(obj) or inspect.ismodule(obj):
                continue
            out.append(_entry(module_name, name, obj))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
