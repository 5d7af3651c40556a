"""fastconv (or python -m fastconv) info | bench [--quick] [--json FILE] | demo [--quick] [...] |
check [--device D] [...]. Exit status: 0 on success, 1 when a check fails, 2 on a usage error."""
import argparse
import sys

from fastconv import _cli


def main(argv=None):
    from fastconv import __version__
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, build flags, CPU features and code path, threads, CUDA build")
    bench = sub.add_parser("bench", help="time fastconv against torch on the layer suite")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--device", default="cpu", type=_cli.device, help="cpu or cuda[:N]")
    bench.add_argument("--ops", default=None,
                       help="comma-separated groups out of conv, conv_bwd, memory, block (SORT bottleneck), "
                            "models (ResNet-18/50 at batch 1 and --batch), train (ResNet-18/50 training steps "
                            "against torch eager and torch.compile, CPU), peers (whole-network inference against "
                            "ONNX Runtime, OpenVINO and torch.compile with freezing, CPU), pointwise (ResNet-50's "
                            "1x1 layers, forward + both gradients against oneDNN, batch 8 and 32, CPU); default: all "
                            "but models, train, peers and pointwise")
    bench.add_argument("--batch", type=_cli.positive_int, default=None, help="batch size (default 8 on CPU, 128 on CUDA)")
    bench.add_argument("--models", type=_cli.torchvision_models, default=None,
                       help="comma-separated torchvision nets for --ops peers (default resnet18,resnet50,alexnet)")
    bench.add_argument("--no-compile", action="store_true",
                       help="no torch.compile peer (memory-bound ops, training steps)")
    from fastconv import demo as demo_mod
    demo_mod.add_arguments(sub.add_parser("demo", help="train on digits, benchmark nets, write a report",
                                          description=demo_mod.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    from fastconv import check as check_mod
    check_mod.add_arguments(sub.add_parser("check", help="randomized cross-checks of every operator against torch",
                                           description=check_mod.__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.cmd == "check":
        return check_mod.main_args(args)
    if args.cmd == "info":
        import fastconv
        for k, v in fastconv.info().items():
            print(f"{k:14s} {v}")
        return 0
    if args.cmd == "demo":
        return demo_mod.main(args)
    from fastconv import bench as bench_mod
    return bench_mod.main(args)


if __name__ == "__main__":
    sys.exit(main())
