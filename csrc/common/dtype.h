// The storage types the dlkern kernels take, shared by every params header. Plain C++.
#pragma once

namespace dlk {

enum class DType { F32, F16, BF16 };

}  // namespace dlk
