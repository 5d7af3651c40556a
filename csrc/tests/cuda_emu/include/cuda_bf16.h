// Stand-in for the CUDA header under the host emulation (csrc/tests/cuda_emu/emu_shim.h).
#pragma once
#include "emu_shim.h"
