// Included by each kernel translation unit of the emulation build, after cuda_emu.h and before the
// kernel source: CUDA features the emulator does not implement become compile errors here
// ("attempt to use poisoned ...") instead of link errors or, worse, code that compiles and means
// something else on the CPU. Undeclared CUDA names (cudaMalloc, __half2, wmma, ...) fail anyway.
#pragma once

// Inline assembly (PTX): only behind a guarded fast path with an emulated twin, e.g.
//   #ifdef DLK_EMULATION  <portable C++>  #else  asm volatile(...);  #endif
// (`__asm__` cannot be poisoned: the C library headers use it; PTX in it fails to assemble.)
#pragma GCC poison asm
// Pre-Volta warp intrinsics without a mask: use the *_sync forms.
#pragma GCC poison __shfl __shfl_up __shfl_down __shfl_xor __any __all __ballot
// Cooperative groups (grid/cluster sync, tiled partitions) are not emulated.
#pragma GCC poison cooperative_groups
// Warp-level features outside the emulated set.
#pragma GCC poison __match_any_sync __match_all_sync __reduce_add_sync __reduce_min_sync \
    __reduce_max_sync __syncthreads_count __syncthreads_and __syncthreads_or
// Textures and surfaces.
#pragma GCC poison tex1D tex2D tex3D tex1Dfetch tex1DLayered tex2DLayered texCubemap tex2Dgather \
    surf1Dread surf1Dwrite surf2Dread surf2Dwrite surf3Dread surf3Dwrite \
    cudaCreateTextureObject cudaDestroyTextureObject cudaTextureObject_t cudaSurfaceObject_t
// Host synchronization has no place in library code (it stalls the stream and breaks graphs).
#pragma GCC poison cudaDeviceSynchronize cudaStreamSynchronize cudaThreadSynchronize
