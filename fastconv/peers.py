"""The engines a user would run a torchvision convnet on instead of fastconv, for CPU inference, each
set up as its documentation recommends and at the same thread count:

- "torch.compile freezing": torch.compile of the channels_last model with inductor's freezing on
  (weights folded into the graph as constants; torch's recommended inference setup), under no_grad;
- "onnxruntime": the model exported to ONNX (opset 17), run by an InferenceSession on the
  CPUExecutionProvider with every graph optimization, sequential execution, intra-op threads =
  torch's thread count;
- "openvino": the same ONNX file compiled for the CPU plugin with the latency hint, the thread count
  and float32 inference precision (on CPUs with AVX512-BF16 or AMX it would otherwise run bfloat16).

onnxruntime and openvino are optional (`pip install fastconv[peers]`, or `make bench`): `missing()`
names the peers that cannot run here and why, and the benchmarks skip them with that note.

    run = peers.runner("onnxruntime", model, x)   # model: an eval-mode torch module on the CPU
    logits = run(x)                                # a torch tensor, as model(x) would give
"""
import contextlib
import importlib
import os
import tempfile

import torch

INFERENCE_PEERS = ("torch.compile freezing", "onnxruntime", "openvino")
ONNX_PEERS = ("onnxruntime", "openvino")  # the peers that load export_onnx's file
_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def reason(exc):
    """One line saying why a peer (or torch.compile) could not run: the exception's type and the
    first line of its message."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def missing(names=INFERENCE_PEERS):
    """{peer: why it cannot run here} for those of `names` whose package is not installed."""
    out = {}
    for name in names:
        if name not in INFERENCE_PEERS:
            raise ValueError(f"peers: {name!r} is not a peer; choose from {', '.join(INFERENCE_PEERS)}")
        module = _MODULE.get(name)
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            out[name] = f"{module} is not installed ({exc.__class__.__name__}): pip install fastconv[peers]"
    return out


@contextlib.contextmanager
def _quiet_fds():
    """Standard output and error of the block (file descriptors 1 and 2, C++ writes included) go to a
    temporary file: the exporter's log dumps the whole TorchScript graph when an operator has no
    ONNX form, and the caller reports the error in a line instead."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def export_onnx(model, x, path):
    """Write `model` (traced at x's shape) to `path` as ONNX, the file both ONNX peers load; raises
    the exporter's error (an operator ONNX cannot express at this shape, such as adaptive pooling to
    a size that does not divide the input) without its log."""
    with torch.no_grad(), _quiet_fds():
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], do_constant_folding=True)
    return path


def _threads(threads):
    return int(threads or torch.get_num_threads())


def _compile_freezing(model, threads):
    import copy

    import torch._inductor.config as inductor_config
    m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(m)

    def run(x):
        # freezing is read when the graph compiles (the first call); kept on for any recompile
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(x)
    return run


def _onnxruntime(onnx_path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Its pool's threads otherwise busy-wait after each run, taking the cores from whatever runs
    # next (measured: fastconv's AlexNet batch 1 timed right after it, 19.8 -> 25.7 ms); ONNX Runtime
    # itself measured as fast or faster without it.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
    return run


def _openvino(onnx_path, threads):
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(onnx_path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x.contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def runner(name, model, x, threads=None, onnx_path=None):
    """A callable x -> logits running the CPU module `model` on peer `name` (see the module doc),
    built for inputs of x's shape. The ONNX peers export `model` to a temporary file unless
    `onnx_path` names one already written by export_onnx."""
    if name not in INFERENCE_PEERS:
        raise ValueError(f"peers.runner: {name!r} is not a peer; choose from {', '.join(INFERENCE_PEERS)}")
    why = missing([name]).get(name)
    if why:
        raise RuntimeError(f"peers.runner: {name} cannot run here: {why}")
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError(f"peers.runner: x must be a float32 CPU tensor, got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else (x.dtype, x.device.type)}")
    threads = _threads(threads)
    if name == "torch.compile freezing":
        return _compile_freezing(model, threads)
    with contextlib.ExitStack() as stack:
        if onnx_path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastconv-peer-"))
            onnx_path = export_onnx(model.eval(), x, os.path.join(tmp, "model.onnx"))
        # both sessions hold the model in memory once built; the file can go
        return _onnxruntime(onnx_path, threads) if name == "onnxruntime" else _openvino(onnx_path, threads)
