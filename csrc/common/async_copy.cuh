// Asynchronous global -> shared copies (cp.async, sm_80+), the interface kernels use to prefetch
// the next tile while they compute on the current one (csrc/emu/README.md: no raw PTX in kernels).
//
//   cp_async_16(dst, src, valid)  one 16-byte copy, both addresses 16-byte aligned, dst in shared
//                                 memory; valid == false writes 16 zero bytes and reads nothing
//                                 (cp.async's src-size 0: the zero fill of rows past the end)
//   cp_async_commit()             the thread's copies issued since the last commit form a group
//   cp_async_wait<N>()            waits until at most N of the thread's committed groups are
//                                 still in flight (cp.async.wait_group N)
// A copy is visible to the issuing thread after the wait that covers it, and to other threads
// only after a __syncthreads that follows that wait.
//
// Under DLK_EMULATION (csrc/emu/cuda_emu_async.cpp) the copies really are deferred: the source
// bytes are read at issue and land in shared memory only at the wait that completes their group,
// so a read before the wait sees the 0xFF poison (NaN), as a missing wait would on the GPU.
#pragma once

#include <cstdint>

#include "common/dlk_cuda.cuh"

#ifdef DLK_EMULATION
namespace dlk_emu {
void async_copy_issue(void* dst, const void* src, bool valid);
void async_copy_commit();
void async_copy_wait(int groups_in_flight);
}  // namespace dlk_emu
#endif

namespace dlk {

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid = true) {
#ifdef DLK_EMULATION
  dlk_emu::async_copy_issue(dst, src, valid);
#else
  const uint32_t addr = uint32_t(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src),
               "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef DLK_EMULATION
  dlk_emu::async_copy_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef DLK_EMULATION
  dlk_emu::async_copy_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace dlk
