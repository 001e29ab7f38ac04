// Runtime of the CUDA CPU emulation (declarations and the supported subset: cuda_emu.h, README.md).
// This header: the internals its translation units share. They are
//   cuda_emu_scheduler.cpp  the worker pool, the block scheduler, the launch and __syncthreads
//   cuda_emu_warp.cpp       warp shuffles, votes, __syncwarp and __activemask
//   cuda_emu_symbols.cpp    the module's symbol table: static __shared__ objects, kernel names
//   cuda_emu_device.cpp     the emulated device: shared-memory limits, occupancy, errors, __trap
//
// Thread model. A persistent pool holds one real (pthread) worker per thread of the largest block
// launched so far. Blocks run one after another (descending linear block index). The workers of a
// block run ONE AT A TIME: the running thread holds a token and hands it on when it blocks, at a
// __syncthreads, a warp shuffle/vote/__syncwarp, or when it exits. The next thread is the next
// runnable one in a per-phase order (a seeded shuffle of the thread indices, drawn again after
// every completed __syncthreads), so the interleaving is deterministic yet adversarial: a missing
// __syncthreads makes some thread read shared memory that its writer has not written yet, which
// holds the 0xFF poison (NaN) put there at the start of the block.
//
// Because exactly one thread runs, the scheduler always knows whether anyone can make progress:
// no runnable thread while some have not exited is a deadlock, reported with what every thread
// waits on. Rules enforced (each a std::runtime_error from the launch, naming the kernel):
//  * __syncthreads completes when every thread of the block waits at the SAME __syncthreads call
//    site; a thread that exited never arrives (the programming guide makes a barrier that not all
//    threads reach undefined), and waiting at different call sites is a divergent barrier.
//  * a shuffle/vote completes when every lane of its mask waits with the same mask; the calling
//    lane must be in its mask, all lanes must do the same operation and width, and a shuffle must
//    not read a lane outside the mask.
// Errors unwind every emulated thread (an Abort exception from its wait) before the launch throws.
// A thread that never synchronizes again (an infinite loop) cannot be stopped: after
// DLK_EMU_TIMEOUT_S seconds (default 20) without a hand-over the launch throws and the pool is
// abandoned to that thread.
#pragma once

#include "emu/cuda_emu.h"

#ifndef __linux__
#error "the CUDA emulation runtime needs Linux (futexes, ELF symbol tables via dladdr1)"
#endif

#include <linux/futex.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dlk_emu {
namespace rt {

// ---- a one-shot wake-up signal (a futex word) ------------------------------------------------
class Baton {
 public:
  void post() {
    flag_.store(1, std::memory_order_release);
    syscall(SYS_futex, &flag_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }
  // Waits for post(); false after `timeout_ms` without one (timeout_ms < 0: forever).
  bool wait(long timeout_ms = -1) {
    for (;;) {
      if (flag_.exchange(0, std::memory_order_acquire) == 1) return true;
      timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000};
      syscall(SYS_futex, &flag_, FUTEX_WAIT_PRIVATE, 0, timeout_ms < 0 ? nullptr : &ts, nullptr, 0);
      if (timeout_ms >= 0 && flag_.load(std::memory_order_relaxed) == 0) {
        return flag_.exchange(0, std::memory_order_acquire) == 1;
      }
    }
  }

 private:
  std::atomic<unsigned> flag_{0};
};

struct Abort {};  // unwinds an emulated thread; deliberately not a std::exception

enum class St : unsigned char { Ready, Barrier, Warp, Exited };

struct Site {
  const char* what = "";
  const char* file = "";
  int line = 0;
};

struct Launch;
struct Pool;

struct Worker {
  Baton baton;
  Pool* pool = nullptr;
  int index = 0;  // linear thread index within the block
  // Below: touched only by the token holder.
  St st = St::Exited;
  Site site;
  WarpOp op = WarpOp::SyncWarp;
  unsigned mask = 0;
  std::uint64_t value = 0, result = 0;
  int b = 0, width = 32;
};

enum class Order { Random, Forward, Reverse };

struct Launch {
  KernelCall call{};
  dim3 grid, block;
  int nthreads = 0;
  std::size_t smem = 0;
  std::uint64_t nblocks = 0, blocks_done = 0, block_lin = 0;
  uint3 block_idx{0, 0, 0};
  // per block
  int ready = 0, exited = 0, arrived = 0;
  std::uint64_t phase = 0;
  std::vector<int> order, pos;  // run order of the thread indices, and its inverse
  Order policy = Order::Random;
  std::uint64_t seed = 0;
  unsigned char* dyn_smem = nullptr;
  bool aborting = false;
  std::string error;
  std::atomic<std::uint64_t> handovers{0};
  std::atomic<int> current{-1};
};

struct Pool {
  std::vector<std::unique_ptr<Worker>> workers;
  Launch* launch = nullptr;
  Baton done;  // the launching thread waits here (in the pool: a Launch may be gone when it wakes)
  pid_t pid = getpid();
  Worker& w(int i) { return *workers[std::size_t(i)]; }
};

inline thread_local Worker* t_worker = nullptr;  // the emulated thread running on this one
inline thread_local cudaError_t t_last_error = cudaSuccess;

// ---- symbols of this module (cuda_emu_symbols.cpp) ----------------------------------------------
struct FuncSym {
  std::uintptr_t addr, size;
  std::string name;
};
struct ModuleSymbols {
  std::vector<std::pair<unsigned char*, std::size_t>> shared;  // every __shared__ object
  std::vector<FuncSym> funcs;                                  // sorted by address
  bool have_symtab = false;
};

const ModuleSymbols& module_symbols();
std::string kernel_name(const KernelCall& call);  // demangled, or the launch expression

// ---- scheduling (cuda_emu_scheduler.cpp) ---------------------------------------------------------
long env_long(const char* name, long fallback);
std::string hex(unsigned v);
std::string site_str(const Site& s);
// Records the first error of the launch; every thread then unwinds.
void fail(Launch& L, const std::string& what);
// What every thread of the block is doing, one line per run of threads in the same state.
std::string state_report(Launch& L, Pool& pool);
// The running emulated thread (throws std::logic_error outside a kernel).
Worker& current_worker(const char* what);
// The token holder `me` has set its state; run someone else until `me` is runnable again.
void switch_from(Launch& L, Pool& pool, Worker& me, int start);

// ---- cp.async (cuda_emu_async.cpp) ----------------------------------------------------------------
// Drops the calling worker's copies in flight: called before it runs a thread of a new block.
void reset_async_copies();

// ---- the emulated device (cuda_emu_device.cpp) --------------------------------------------------
// The dynamic shared memory a launch of `kernel` may use (48 KiB unless opted in to more).
std::size_t max_dynamic_smem(const void* kernel);

}  // namespace rt
}  // namespace dlk_emu
