// cp.async emulation (common/async_copy.cuh): each emulated thread keeps the copies it issued and
// has not waited for. The source bytes are read at issue (global memory does not change while a
// kernel runs in dlkern), the destination is written when a wait completes the copy's group, so
// shared memory read too early still holds the poison of the block start.
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_emu_runtime.h"

namespace dlk_emu {
namespace {

struct PendingCopy {
  void* dst;
  unsigned char bytes[16];
  std::uint64_t group;  // kUncommitted until the next commit
};
constexpr std::uint64_t kUncommitted = ~std::uint64_t(0);

struct ThreadCopies {
  std::vector<PendingCopy> pending;  // in issue order
  std::uint64_t committed = 0;       // groups committed so far (the next group's number)
};
thread_local ThreadCopies t_copies;

}  // namespace

void async_copy_issue(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<std::uintptr_t>(src) % 16 != 0)) {
    trap(__FILE__, __LINE__);  // cp.async of 16 bytes needs 16-byte aligned addresses
  }
  PendingCopy c{dst, {}, kUncommitted};
  if (valid) std::memcpy(c.bytes, src, 16);
  t_copies.pending.push_back(c);
}

void async_copy_commit() {
  for (PendingCopy& c : t_copies.pending) {
    if (c.group == kUncommitted) c.group = t_copies.committed;
  }
  ++t_copies.committed;  // an empty group is legal: it completes at once
}

void async_copy_wait(int groups_in_flight) {
  // Groups numbered below committed - groups_in_flight are complete; uncommitted copies are not
  // covered by any wait_group.
  const std::uint64_t done = t_copies.committed > std::uint64_t(groups_in_flight)
                                 ? t_copies.committed - std::uint64_t(groups_in_flight) : 0;
  std::vector<PendingCopy> keep;
  for (const PendingCopy& c : t_copies.pending) {
    if (c.group != kUncommitted && c.group < done) {
      std::memcpy(c.dst, c.bytes, 16);
    } else {
      keep.push_back(c);
    }
  }
  t_copies.pending.swap(keep);
}

namespace rt {
// A new emulated thread starts with no copies in flight (those of an aborted launch are dropped).
void reset_async_copies() { t_copies = ThreadCopies{}; }
}  // namespace rt

}  // namespace dlk_emu
