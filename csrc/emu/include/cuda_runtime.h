// Emulation build: <cuda_runtime.h> is the CPU emulation layer (csrc/emu/cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
