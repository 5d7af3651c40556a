"""Where whole-network CPU inference time goes: fastconv against ONNX Runtime and OpenVINO, layer by layer.

    python benchmarks/infer_profile.py [--model resnet50] [--batch 1] [--runs 10] [--peak 234]

Runs the torchvision net (fastconv.bench.inference_model) converted by fastconv (channels_last,
fused) under torch.profiler, and the same net exported to ONNX under ONNX Runtime's own per-node
profile (SessionOptions.enable_profiling) and OpenVINO's (PERF_COUNT; each set up as fastconv.peers
sets it up), and prints per output shape (the convolutions that produce it, with their fused bias /
residual / ReLU; both peers fuse the same ones into their Conv nodes): calls, ms per run of each,
and the compute floor (FLOPs at --peak GFLOP/s, the machine's FMA peak on all threads). ms are per
forward pass. A peer that is not installed gets a column of zeros."""
import argparse
import collections
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402
from fastconv import bench, peers  # noqa: E402


def fastconv_layers(model, x, runs):
    """output shape -> [calls, ms, GFLOP] of fastconv's convolutions (and the other ops by name)."""
    outs = {}  # (input shape, weight shape) -> output shape, from one pass of the torch model

    def hook(mod, inp, out):
        outs[(tuple(inp[0].shape), tuple(mod.weight.shape))] = tuple(out.shape)
    handles = [mod.register_forward_hook(hook) for mod in model.modules() if isinstance(mod, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    m = fastconv.convert(model, channels_last=True)
    with torch.inference_mode():
        for _ in range(2):
            m(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(runs):
                m(x)
    layers, other = collections.defaultdict(lambda: [0, 0.0, 0.0]), collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith("fastconv::"):
            continue
        shapes = [tuple(s) for s in e.input_shapes[:2]]
        if e.key.startswith("fastconv::conv2d") and len(shapes) == 2 and len(shapes[1]) == 4:
            xs, ws = shapes
            out = outs.get((xs, ws), (xs[0], ws[0], 1, 1))
            row = layers[out]
            row[0] += e.count // runs
            row[1] += e.self_cpu_time_total / runs / 1e3
            row[2] += 2 * out[0] * out[2] * out[3] * ws[0] * ws[1] * ws[2] * ws[3] * (e.count // runs) / 1e9
        else:
            other[e.key] += e.self_cpu_time_total / runs / 1e3
    return layers, other


def ort_layers(model, x, runs, threads):
    """output shape -> [Conv nodes, ms] of ONNX Runtime's profile, and its other nodes by op type."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = peers.export_onnx(model, x, os.path.join(tmp, "model.onnx"))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        for _ in range(2):
            session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    total = runs + 2  # the profile holds the warm-up runs too
    layers, other = collections.defaultdict(lambda: [0, 0.0]), collections.Counter()
    nodes = collections.defaultdict(set)  # output shape -> Conv node names
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        if args.get("op_name") == "Conv":
            shape = next(iter(args.get("output_type_shape", [{}])[0].values()), None)
            key = tuple(shape) if shape else ("?",)
            nodes[key].add(e["name"])
            layers[key][1] += e["dur"] / total / 1e3
        else:
            other[args.get("op_name", "?")] += e["dur"] / total / 1e3
    for key in layers:
        layers[key][0] = len(nodes[key])
    return layers, other


def ov_layers(model, x, runs, threads):
    """output shape -> [Convolution nodes, ms] of OpenVINO's per-node profile, and its other nodes by
    type (the runtime graph's nodes: fused operations are gone into the convolutions)."""
    import openvino as ov
    with tempfile.TemporaryDirectory() as tmp:
        path = peers.export_onnx(model, x, os.path.join(tmp, "model.onnx"))
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
            "PERF_COUNT": True})
        request = compiled.create_infer_request()
        for _ in range(2):
            request.infer({0: x.numpy()})
        shape = {op.get_friendly_name(): op.get_output_partial_shape(0).to_shape()
                 for op in compiled.get_runtime_model().get_ordered_ops() if op.get_output_size()}
        layers, other = collections.defaultdict(lambda: [0, 0.0]), collections.Counter()
        nodes = collections.defaultdict(set)
        for _ in range(runs):
            request.infer({0: x.numpy()})
            for info in request.get_profiling_info():
                ms = info.real_time.total_seconds() * 1e3 / runs
                if info.node_type == "Convolution" and info.node_name in shape:
                    key = tuple(shape[info.node_name])
                    nodes[key].add(info.node_name)
                    layers[key][1] += ms
                else:
                    other[info.node_type] += ms
    for key in layers:
        layers[key][0] = len(nodes[key])
    return layers, other


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", type=float, default=234.0, help="FMA peak, GFLOP/s, all threads (NOTES.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bench.inference_model(args.model)
    x = torch.randn(args.batch, 3, args.image, args.image)
    ours, ours_other = fastconv_layers(model, x, args.runs)
    theirs, theirs_other = ({}, {}) if peers.missing(["onnxruntime"]) else ort_layers(model, x, args.runs, args.threads)
    ov, ov_other = ({}, {}) if peers.missing(["openvino"]) else ov_layers(model, x, args.runs, args.threads)
    print(f"{args.model}, batch {args.batch}, {args.image} px, {args.threads} threads: ms per forward "
          f"(fastconv: torch.profiler; ONNX Runtime, OpenVINO: their node profiles), floor = FLOPs at "
          f"{args.peak:g} GFLOP/s")
    print(f"{'output shape':22s} {'calls':>5s} {'GFLOP':>6s} {'floor':>6s} {'fastconv':>9s} {'ORT':>7s} {'ORT/ours':>8s} "
          f"{'OV':>7s} {'OV/ours':>8s}")
    tot = [0.0, 0.0, 0.0, 0.0]
    for out, (calls, ms, gf) in sorted(ours.items(), key=lambda kv: -kv[1][1]):
        ort_ms, ov_ms = theirs.get(out, [0, 0.0])[1], ov.get(out, [0, 0.0])[1]
        floor = gf / args.peak * 1e3
        for i, v in enumerate((floor, ms, ort_ms, ov_ms)):
            tot[i] += v
        print(f"{str(out):22s} {calls:5d} {gf:6.2f} {floor:6.2f} {ms:9.2f} {ort_ms:7.2f} "
              f"{(ort_ms / ms if ms else 0):8.2f} {ov_ms:7.2f} {(ov_ms / ms if ms else 0):8.2f}")
    print(f"{'convolutions':22s} {'':5s} {'':6s} {tot[0]:6.2f} {tot[1]:9.2f} {tot[2]:7.2f} "
          f"{(tot[2] / tot[1] if tot[1] else 0):8.2f} {tot[3]:7.2f} {(tot[3] / tot[1] if tot[1] else 0):8.2f}")
    print("other ops, fastconv:", {k: round(v, 2) for k, v in ours_other.most_common(6)})
    print("other ops, ONNX Runtime:", {k: round(v, 2) for k, v in collections.Counter(theirs_other).most_common(6)})
    print("other ops, OpenVINO:", {k: round(v, 2) for k, v in collections.Counter(ov_other).most_common(6)})


if __name__ == "__main__":
    main()
