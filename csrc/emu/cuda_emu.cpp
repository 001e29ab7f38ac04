// Runtime of the CUDA CPU emulation (declarations and the supported subset: cuda_emu.h, README.md).
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
#include "emu/cuda_emu.h"

#ifndef __linux__
#error "the CUDA emulation runtime needs Linux (futexes, ELF symbol tables via dladdr1)"
#endif

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <vector>

namespace dlk_emu {
namespace {

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

thread_local Worker* t_worker = nullptr;
thread_local cudaError_t t_last_error = cudaSuccess;
std::mutex g_launch_mutex;  // one launch at a time, process-wide
Pool* g_pool = nullptr;     // leaked on purpose: workers sleep in it until the process exits

// ---- symbols of this module: static __shared__ variables and kernel names ---------------------
struct FuncSym {
  std::uintptr_t addr, size;
  std::string name;
};
struct ModuleSymbols {
  std::vector<std::pair<unsigned char*, std::size_t>> shared;  // every __shared__ object
  std::vector<FuncSym> funcs;                                  // sorted by address
  bool have_symtab = false;
};

const ModuleSymbols& module_symbols() {
  static const ModuleSymbols syms = [] {
    ModuleSymbols s;
    Dl_info info;
    link_map* lm = nullptr;
    if (!dladdr1(reinterpret_cast<void*>(&module_symbols), &info, reinterpret_cast<void**>(&lm),
                 RTLD_DL_LINKMAP) || lm == nullptr) {
      return s;
    }
    const std::string path = (lm->l_name && lm->l_name[0]) ? lm->l_name : "/proc/self/exe";
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return s;
    struct stat stbuf;
    void* map = MAP_FAILED;
    if (fstat(fd, &stbuf) == 0) map = mmap(nullptr, std::size_t(stbuf.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return s;
    const auto* base = static_cast<const unsigned char*>(map);
    const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
    if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_shoff == 0) return s;
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
    // Prefer the full symbol table; the dynamic one lacks internal-linkage symbols.
    for (unsigned type : {unsigned(SHT_SYMTAB), unsigned(SHT_DYNSYM)}) {
      for (unsigned i = 0; i < eh->e_shnum; ++i) {
        if (sh[i].sh_type != type) continue;
        s.have_symtab = type == SHT_SYMTAB;
        const auto* sym = reinterpret_cast<const ElfW(Sym)*>(base + sh[i].sh_offset);
        const char* strtab = reinterpret_cast<const char*>(base + sh[sh[i].sh_link].sh_offset);
        const std::size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
        for (std::size_t k = 0; k < n; ++k) {
          if (sym[k].st_shndx == SHN_UNDEF || sym[k].st_size == 0) continue;
          const char* name = strtab + sym[k].st_name;
          const unsigned kind = ELF64_ST_TYPE(sym[k].st_info);
          if (kind == STT_OBJECT && std::strstr(name, "B10dlk_shared")) {
            s.shared.emplace_back(reinterpret_cast<unsigned char*>(lm->l_addr + sym[k].st_value),
                                  std::size_t(sym[k].st_size));
          } else if (kind == STT_FUNC) {
            s.funcs.push_back({std::uintptr_t(lm->l_addr + sym[k].st_value), std::uintptr_t(sym[k].st_size), name});
          }
        }
      }
      if (!s.funcs.empty()) break;
    }
    munmap(map, std::size_t(stbuf.st_size));
    std::sort(s.shared.begin(), s.shared.end());
    s.shared.erase(std::unique(s.shared.begin(), s.shared.end()), s.shared.end());
    std::sort(s.funcs.begin(), s.funcs.end(), [](const FuncSym& a, const FuncSym& b) { return a.addr < b.addr; });
    if (!s.have_symtab) {
      std::fprintf(stderr, "dlkern CUDA emulator: %s has no symbol table (stripped?): static __shared__ "
                   "variables with internal linkage are not poisoned\n", path.c_str());
    }
    return s;
  }();
  return syms;
}

// "void dlk::(anonymous namespace)::k<float, 1>(float const*, int)" -> "dlk::k<float, 1>"
std::string tidy_function_name(std::string name) {
  const std::string anon = "(anonymous namespace)::";
  for (std::size_t p; (p = name.find(anon)) != std::string::npos;) name.erase(p, anon.size());
  if (!name.empty() && name.back() == ')') {
    int depth = 0;
    for (std::size_t i = name.size(); i-- > 0;) {
      depth += name[i] == ')' ? 1 : name[i] == '(' ? -1 : 0;
      if (depth == 0) {
        name.resize(i);
        break;
      }
    }
  }
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  return name;
}

std::string kernel_name(const KernelCall& call) {
  const auto& funcs = module_symbols().funcs;
  const auto addr = reinterpret_cast<std::uintptr_t>(call.kernel);
  auto it = std::upper_bound(funcs.begin(), funcs.end(), addr,
                             [](std::uintptr_t a, const FuncSym& f) { return a < f.addr; });
  if (it != funcs.begin() && addr < (it - 1)->addr + (it - 1)->size) {
    int status = 0;
    char* demangled = abi::__cxa_demangle((it - 1)->name.c_str(), nullptr, nullptr, &status);
    std::string name = status == 0 && demangled ? demangled : (it - 1)->name;
    std::free(demangled);
    return tidy_function_name(name);
  }
  return call.expr;
}

// ---- helpers ----------------------------------------------------------------------------------
long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 0);
  return end && *end == '\0' ? x : fallback;
}

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string dim_str(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string site_str(const Site& s) {
  return std::string(s.what) + " at " + s.file + ":" + std::to_string(s.line);
}

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && std::strcmp(a.file, b.file) == 0 && std::strcmp(a.what, b.what) == 0;
}

bool is_shuffle(WarpOp op) {
  return op == WarpOp::ShflIdx || op == WarpOp::ShflUp || op == WarpOp::ShflDown || op == WarpOp::ShflXor;
}

// Records the first error of the launch; every thread then unwinds.
void fail(Launch& L, const std::string& what) {
  if (L.aborting) return;
  L.aborting = true;
  L.error = what;
}

// ---- scheduling (all of it runs on the token holder) ------------------------------------------
void make_order(Launch& L) {
  const int n = L.nthreads;
  for (int i = 0; i < n; ++i) L.order[std::size_t(i)] = L.policy == Order::Reverse ? n - 1 - i : i;
  if (L.policy == Order::Random) {
    std::uint64_t state = L.seed ^ (L.block_lin * 0x100000001b3ull) ^ (L.phase << 40);
    for (int i = n - 1; i > 0; --i) {
      std::swap(L.order[std::size_t(i)], L.order[std::size_t(splitmix64(state) % std::uint64_t(i + 1))]);
    }
  }
  for (int i = 0; i < n; ++i) L.pos[std::size_t(L.order[std::size_t(i)])] = i;
}

void poison_shared_memory(Launch& L) {
  for (const auto& [ptr, size] : module_symbols().shared) std::memset(ptr, 0xff, size);
  if (L.dyn_smem) std::memset(L.dyn_smem, 0xff, L.smem);
}

void start_block(Launch& L, Pool& pool) {
  L.block_lin = L.nblocks - 1 - L.blocks_done;  // descending: blocks may not rely on an order
  const std::uint64_t gx = L.grid.x, gy = L.grid.y;
  L.block_idx = uint3{unsigned(L.block_lin % gx), unsigned(L.block_lin / gx % gy), unsigned(L.block_lin / (gx * gy))};
  poison_shared_memory(L);
  for (int i = 0; i < L.nthreads; ++i) pool.w(i).st = St::Ready;
  L.ready = L.nthreads;
  L.exited = L.arrived = 0;
  L.phase = 0;
  make_order(L);
}

void hand(Launch& L, Worker& next) {
  L.current.store(next.index, std::memory_order_relaxed);
  L.handovers.fetch_add(1, std::memory_order_relaxed);
  next.baton.post();
}

void finish(Launch& L, Pool& pool) {
  L.current.store(-1, std::memory_order_relaxed);
  pool.done.post();
}

// The first thread from order position `start` on (cyclically) whose state passes `ok`, or -1.
template <typename Pred>
int find_in_order(Launch& L, Pool& pool, int start, Pred ok) {
  const int n = L.nthreads;
  for (int k = 0; k < n; ++k) {
    const int i = L.order[std::size_t((start + k) % n)];
    if (ok(pool.w(i).st)) return i;
  }
  return -1;
}

std::string thread_range(const Launch& L, int first, int last) {
  auto idx = [&](int i) {
    if (L.block.y == 1 && L.block.z == 1) return std::to_string(i);
    return std::to_string(i) + " (" + std::to_string(i % L.block.x) + "," +
           std::to_string(i / L.block.x % L.block.y) + "," + std::to_string(i / (L.block.x * L.block.y)) + ")";
  };
  return first == last ? "thread " + idx(first) : "threads " + idx(first) + "-" + idx(last);
}

std::string describe(Launch& L, Pool& pool, int i) {
  const Worker& w = pool.w(i);
  switch (w.st) {
    case St::Ready: return "runnable";
    case St::Exited: return "exited";
    case St::Barrier: return "waits in " + site_str(w.site);
    case St::Warp: {
      const int base = i & ~31;
      unsigned missing = 0;
      for (int j = 0; j < 32; ++j) {
        if (!(w.mask >> j & 1u) || base + j >= L.nthreads) continue;
        const Worker& o = pool.w(base + j);
        if (o.st != St::Warp || o.mask != w.mask) missing |= 1u << j;
      }
      return "waits in " + site_str(w.site) + " with mask " + hex(w.mask) + " (warp " +
             std::to_string(i / 32) + "; lanes not there with that mask: " + hex(missing) + ")";
    }
  }
  return "?";
}

std::string state_report(Launch& L, Pool& pool) {
  std::string out;
  int lines = 0;
  for (int i = 0; i < L.nthreads;) {
    const std::string d = describe(L, pool, i);
    int j = i;
    while (j + 1 < L.nthreads && describe(L, pool, j + 1) == d) ++j;
    if (++lines > 24) {
      out += "\n  ...";
      break;
    }
    out += "\n  " + thread_range(L, i, j) + ": " + d;
    i = j + 1;
  }
  return out;
}

// Who runs after the token holder changed its state: the first eligible thread from order
// position `start` on. Handles the end of a block (starts the next one or finishes the launch)
// and deadlocks. Returns the next runner, or nullptr when the launch is over (the launching
// thread has been woken).
Worker* next_runner(Launch& L, Pool& pool, int start) {
  for (;;) {
    if (L.aborting) {
      const int j = find_in_order(L, pool, start, [](St s) { return s != St::Exited; });
      if (j >= 0) return &pool.w(j);
      finish(L, pool);
      return nullptr;
    }
    if (L.ready > 0) return &pool.w(find_in_order(L, pool, start, [](St s) { return s == St::Ready; }));
    if (L.exited == L.nthreads) {
      if (++L.blocks_done == L.nblocks) {
        finish(L, pool);
        return nullptr;
      }
      start_block(L, pool);
      return &pool.w(L.order[0]);
    }
    fail(L, "deadlock: no thread can proceed" + state_report(L, pool));
  }
}

Worker& current_worker(const char* what) {
  if (t_worker == nullptr) {
    throw std::logic_error(std::string("dlkern CUDA emulator: ") + what + " called outside a kernel");
  }
  return *t_worker;
}

// The token holder `me` has set its state; run someone else until `me` is runnable again.
void switch_from(Launch& L, Pool& pool, Worker& me, int start) {
  Worker* next = next_runner(L, pool, start);
  if (next != &me) {
    if (next) hand(L, *next);
    me.baton.wait();
  }
  if (L.aborting) throw Abort{};
}

std::string launch_header(const Launch& L) {
  return "dlkern CUDA emulator: kernel " + kernel_name(L.call) + " (launched as '" + L.call.expr +
         "' at " + L.call.file + ":" + std::to_string(L.call.line) + ", grid " + dim_str(L.grid) +
         ", block " + dim_str(L.block) + ", " + std::to_string(L.smem) +
         " B dynamic shared memory) failed in block " + dim_str(dim3(L.block_idx)) + ": ";
}

void* worker_main(void* arg) {
  Worker& me = *static_cast<Worker*>(arg);
  t_worker = &me;
  for (;;) {
    me.baton.wait();
    Launch& L = *me.pool->launch;
    if (!L.aborting) {
      threadIdx = uint3{me.index % L.block.x, me.index / L.block.x % L.block.y,
                        me.index / (L.block.x * L.block.y)};
      blockIdx = L.block_idx;
      blockDim = L.block;
      gridDim = L.grid;
      try {
        L.call.run(L.call.bound);
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        fail(L, std::string("thread ") + std::to_string(me.index) + " threw: " + e.what());
      } catch (...) {
        fail(L, "thread " + std::to_string(me.index) + " threw an unknown exception");
      }
    }
    if (me.st == St::Ready) --L.ready;
    me.st = St::Exited;
    ++L.exited;
    Worker* next = next_runner(L, *me.pool, L.pos[std::size_t(me.index)] + 1);
    if (next) hand(L, *next);
  }
  return nullptr;
}

Pool& get_pool(int nthreads) {
  if (g_pool == nullptr || g_pool->pid != getpid()) g_pool = new Pool();  // fresh after a fork
  Pool& pool = *g_pool;
  if (int(pool.workers.size()) >= nthreads) return pool;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
#if defined(__SANITIZE_ADDRESS__)
  pthread_attr_setstacksize(&attr, std::size_t(8) << 20);
#else
  pthread_attr_setstacksize(&attr, std::size_t(1) << 20);
#endif
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  while (int(pool.workers.size()) < nthreads) {
    auto w = std::make_unique<Worker>();
    w->pool = &pool;
    w->index = int(pool.workers.size());
    pthread_t th;
    if (pthread_create(&th, &attr, &worker_main, w.get()) != 0) {
      pthread_attr_destroy(&attr);
      throw std::runtime_error("dlkern CUDA emulator: cannot create worker thread " + std::to_string(w->index));
    }
    pool.workers.push_back(std::move(w));
  }
  pthread_attr_destroy(&attr);
  return pool;
}

bool valid_config(dim3 grid, dim3 block) {
  const std::uint64_t threads = std::uint64_t(block.x) * block.y * block.z;
  return block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 && block.y <= 1024 &&
         block.z <= 64 && threads <= 1024 && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 &&
         grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535;
}

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

std::size_t max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  const auto it = smem_optin().find(kernel);
  return it == smem_optin().end() ? kMaxDynamicSmem : std::max(kMaxDynamicSmem, it->second);
}

// The source lane of a shfl.sync for lane `j` (PTX semantics: a source outside the lane's
// segment of `width` lanes, or past the clamp, yields the lane's own value).
int shuffle_source(WarpOp op, int j, int b, int width) {
  const int segmask = (32 - width) & 31;
  const int clamp = op == WarpOp::ShflUp ? 0 : 31;
  const int min_lane = j & segmask, max_lane = min_lane | (clamp & ~segmask);
  long src = j;
  bool inside = false;
  switch (op) {
    case WarpOp::ShflUp: src = long(j) - b; inside = src >= max_lane; break;
    case WarpOp::ShflDown: src = long(j) + b; inside = src <= max_lane; break;
    case WarpOp::ShflXor: src = long(j ^ b); inside = src >= 0 && src <= max_lane; break;
    default: src = min_lane | ((b & 31) & ~segmask); inside = src <= max_lane; break;
  }
  return inside ? int(src) : j;
}

std::string lane_str(int thread, const Site& site) {
  return "thread " + std::to_string(thread) + " (warp " + std::to_string(thread / 32) + ", lane " +
         std::to_string(thread & 31) + ") in " + site_str(site);
}

// Checks the arguments of a warp operation; an error message, or empty.
std::string check_warp_args(const Launch& L, int index, WarpOp op, unsigned mask, int width, const Site& site) {
  const int lane = index & 31, base = index - lane;
  const int lanes = std::min(32, L.nthreads - base);
  const unsigned exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  if (!(mask >> lane & 1u)) {
    return lane_str(index, site) + ": the mask " + hex(mask) + " does not include the calling lane";
  }
  if (mask & ~exist) {
    return lane_str(index, site) + ": the mask " + hex(mask) + " names lanes that do not exist (this warp has " +
           std::to_string(lanes) + " threads)";
  }
  if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1)))) {
    return lane_str(index, site) + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]";
  }
  return {};
}

// Every lane of `mask` (warp starting at `base`) waits in `me`'s operation: compute all results
// (an error message, or empty).
std::string complete_warp_op(Pool& pool, int base, const Worker& me) {
  const unsigned mask = me.mask;
  std::uint64_t vote = 0;
  for (int j = 0; j < 32; ++j) {
    if (!(mask >> j & 1u)) continue;
    const Worker& o = pool.w(base + j);
    if (o.op != me.op || o.width != me.width) {
      return "the lanes of warp " + std::to_string(base / 32) + " with mask " + hex(mask) + " disagree: " +
             lane_str(me.index, me.site) + " (width " + std::to_string(me.width) + "), " +
             lane_str(o.index, o.site) + " (width " + std::to_string(o.width) + ")";
    }
    vote |= std::uint64_t(o.value != 0) << j;
  }
  for (int j = 0; j < 32; ++j) {
    if (!(mask >> j & 1u)) continue;
    Worker& o = pool.w(base + j);
    switch (me.op) {
      case WarpOp::Ballot: o.result = vote; break;
      case WarpOp::Any: o.result = vote != 0; break;
      case WarpOp::All: o.result = vote == mask; break;
      case WarpOp::SyncWarp: o.result = 0; break;
      default: {
        const int src = shuffle_source(me.op, j, o.b, o.width);
        if (!(mask >> src & 1u)) {
          return lane_str(o.index, o.site) + " reads lane " + std::to_string(src) +
                 ", which is not in the mask " + hex(mask) + " (an undefined value on the GPU)";
        }
        o.result = pool.w(base + src).value;
      }
    }
  }
  return {};
}

}  // namespace

// ---- entry points -----------------------------------------------------------------------------
void launch(const KernelCall& call, dim3 grid, dim3 block, std::size_t smem, cudaStream_t) {
  if (t_worker != nullptr) {
    throw std::runtime_error("dlkern CUDA emulator: a kernel launched " + std::string(call.expr) +
                             " (dynamic parallelism is not emulated)");
  }
  if (!valid_config(grid, block)) {
    t_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem > max_dynamic_smem(call.kernel)) {
    t_last_error = cudaErrorInvalidValue;
    return;
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  module_symbols();  // parse before timing anything
  auto L = std::make_unique<Launch>();
  L->call = call;
  L->grid = grid;
  L->block = block;
  L->nthreads = int(block.x * block.y * block.z);
  L->nblocks = std::uint64_t(grid.x) * grid.y * grid.z;
  L->smem = smem;
  L->order.resize(std::size_t(L->nthreads));
  L->pos.resize(std::size_t(L->nthreads));
  const char* policy = std::getenv("DLK_EMU_ORDER");
  L->policy = policy && std::strcmp(policy, "forward") == 0   ? Order::Forward
              : policy && std::strcmp(policy, "reverse") == 0 ? Order::Reverse
                                                              : Order::Random;
  L->seed = std::uint64_t(env_long("DLK_EMU_SEED", 0x5eed));
  std::unique_ptr<unsigned char[]> dyn;
  if (smem > 0) {
    dyn.reset(new (std::align_val_t(256)) unsigned char[smem]);  // exactly smem bytes, for ASan
    L->dyn_smem = dyn.get();
  }
  Pool& pool = get_pool(L->nthreads);
  pool.launch = L.get();
  start_block(*L, pool);
  hand(*L, pool.w(L->order[0]));

  const long timeout_s = std::max(1L, env_long("DLK_EMU_TIMEOUT_S", 20));
  std::uint64_t seen = L->handovers.load();
  auto last_progress = std::chrono::steady_clock::now();
  while (!pool.done.wait(1000)) {
    const std::uint64_t now_seen = L->handovers.load();
    if (now_seen != seen) {
      seen = now_seen;
      last_progress = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_progress > std::chrono::seconds(timeout_s)) {
      // Thread `current` runs on without synchronizing; it cannot be stopped. Leave it its pool
      // and launch state (leaked) and start a fresh pool for the next launch.
      const std::string msg = launch_header(*L) + "thread " + std::to_string(L->current.load()) +
                              " ran for " + std::to_string(timeout_s) +
                              " s without reaching __syncthreads, a warp operation or its end (an "
                              "infinite loop?); its worker threads are abandoned";
      g_pool = nullptr;
      (void)L.release();
      (void)dyn.release();
      throw std::runtime_error(msg);
    }
  }
  pool.launch = nullptr;
  if (!L->error.empty()) throw std::runtime_error(launch_header(*L) + L->error);
}

void syncthreads(const char* file, int line) {
  Worker& me = current_worker("__syncthreads");
  Pool& pool = *me.pool;
  Launch& L = *pool.launch;
  me.st = St::Barrier;
  me.site = Site{"__syncthreads", file, line};
  --L.ready;
  if (++L.arrived < L.nthreads) return switch_from(L, pool, me, L.pos[std::size_t(me.index)] + 1);
  for (int i = 0; i < L.nthreads; ++i) {
    if (!same_site(pool.w(i).site, me.site)) {
      fail(L, "divergent __syncthreads: the threads wait at different call sites" + state_report(L, pool));
      return switch_from(L, pool, me, 0);
    }
  }
  for (int i = 0; i < L.nthreads; ++i) pool.w(i).st = St::Ready;  // the barrier completes
  L.ready = L.nthreads;
  L.arrived = 0;
  ++L.phase;
  make_order(L);
  switch_from(L, pool, me, 0);
}

std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int b, int width,
                      const char* name, const char* file, int line) {
  Worker& me = current_worker(name);
  Pool& pool = *me.pool;
  Launch& L = *pool.launch;
  const Site site{name, file, line};
  const std::string bad = check_warp_args(L, me.index, op, mask, width, site);
  if (!bad.empty()) {
    fail(L, bad);
    switch_from(L, pool, me, 0);  // throws
  }
  me.st = St::Warp;
  me.site = site;
  me.op = op;
  me.mask = mask;
  me.value = value;
  me.b = b;
  me.width = width;
  --L.ready;
  const int base = me.index & ~31;
  bool complete = true;  // once every lane of the mask waits with this mask
  for (int j = 0; j < 32 && complete; ++j) {
    if (mask >> j & 1u) complete = pool.w(base + j).st == St::Warp && pool.w(base + j).mask == mask;
  }
  if (complete) {
    const std::string err = complete_warp_op(pool, base, me);
    if (!err.empty()) {
      fail(L, err);
    } else {
      for (int j = 0; j < 32; ++j) {
        if (mask >> j & 1u) pool.w(base + j).st = St::Ready;
      }
      L.ready += __builtin_popcount(mask);
    }
  }
  switch_from(L, pool, me, L.pos[std::size_t(me.index)] + 1);
  return me.result;
}

unsigned active_mask() {
  Worker& me = current_worker("__activemask");
  Pool& pool = *me.pool;
  const int base = me.index & ~31;
  unsigned m = 0;
  for (int j = 0; j < 32 && base + j < pool.launch->nthreads; ++j) {
    if (pool.w(base + j).st != St::Exited) m |= 1u << j;
  }
  return m;
}

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
