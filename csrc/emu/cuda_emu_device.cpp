// The emulated device: dynamic shared memory limits and opt-in, occupancy, the error state of the
// runtime API and __trap (cuda_emu_runtime.h).
#include "emu/cuda_emu_runtime.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace dlk_emu {
namespace rt {

namespace {

constexpr std::size_t kMaxDynamicSmem = 48 * 1024;  // without a cudaFuncSetAttribute opt-in
// The opt-in maximum of the emulated device: 99 KiB, the smallest of the sm_80+ GPUs (sm_86/89;
// sm_80 allows 163 KiB, sm_90 227 KiB), so a kernel that runs here fits on every one of them.
constexpr std::size_t kMaxDynamicSmemOptin = 99 * 1024;

// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel address (set by cudaFuncSetAttribute).
std::mutex g_attr_mutex;
std::map<const void*, std::size_t>& smem_optin() {
  static std::map<const void*, std::size_t> m;
  return m;
}

}  // namespace

std::size_t max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  const auto it = smem_optin().find(kernel);
  return it == smem_optin().end() ? kMaxDynamicSmem : std::max(kMaxDynamicSmem, it->second);
}

}  // namespace rt

using namespace rt;

void* dynamic_shared_memory_raw() {
  Worker& me = current_worker("dynamic shared memory");
  return me.pool->launch->dyn_smem;
}

void trap(const char* file, int line) {
  Worker& me = current_worker("__trap");
  Launch& L = *me.pool->launch;
  fail(L, "thread " + std::to_string(me.index) + " called __trap() at " + file + ":" + std::to_string(line));
  throw Abort{};
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (kernel == nullptr || bytes < 0 || std::size_t(bytes) > kMaxDynamicSmemOptin) {
    t_last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  smem_optin()[kernel] = std::size_t(bytes);
  return cudaSuccess;
}

cudaError_t get_last_error(bool clear) {
  const cudaError_t err = t_last_error;
  if (clear) t_last_error = cudaSuccess;
  return err;
}

const char* error_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

// Resident blocks per SM on the emulated device: DLK_EMU_BLOCKS_PER_SM (default 1) within the
// real limits (2048 threads, 32 blocks per SM). One block per SM keeps grids small, so small test
// inputs already run the grid-stride loops and multi-row partial sums of the kernels.
int occupancy(int threads, std::size_t smem) {
  if (threads < 1 || threads > 1024 || smem > kMaxDynamicSmem) return 0;
  const long wanted = std::max(1L, env_long("DLK_EMU_BLOCKS_PER_SM", 1));
  return int(std::min<long>({wanted, 2048 / threads, 32}));
}

}  // namespace dlk_emu
