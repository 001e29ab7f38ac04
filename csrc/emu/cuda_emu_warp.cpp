// Warp operations of the emulation runtime: shuffles, votes, __syncwarp (a warp operation
// completes when every lane of its mask waits in it) and __activemask (cuda_emu_runtime.h).
#include "emu/cuda_emu_runtime.h"

#include <algorithm>

namespace dlk_emu {
namespace rt {

namespace {

bool is_shuffle(WarpOp op) {
  return op == WarpOp::ShflIdx || op == WarpOp::ShflUp || op == WarpOp::ShflDown || op == WarpOp::ShflXor;
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

}  // namespace rt

using namespace rt;

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

}  // namespace dlk_emu
