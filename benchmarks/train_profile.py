"""Where a training step's time goes, layer by layer, in the model rather than alone.

    python benchmarks/train_profile.py [--model resnet50] [--batch 8] [--steps 3]

Runs the train step of fastconv.bench (torchvision net, train mode, 112 px, SGD with momentum) for
fastconv (convert, channels_last) and torch eager channels_last, each under torch.profiler with
input shapes, and prints per step: the convolutions' forward and backward time per layer (keyed by
input and weight shape: ours as conv2d_fwd + bwd_input + bwd_weight, torch's as mkldnn_convolution
+ convolution_backward, which computes both gradients in one call) and the largest other operators.
A layer alone (`fastconv bench --ops conv_bwd`) can differ from the same layer in the model: torch's
separate input and weight gradient calls cost more than its joint one, and ours see other caches."""
import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastconv import bench  # noqa: E402

CONV_OPS = ("fastconv::conv2d_fwd", "fastconv::conv2d_bwd_input", "fastconv::conv2d_bwd_weight",
            "aten::mkldnn_convolution", "aten::convolution_backward")


def profile_steps(name, batch, impl, steps):
    step, _ = bench._train_setup(name, batch, impl)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in range(steps):
            step()
    layers = collections.defaultdict(lambda: [0.0, 0.0])  # (x shape, w shape) -> [fwd ms, bwd ms]
    backward = collections.defaultdict(float)  # our gradient calls: (op, first two shapes) -> ms
    for e in p.key_averages(group_by_input_shape=True):
        s = [tuple(v) for v in e.input_shapes[:3]]
        if e.key in ("fastconv::conv2d_fwd", "aten::mkldnn_convolution"):
            # ours: the kernel runs under the operator's autograd node, so take its total
            t = e.cpu_time_total if e.key.startswith("fastconv") else e.self_cpu_time_total
            layers[(s[0], s[1])][0] += t / steps / 1e3
        elif e.key == "aten::convolution_backward":
            layers[(s[1], s[2])][1] += e.cpu_time_total / steps / 1e3
        elif e.key in ("fastconv::conv2d_bwd_input", "fastconv::conv2d_bwd_weight"):
            backward[(e.key.split("_")[-1], s[0], s[1])] += e.self_cpu_time_total / steps / 1e3
    others = collections.Counter()
    for e in p.key_averages():
        if e.key not in CONV_OPS and not e.key.startswith("GeneratedBackwardFor_fastconv_conv2d_fwd_default"):
            others[e.key] += e.self_cpu_time_total / steps / 1e3
    return layers, backward, others


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours, ours_bwd, ours_other = profile_steps(args.model, args.batch, "fastconv", args.steps)
    ref, _, ref_other = profile_steps(args.model, args.batch, "torch eager channels_last", args.steps)
    print(f"{args.model}, batch {args.batch}, 112 px, ms per step (torch.profiler, {args.steps} steps)")
    print(f"convolutions: fastconv forward {sum(v[0] for v in ours.values()):.1f} + backward "
          f"{sum(ours_bwd.values()):.1f}; torch forward {sum(v[0] for v in ref.values()):.1f} + backward "
          f"{sum(v[1] for v in ref.values()):.1f}")
    print("forward per layer (input, weight): fastconv / torch; torch's backward of the layer")
    for (xs, ws), (tf, tb) in sorted(ref.items(), key=lambda kv: -sum(kv[1]))[:16]:
        print(f"  {str(xs):18s} {str(ws):20s} {ours.get((xs, ws), [0.0])[0]:7.2f} / {tf:7.2f}   {tb:7.2f}")
    print("fastconv's gradient calls (op, grad_out shape, weight or input shape)")
    for k, v in sorted(ours_bwd.items(), key=lambda kv: -kv[1])[:16]:
        print(f"  {k[0]:6s} {str(k[1]):18s} {str(k[2]):20s} {v:7.2f}")
    for label, other in (("fastconv", ours_other), ("torch", ref_other)):
        print(f"{label}: other operators {sum(other.values()):.1f} ms; largest:")
        for k, v in other.most_common(8):
            print(f"  {v:7.2f}  {k[:90]}")


if __name__ == "__main__":
    main()
