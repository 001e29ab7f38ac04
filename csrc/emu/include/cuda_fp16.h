// Emulation build: <cuda_fp16.h> is the CPU emulation layer (csrc/emu/cuda_emu.h).
#pragma once
#include "../cuda_emu.h"
