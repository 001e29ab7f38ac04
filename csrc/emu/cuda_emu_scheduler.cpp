// The emulation runtime's thread model: the worker pool, the block scheduler (one thread runs at a
// time, handing a token on), deadlock reports, the launch and __syncthreads (cuda_emu_runtime.h).
#include "emu/cuda_emu_runtime.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

namespace dlk_emu {
namespace rt {

// ---- helpers ----------------------------------------------------------------------------------

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 0);
  return end && *end == '\0' ? x : fallback;
}

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string dim_str(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

}  // namespace

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string site_str(const Site& s) {
  return std::string(s.what) + " at " + s.file + ":" + std::to_string(s.line);
}

namespace {

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && std::strcmp(a.file, b.file) == 0 && std::strcmp(a.what, b.what) == 0;
}

}  // namespace

// Records the first error of the launch; every thread then unwinds.
void fail(Launch& L, const std::string& what) {
  if (L.aborting) return;
  L.aborting = true;
  L.error = what;
}

// ---- scheduling (all of it runs on the token holder) ------------------------------------------

namespace {

std::mutex g_launch_mutex;  // one launch at a time, process-wide
Pool* g_pool = nullptr;     // leaked on purpose: workers sleep in it until the process exits

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

}  // namespace

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

namespace {

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

}  // namespace

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

namespace {

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
      reset_async_copies();
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

}  // namespace

}  // namespace rt

using namespace rt;

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

}  // namespace dlk_emu
