"""Build fastconv._C: C++ CPU kernels always; CUDA kernels when torch is a CUDA build and nvcc exists.

Environment:
  FASTCONV_CUDA=0/1        force the CUDA sources off / on (default: on when possible, even with no GPU)
  TORCH_CUDA_ARCH_LIST     defaults to 9.0a (H100 / H200 with Hopper's wgmma); with 9.0a in the list
                           and no plain 9.0, the tensor-core kernels use wgmma on those GPUs
  FASTCONV_DEBUG=1         -O0 -g
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    env = os.environ.get("FASTCONV_CUDA", "").strip()
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if env == "0":
        return False
    if env == "1":
        if not possible:
            sys.exit("FASTCONV_CUDA=1 but torch is not a CUDA build or nvcc was not found "
                     "(set CUDA_HOME)")
        return True
    return possible


def with_wgmma():
    # The wgmma kernels exist only in sm_90a machine code. A fatbinary with both sm_90 and sm_90a code
    # would leave the choice between them to the driver, so they are built only without plain 9.0.
    archs = [a.split("+")[0] for a in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "")) if a]
    return "9.0a" in archs and "9.0" not in archs


def cuda_include_dirs():
    # pip's CUDA wheels ship headers (cusparse.h, ...) that a minimal system toolkit may lack.
    dirs = []
    for site in sys.path:
        cand = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(cand):
            dirs.append(cand)
    return dirs[:1]


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


with_cuda = want_cuda()
debug = os.environ.get("FASTCONV_DEBUG") == "1"
opt = ["-O0", "-g"] if debug else ["-O3"]
cxx_flags = opt + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fno-math-errno",
                   f'-DFASTCONV_VERSION="{VERSION}"']
sources = rel([os.path.join(ROOT, "csrc", "ops.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
include_dirs = [os.path.join(ROOT, "csrc", "include")]
ext_kwargs = dict(extra_link_args=["-fopenmp"])

if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")) +
                   glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    include_dirs += cuda_include_dirs()
    cxx_flags.append("-DFASTCONV_WITH_CUDA")
    nvcc_flags = opt + ["-DFASTCONV_WITH_CUDA", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17"]
    if with_wgmma():
        nvcc_flags.append("-DFASTCONV_SM90A")
    Extension = cpp_extension.CUDAExtension
    compile_args = {"cxx": cxx_flags, "nvcc": nvcc_flags}
else:
    Extension = cpp_extension.CppExtension
    compile_args = {"cxx": cxx_flags}

flags_summary = " ".join(f for f in cxx_flags if not f.startswith("-DFASTCONV_VERSION"))
flags_summary += " cuda=" + ("on arch=" + os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "off")
if with_cuda:
    flags_summary += " tc=" + ("wgmma+wmma" if with_wgmma() else "wmma")
compile_args["cxx"] = compile_args["cxx"] + [f'-DFASTCONV_BUILD_FLAGS="{flags_summary}"']

setup(
    name="fastconv",
    version=VERSION,
    description="Hand-written C++/CUDA kernels for 2-D convolution, pooling, ReLU and SORT as torch ops",
    packages=find_packages(include=["fastconv", "fastconv.*"]),
    ext_modules=[Extension("fastconv._C", sources, include_dirs=include_dirs,
                           extra_compile_args=compile_args, **ext_kwargs)],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.10",
    install_requires=["torch", "numpy"],
    zip_safe=False,
)
