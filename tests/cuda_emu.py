"""Builds and loads the host emulation of the CUDA kernels (csrc/tests/cuda_emu): the kernel files
csrc/cuda/*_kernels.cu compiled as C++ for the CPU, every `<<<...>>>` launch rewritten into the
emulator's call and every `extern __shared__` array into the launch's dynamic shared memory. Cached under build/cuda_emu by a hash of the sources.

  lib = cuda_emu.load()      # ctypes.CDLL, or raises RuntimeError (no compiler, build failed)
"""
import ctypes
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMU = ROOT / "csrc" / "tests" / "cuda_emu"
KERNELS = ["conv2d_kernels", "conv2d_tc_kernels", "pool_kernels", "eltwise_kernels"]
_LAUNCH = re.compile(r"<<<(.*?)>>>\(")
_DYNAMIC_SHARED = re.compile(r"extern __shared__ (?:__align__\(\d+\) )?unsigned char (\w+)\[\];")
_LIB = []

# The C interface of emu_main.cpp. i: int, l: int64, d: double, p: pointer, a: int64 array (a tensor's
# sizes and strides, or parameters).
_CTYPES = {"i": ctypes.c_int, "l": ctypes.c_int64, "d": ctypes.c_double, "p": ctypes.c_void_p,
           "a": ctypes.POINTER(ctypes.c_int64)}
SIGNATURES = {
    "emu_take_error": (ctypes.c_char_p, ""),
    "emu_launches": (ctypes.c_long, ""),
    "emu_set_arch": (None, "i"),
    "emu_fastdiv_check": (ctypes.c_long, "ll"),
    "emu_conv_path": (ctypes.c_int, "iaaaai"),
    "emu_conv_fwd": (None, "ipapapaappppiidiii"),
    "emu_conv_bwd_input": (None, "ipapapaa"),
    "emu_conv_bwd_weight_workspace": (ctypes.c_int64, "iaaaaii"),
    "emu_conv_bwd_weight": (None, "ipapapaapii"),
    "emu_conv_bwd_bias_workspace": (ctypes.c_int64, "iai"),
    "emu_conv_bwd_bias": (None, "ipappi"),
    "emu_max_pool_fwd": (None, "ipapapa"),
    "emu_max_pool_bwd": (None, "ipappap"),
    "emu_avg_pool_fwd": (None, "ipapaa"),
    "emu_avg_pool_bwd": (None, "ipapaa"),
    "emu_adaptive_fwd": (None, "ipapa"),
    "emu_adaptive_bwd": (None, "ipapa"),
    "emu_relu_fwd": (None, "ippl"),
    "emu_relu_bwd": (None, "ipppl"),
    "emu_sort_fwd": (None, "ippplid"),
    "emu_sort_bwd": (None, "ippppplid"),
}


def _sources():
    files = [ROOT / "csrc" / "cuda" / f"{k}.cu" for k in KERNELS]
    files += [ROOT / "csrc" / "cuda" / "common.cuh", ROOT / "csrc" / "include" / "fastconv" / "cuda_kernels.h",
              ROOT / "csrc" / "include" / "fastconv" / "common.h", ROOT / "csrc" / "cuda" / "wgmma_ops.cuh"]
    return files + sorted(EMU.rglob("*.h")) + sorted(EMU.rglob("*.cpp"))


def _build(out):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler for the CUDA emulation")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        flags = ["-std=c++20", "-O1", "-fPIC", "-pthread", "-w", *os.environ.get("FASTCONV_EMU_CXXFLAGS", "").split(), "-I", str(EMU / "include"), "-I", str(EMU),
                 "-I", str(ROOT / "csrc" / "cuda"), "-I", str(ROOT / "csrc" / "include"),
                 "-include", str(EMU / "emu_shim.h"), "-DFASTCONV_SM90A"]
        srcs = []
        for k in KERNELS:
            text = (ROOT / "csrc" / "cuda" / f"{k}.cu").read_text()
            dst = tmp / f"{k}.cpp"
            text = _DYNAMIC_SHARED.sub(r"unsigned char* \1 = emu_dynamic_shared();", text)
            dst.write_text(_LAUNCH.sub(r" | EmuLaunch(\1).call(", text))
            srcs.append(dst)
        srcs.append(EMU / "emu_main.cpp")
        procs = [subprocess.Popen([cxx, *flags, "-c", str(s), "-o", str(tmp / (s.stem + ".o"))],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in srcs]
        errors = [p.communicate()[0] for p in procs if p.wait() != 0]
        if errors:
            raise RuntimeError("CUDA emulation build failed:\n" + "\n".join(errors)[-4000:])
        lib = tmp / "libfastconv_cuda_emu.so"
        subprocess.run([cxx, "-shared", "-pthread", *os.environ.get("FASTCONV_EMU_CXXFLAGS", "").split(), *map(str, tmp.glob("*.o")), "-o", str(lib)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(lib), str(out))


def load():
    if _LIB:
        return _LIB[0]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in _sources()) +
                            os.environ.get("FASTCONV_EMU_CXXFLAGS", "").encode()).hexdigest()[:16]
    out = ROOT / "build" / "cuda_emu" / f"libfastconv_cuda_emu_{digest}.so"
    if not out.exists():
        _build(out)
    lib = ctypes.CDLL(str(out))
    for name, (restype, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = [_CTYPES[a] for a in args]
    _LIB.append(lib)
    return lib
