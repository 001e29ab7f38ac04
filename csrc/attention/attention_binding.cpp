// The torch binding of the fused attention kernels (attention_fwd.cu, attention_bwd.cu): checks,
// output allocation and the params struct of each launcher (conventions: common/binding.h). The
// Python-visible definitions with their docs are in csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "attention/attention_binding.h"

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "attention/attention.h"

namespace dlk_bind {

// ---- attention --------------------------------------------------------------------------------

namespace {

// q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); do like o. Any strides; copied only without unit stride
// along D (an expanded gradient has stride 0 there).
at::Tensor check_attention_operand(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(t), name, " must be ", kDeviceKind, ", got a tensor on ", t.device());
  TORCH_CHECK(t.device() == q.device(), name, " must be on q's device ", q.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", q.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B, H, L, D), got shape ", t.sizes());
  return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous();
}

dlk::AttentionStrides seq_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// The checked inputs of attention_fwd / attention_bwd, with the params fields they define.
struct AttentionInputs {
  at::Tensor q, k, v, bias, scale;
  dlk::AttentionShape shape;
  dlk::AttentionMask mask;
};

AttentionInputs check_attention_inputs(const at::Tensor& q_in, const at::Tensor& k_in,
                                       const at::Tensor& v_in, const OptTensor& bias_in,
                                       const at::Tensor& scale_in, double dropout_p, int64_t seed,
                                       bool is_causal, bool bottom_right) {
  AttentionInputs in;
  TORCH_CHECK(q_in.defined(), "q must be a tensor, got None");
  in.q = check_attention_operand(q_in, "q", q_in);
  in.k = check_attention_operand(k_in, "k", q_in);
  in.v = check_attention_operand(v_in, "v", q_in);
  const int64_t B = in.q.size(0), Hq = in.q.size(1), Lq = in.q.size(2), D = in.q.size(3);
  const int64_t Hkv = in.k.size(1), Lk = in.k.size(2);
  TORCH_CHECK(in.k.size(0) == B && in.k.size(3) == D, "k must have shape (B=", B, ", Hkv, Lk, D=",
              D, "), got ", in.k.sizes());
  TORCH_CHECK(in.v.sizes() == in.k.sizes(), "v must have k's shape ", in.k.sizes(), ", got ",
              in.v.sizes());
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "k's head count Hkv=", Hkv,
              " must divide q's head count Hq=", Hq);
  TORCH_CHECK(D >= 1 && D <= 256, "q's head dimension D must be in [1, 256], got ", D);
  TORCH_CHECK(Lk >= 1, "k must hold at least one key (Lk >= 1), got shape ", in.k.sizes());
  TORCH_CHECK(B <= 65535 && Hq <= 65535 && Lq < (int64_t(1) << 31) && Lk < (int64_t(1) << 31),
              "q must have B, Hq <= 65535 and Lq, Lk < 2^31, got q ", in.q.sizes(), ", k ",
              in.k.sizes());
  in.shape = {int(B), int(Hq), int(Hkv), int(Lq), int(Lk), int(D)};

  in.mask = dlk::AttentionMask{};
  if (present(bias_in)) {
    const at::Tensor& bias = *bias_in;
    TORCH_CHECK(bias.device() == q_in.device(), "bias must be on q's device ", q_in.device(),
                ", got ", bias.device());
    TORCH_CHECK(bias.scalar_type() == at::kFloat || bias.scalar_type() == q_in.scalar_type(),
                "bias must be float32 or q's dtype ", q_in.scalar_type(), ", got ",
                bias.scalar_type());
    TORCH_CHECK(bias.sizes() == at::IntArrayRef({B, Hq, Lq, Lk}), "bias must have shape (B, Hq, "
                "Lq, Lk) = (", B, ", ", Hq, ", ", Lq, ", ", Lk, ") (expand broadcast dims), got ",
                bias.sizes());
    in.bias = bias;  // read through its strides (0 on expanded dims): never materialized
    in.mask.bias = bias.data_ptr();
    for (int d = 0; d < 4; ++d) in.mask.bias_strides[d] = bias.stride(d);
    in.mask.bias_is_f32 = bias.scalar_type() == at::kFloat;
  }
  TORCH_CHECK(scale_in.defined(), "scale must be a tensor, got None");
  TORCH_CHECK(scale_in.device() == q_in.device() && scale_in.scalar_type() == at::kFloat &&
                  scale_in.sizes() == at::IntArrayRef({Hq}),
              "scale must be a float32 tensor of shape (Hq,) = (", Hq, ",) on q's device, got ",
              scale_in.scalar_type(), " ", scale_in.sizes(), " on ", scale_in.device());
  in.scale = scale_in.contiguous();
  in.mask.scale = in.scale.data_ptr<float>();
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ", dropout_p);
  TORCH_CHECK(seed >= 0, "seed must be in [0, 2^63), got ", seed);
  in.mask.dropout_p = float(dropout_p);
  in.mask.seed = uint64_t(seed);
  in.mask.is_causal = is_causal;
  in.mask.bottom_right = bottom_right;
  return in;
}

// The fields AttentionFwdParams and AttentionBwdParams share.
template <typename Params>
void fill_attention_inputs(Params& p, const AttentionInputs& in) {
  p.q = in.q.data_ptr();
  p.k = in.k.data_ptr();
  p.v = in.v.data_ptr();
  p.q_strides = seq_strides(in.q);
  p.k_strides = seq_strides(in.k);
  p.v_strides = seq_strides(in.v);
  p.shape = in.shape;
  p.mask = in.mask;
  p.dtype = kernel_dtype(in.q);
}

}  // namespace

// (o (B, Hq, Lq, D) in q's dtype, lse (B, Hq, Lq) float32), both contiguous.
std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const OptTensor& bias,
                                                 const at::Tensor& scale, double dropout_p,
                                                 int64_t seed, bool is_causal, bool bottom_right) {
  const AttentionInputs in = check_attention_inputs(q_in, k_in, v_in, bias, scale, dropout_p, seed,
                                                    is_causal, bottom_right);
  const dlk::AttentionShape& s = in.shape;
  LaunchContext ctx(in.q);
  at::Tensor o = new_buffer({s.B, s.Hq, s.Lq, s.D}, in.q.options());            // (B, Hq, Lq, D)
  at::Tensor lse = new_buffer({s.B, s.Hq, s.Lq}, in.q.options().dtype(at::kFloat));  // (B, Hq, Lq)
  if (o.numel() == 0) return {o, lse};
  dlk::AttentionFwdParams p{};
  fill_attention_inputs(p, in);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  dlk::attention_fwd(p, ctx.stream());
  return {o, lse};
}

// (dq, dk, dv in q's dtype, contiguous; dscores (B, Hq, Lq, Lk) float32 when bias_grad, else None)
std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor> attention_bwd(
    const at::Tensor& do_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& o_in, const at::Tensor& lse_in, const OptTensor& bias,
    const at::Tensor& scale, double dropout_p, int64_t seed, bool is_causal, bool bottom_right,
    bool bias_grad) {
  const AttentionInputs in = check_attention_inputs(q_in, k_in, v_in, bias, scale, dropout_p, seed,
                                                    is_causal, bottom_right);
  const dlk::AttentionShape& s = in.shape;
  const at::Tensor dout = check_attention_operand(do_in, "do", q_in);
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "do must have q's shape ", in.q.sizes(), ", got ",
              dout.sizes());
  const at::Tensor o = check_attention_operand(o_in, "o", q_in).contiguous();
  TORCH_CHECK(o.sizes() == in.q.sizes(), "o must have q's shape ", in.q.sizes(), ", got ",
              o.sizes());
  TORCH_CHECK(lse_in.defined() && lse_in.device() == q_in.device() &&
                  lse_in.scalar_type() == at::kFloat &&
                  lse_in.sizes() == at::IntArrayRef({s.B, s.Hq, s.Lq}),
              "lse must be the forward's float32 (B, Hq, Lq) = (", s.B, ", ", s.Hq, ", ", s.Lq,
              ") tensor on q's device");
  const at::Tensor lse = lse_in.contiguous();

  LaunchContext ctx(in.q);
  const at::TensorOptions f32 = in.q.options().dtype(at::kFloat);
  at::Tensor dq = new_buffer({s.B, s.Hq, s.Lq, s.D}, in.q.options());   // (B, Hq, Lq, D)
  at::Tensor dk = new_buffer({s.B, s.Hkv, s.Lk, s.D}, in.q.options());  // (B, Hkv, Lk, D)
  at::Tensor dv = new_buffer({s.B, s.Hkv, s.Lk, s.D}, in.q.options());  // (B, Hkv, Lk, D)
  OptTensor dscores;
  if (bias_grad) dscores = new_buffer({s.B, s.Hq, s.Lq, s.Lk}, f32);   // (B, Hq, Lq, Lk)
  if (dq.numel() == 0) {  // no queries: nothing flows to k and v
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv, dscores};
  }
  at::Tensor delta = new_buffer({s.B, s.Hq, s.Lq}, f32);                // (B, Hq, Lq) workspace
  dlk::AttentionBwdParams p{};
  fill_attention_inputs(p, in);
  p.dout = dout.data_ptr();
  p.dout_strides = seq_strides(dout);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dscores = bias_grad ? dscores->data_ptr<float>() : nullptr;
  p.delta = delta.data_ptr<float>();
  dlk::attention_bwd(p, ctx.stream());
  return {dq, dk, dv, dscores};
}

// ---- packed (variable-length) sequences -------------------------------------------------------

namespace {

// A packed (total, H, D) operand as the (1, H, total, D) view the padded checks take.
at::Tensor heads_major(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined() && t.dim() == 3, name, " must be 3-D (total, H, D), got ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
  return t.unsqueeze(0).transpose(1, 2);
}

// The checked packed inputs: the padded checks on the views, then B = sequences and Lq, Lk = the
// longest lengths (the caller guarantees that cu_seqlens rise from 0 to total within max_seqlen:
// the values live on the device, checking them here would synchronize).
AttentionInputs check_varlen_inputs(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                    const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_q,
                                    int64_t max_k, const at::Tensor& scale, bool is_causal) {
  AttentionInputs in = check_attention_inputs(heads_major(q_in, "q"), heads_major(k_in, "k"),
                                              heads_major(v_in, "v"), std::nullopt, scale, 0.0, 0,
                                              is_causal, true);
  for (const at::Tensor* cu : {&cu_q, &cu_k}) {
    TORCH_CHECK(cu->defined() && cu->device() == q_in.device() && cu->scalar_type() == at::kInt &&
                    cu->dim() == 1 && cu->size(0) >= 2 && cu->is_contiguous(),
                "cu_seqlens must be contiguous int32 (B + 1,) tensors on q's device");
  }
  TORCH_CHECK(cu_k.size(0) == cu_q.size(0), "cu_seqlens_q and cu_seqlens_k must have the same length");
  TORCH_CHECK(cu_q.size(0) - 1 <= 65535, "at most 65535 sequences, got ", cu_q.size(0) - 1);
  TORCH_CHECK(max_q >= 1 && max_k >= 1 && max_q < (int64_t(1) << 31) && max_k < (int64_t(1) << 31),
              "max_seqlen_q and max_seqlen_k must be in [1, 2^31), got ", max_q, " and ", max_k);
  in.shape.B = int(cu_q.size(0) - 1);
  in.shape.Lq = int(max_q);
  in.shape.Lk = int(max_k);
  return in;
}

template <typename Params>
void fill_varlen(Params& p, const AttentionInputs& in, const at::Tensor& cu_q, const at::Tensor& cu_k) {
  fill_attention_inputs(p, in);
  p.q_strides.b = p.k_strides.b = p.v_strides.b = 0;  // one packed "batch"
  p.seqs.cu_q = cu_q.data_ptr<int>();
  p.seqs.cu_k = cu_k.data_ptr<int>();
  p.seqs.total_q = in.q.size(2);
}

}  // namespace

// (o (total_q, Hq, D) in q's dtype, lse (Hq, total_q) float32), both contiguous.
std::tuple<at::Tensor, at::Tensor> attention_varlen_fwd(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& scale,
    bool is_causal) {
  const AttentionInputs in = check_varlen_inputs(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                 max_seqlen_k, scale, is_causal);
  const dlk::AttentionShape& s = in.shape;
  const int64_t total_q = in.q.size(2);
  LaunchContext ctx(in.q);
  at::Tensor o = new_buffer({total_q, s.Hq, s.D}, in.q.options());
  at::Tensor lse = new_buffer({s.Hq, total_q}, in.q.options().dtype(at::kFloat));
  if (o.numel() == 0) return {o, lse};
  dlk::AttentionFwdParams p{};
  fill_varlen(p, in, cu_seqlens_q, cu_seqlens_k);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  dlk::attention_fwd(p, ctx.stream());
  return {o, lse};
}

// (dq (total_q, Hq, D), dk, dv (total_k, Hkv, D)) in q's dtype, contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_varlen_bwd(
    const at::Tensor& do_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& o_in, const at::Tensor& lse_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& scale,
    bool is_causal) {
  const AttentionInputs in = check_varlen_inputs(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                 max_seqlen_k, scale, is_causal);
  const dlk::AttentionShape& s = in.shape;
  const int64_t total_q = in.q.size(2), total_k = in.k.size(2);
  const at::Tensor dout = check_attention_operand(heads_major(do_in, "do"), "do", in.q);
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "do must have q's shape");
  TORCH_CHECK(o_in.defined() && o_in.sizes() == q_in.sizes() && o_in.scalar_type() == q_in.scalar_type() &&
                  o_in.device() == q_in.device(),
              "o must be the forward's output (q's shape, dtype and device)");
  const at::Tensor o = o_in.contiguous();
  TORCH_CHECK(lse_in.defined() && lse_in.device() == q_in.device() && lse_in.scalar_type() == at::kFloat &&
                  lse_in.sizes() == at::IntArrayRef({s.Hq, total_q}),
              "lse must be the forward's float32 (Hq, total_q) = (", s.Hq, ", ", total_q,
              ") tensor on q's device");
  const at::Tensor lse = lse_in.contiguous();
  LaunchContext ctx(in.q);
  at::Tensor dq = new_buffer({total_q, s.Hq, s.D}, in.q.options());
  at::Tensor dk = new_buffer({total_k, s.Hkv, s.D}, in.q.options());
  at::Tensor dv = new_buffer({total_k, s.Hkv, s.D}, in.q.options());
  if (dq.numel() == 0) {  // no queries: nothing flows to k and v
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  at::Tensor delta = new_buffer({s.Hq, total_q}, in.q.options().dtype(at::kFloat));
  dlk::AttentionBwdParams p{};
  fill_varlen(p, in, cu_seqlens_q, cu_seqlens_k);
  p.dout = dout.data_ptr();
  p.dout_strides = seq_strides(dout);
  p.dout_strides.b = 0;
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.delta = delta.data_ptr<float>();
  dlk::attention_bwd(p, ctx.stream());
  return {dq, dk, dv};
}

// ---- decode over a paged KV cache ------------------------------------------------------------

// o (B, Lq, Hq, D) in q's dtype, contiguous. num_splits: key-range splits per (sequence, kv
// head), 0 = enough blocks to fill the GPU twice; chosen and clamped as the Triton launcher does
// (at most one split per 32-key tile the block table can hold, at most 64 when chosen, none left
// without tiles). The caller guarantees that cache_seqlens fit the block table and that the pages
// it names exist (checking would synchronize).
at::Tensor attention_paged_fwd(const at::Tensor& q_in, const at::Tensor& k_cache_in, const at::Tensor& v_cache_in,
                               const at::Tensor& block_table_in, const at::Tensor& cache_seqlens_in,
                               const at::Tensor& scale_in, bool is_causal, int64_t num_splits) {
  TORCH_CHECK(num_splits >= 0, "num_splits must be >= 0, got ", num_splits);
  TORCH_CHECK(q_in.defined() && q_in.dim() == 4, "q must be 4-D (B, Lq, Hq, D)");
  TORCH_CHECK(on_kernel_device(q_in), "q must be ", kDeviceKind, ", got a tensor on ", q_in.device());
  TORCH_CHECK(q_in.scalar_type() == at::kFloat || q_in.scalar_type() == at::kHalf ||
                  q_in.scalar_type() == at::kBFloat16,
              "q must be float32, float16 or bfloat16, got ", q_in.scalar_type());
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  auto cache = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.defined() && t.dim() == 4 && t.device() == q_in.device() && t.scalar_type() == q_in.scalar_type(),
                name, " must be a 4-D (num_pages, page_size, Hkv, D) tensor of q's dtype on q's device");
    TORCH_CHECK(t.size(3) == q.size(3), name, " must have q's head dim ", q.size(3));
    return t.stride(3) == 1 ? t : t.contiguous();
  };
  const at::Tensor kc = cache(k_cache_in, "k_cache"), vc = cache(v_cache_in, "v_cache");
  TORCH_CHECK(kc.sizes() == vc.sizes(), "k_cache and v_cache must have one shape");
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = kc.size(2);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "the cache's head count must divide q's");
  TORCH_CHECK(block_table_in.defined() && block_table_in.device() == q_in.device() &&
                  block_table_in.scalar_type() == at::kInt && block_table_in.dim() == 2 &&
                  block_table_in.size(0) == B && block_table_in.stride(1) == 1,
              "block_table must be an int32 (B, max_pages) tensor with unit column stride on q's device");
  TORCH_CHECK(cache_seqlens_in.defined() && cache_seqlens_in.device() == q_in.device() &&
                  cache_seqlens_in.scalar_type() == at::kInt && cache_seqlens_in.sizes() == at::IntArrayRef({B}),
              "cache_seqlens must be an int32 (B,) tensor on q's device");
  TORCH_CHECK(scale_in.defined() && scale_in.device() == q_in.device() && scale_in.scalar_type() == at::kFloat &&
                  scale_in.sizes() == at::IntArrayRef({Hq}),
              "scale must be a float32 (Hq,) tensor on q's device");
  const at::Tensor seqlens = cache_seqlens_in.contiguous(), scale = scale_in.contiguous();
  LaunchContext ctx(q);
  at::Tensor o = new_buffer({B, Lq, Hq, D}, q.options());
  if (o.numel() == 0) return o;
  dlk::AttentionPagedParams p{};
  p.q = q.data_ptr();
  p.q_sb = q.stride(0);
  p.q_sm = q.stride(1);
  p.q_sh = q.stride(2);
  p.k_cache = kc.data_ptr();
  p.v_cache = vc.data_ptr();
  p.k_sp = kc.stride(0);
  p.k_ss = kc.stride(1);
  p.k_sh = kc.stride(2);
  p.v_sp = vc.stride(0);
  p.v_ss = vc.stride(1);
  p.v_sh = vc.stride(2);
  p.block_table = block_table_in.data_ptr<int>();
  p.bt_sb = block_table_in.stride(0);
  p.seqlens = seqlens.data_ptr<int>();
  p.scale = scale.data_ptr<float>();
  p.o = o.data_ptr();
  p.B = int(B);
  p.Lq = int(Lq);
  p.Hq = int(Hq);
  p.Hkv = int(Hkv);
  p.D = int(D);
  p.page_size = int(kc.size(1));
  p.causal = is_causal;
  p.dtype = kernel_dtype(q);
  const int64_t tile = dlk::kPagedTileKeys;
  const int64_t capacity = std::max<int64_t>((block_table_in.size(1) * kc.size(1) + tile - 1) / tile, 1);
  int64_t splits = num_splits;
  if (splits == 0) splits = std::min<int64_t>({(2 * ctx.num_sms() + B * Hkv - 1) / (B * Hkv), capacity, 64});
  splits = std::max<int64_t>(1, std::min(splits, capacity));
  const int64_t per_split = (capacity + splits - 1) / splits;
  splits = (capacity + per_split - 1) / per_split;
  at::Tensor o_part, lse_part;  // alive until the launches are queued (the allocator's stream order)
  if (splits > 1) {
    o_part = new_buffer({splits, B, Lq, Hq, D}, q.options().dtype(at::kFloat));
    lse_part = new_buffer({splits, B, Lq, Hq}, q.options().dtype(at::kFloat));
    p.o_part = o_part.data_ptr<float>();
    p.lse_part = lse_part.data_ptr<float>();
  }
  p.num_splits = int(splits);
  p.tiles_per_split = int(std::min<int64_t>(per_split, 1 << 30));
  dlk::attention_paged_fwd(p, ctx.stream());
  return o;
}

}  // namespace dlk_bind
