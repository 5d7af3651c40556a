"""argparse types shared by the `fastconv` subcommands: a bad value is a usage error (exit status 2)
naming the option, as in any argparse tool."""
import argparse


def device(text):
    """'cpu' or 'cuda[:N]' (a CUDA device only where torch sees one) -> the normalized name."""
    import torch
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        d = None
    if d is None or d.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device fastconv runs on: use cpu or cuda[:N]")
    if d.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA device here")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: there are {torch.cuda.device_count()} CUDA devices")
    return str(d)


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return v


def backend(text):
    from fastconv import backends
    if text not in backends.names():
        raise argparse.ArgumentTypeError(f"{text!r} is not a backend: choose from {', '.join(backends.names())}")
    return text


def torchvision_models(text):
    """Comma-separated torchvision classification model names (resnet50, vgg16, ...), checked."""
    import torchvision
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = set(torchvision.models.list_models(module=torchvision.models))
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: not torchvision classification models: {', '.join(bad) or '(none)'}")
    return ",".join(names)
