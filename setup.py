"""Build fastconv._C: C++ CPU kernels always; CUDA kernels when torch is a CUDA build and a CUDA
toolkit of the same major version is found (even with no GPU). One line says which, and why.

  pip install --no-build-isolation .      build against the installed torch (recommended)
  pip install .                           build in an isolated environment (pip fetches torch there)
  python setup.py build_ext --inplace     development build (what `make build` runs)

Environment:
  FASTCONV_CUDA=0/1        force the CUDA sources off / on (default: on when a toolkit is found)
  CUDA_HOME                the toolkit to use (else nvcc on PATH, /usr/local/cuda, /usr/local/cuda-*)
  TORCH_CUDA_ARCH_LIST     defaults to 9.0a (H100 / H200 with Hopper's wgmma); with 9.0a in the list
                           and no plain 9.0, the tensor-core kernels use wgmma on those GPUs
  MAX_JOBS                 parallel compile jobs (ninja)
  FASTCONV_DEBUG=1         -O0 -g
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "fastconv", "_version.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _toolkit_candidates():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    yield "/usr/local/cuda"
    yield from sorted(glob.glob("/usr/local/cuda-*"), reverse=True)


def _nvcc_release(home):
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_cuda():
    """(toolkit directory or None, the reason for the choice)."""
    if torch.version.cuda is None:
        return None, "torch is a CPU-only build"
    want = int(torch.version.cuda.split(".")[0])
    tried = []
    for home in dict.fromkeys(_toolkit_candidates()):
        if not os.path.isfile(os.path.join(home, "include", "crt", "host_defines.h")):
            tried.append(f"{home}: no CUDA headers")
            continue
        release = _nvcc_release(home)
        if release is None:
            tried.append(f"{home}: no working bin/nvcc")
        elif release[0] != want:
            tried.append(f"{home}: nvcc {release[0]}.{release[1]}, torch needs CUDA {want}.x")
        else:
            return home, f"nvcc {release[0]}.{release[1]} in {home}, torch CUDA {torch.version.cuda}"
    return None, "no usable CUDA toolkit (" + ("; ".join(tried) or "none found") + "); set CUDA_HOME"


def want_cuda():
    env = os.environ.get("FASTCONV_CUDA", "").strip()
    if env == "0":
        print("fastconv: building CPU-only (FASTCONV_CUDA=0)", flush=True)
        return False
    home, why = find_cuda()
    if home is None:
        if env == "1":
            sys.exit(f"fastconv: FASTCONV_CUDA=1 but {why}")
        print(f"fastconv: building CPU-only: {why} (FASTCONV_CUDA=1 makes this an error)", flush=True)
        return False
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home  # what torch's build helpers use, instead of their own guess
    print(f"fastconv: building the CPU and CUDA kernels ({why}; FASTCONV_CUDA=0 skips CUDA)", flush=True)
    return True


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
sources = rel([os.path.join(ROOT, "csrc", "ops.cpp"), os.path.join(ROOT, "csrc", "autocast.cpp")] +
              glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
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

# The extension links against this torch's C++ ABI: require the same release at run time.
TORCH_RELEASE = torch.__version__.split("+")[0]

setup(
    ext_modules=[Extension("fastconv._C", sources, include_dirs=include_dirs,
                           extra_compile_args=compile_args, **ext_kwargs)],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    install_requires=[f"torch=={TORCH_RELEASE}", "numpy"],
    zip_safe=False,
)
