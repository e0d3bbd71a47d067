// Fused CPU kernel for local 2D self-attention (SASA), forward and backward.
//
// Contract: sasa_det/ops/reference.py. For pixel (i, j), head n and window offset o = (u, w):
//     logit = q_ij . k_(i+u-r, j+w-r) [if k] + row_logits[u] + col_logits[w] + bias[n, u, w]
//     y_ij  = sum_o softmax_o(logit) v_(i+u-r, j+w-r)
// 'mask' excludes out-of-image neighbours from the softmax; 'zeros' keeps them as zero keys/values.
//
// Layout. q, k, v, grad_out arrive as (B, H, W, heads, d) with any strides (q, k, v are usually
// slices of one fused projection). Each is first packed into zero-padded rows
// (B, heads, H, d, S) with pixel (i, j) at column r + j, so that for one image row the k*k shifted
// neighbour rows are contiguous and every inner loop runs over 32-byte SIMD vectors of pixels of
// that row. Vectorising over pixels (not over d) keeps all lanes busy for the small head dims of
// early stages (d = 8) and needs no horizontal sums. Columns j >= W up to Wv (W rounded up to the
// vector width) are computed and ignored; pads are zero, which is exactly 'zeros' padding, and
// 'mask' sets the out-of-image logits to -inf.
//
// Memory. Forward saves only the attention weights (B, heads, H, k*k, S) for backward, never a
// per-pixel k*k*d copy of keys or values. Backward is two passes, both gathers (no atomics):
// pass 1 per query row gives dL (the logit gradient), d_q and the row/column logit gradients;
// pass 2 per key row gathers d_k and d_v from the queries whose window contains that key.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

// 32-byte vectors via GCC vector extensions: one AVX register, or two SSE registers on
// baseline x86-64 (the compiler splits them); no intrinsics, so any GCC/Clang target builds.
// Loads and stores go through an element-aligned vector type rather than memcpy: memcpy counts
// as a char access that may alias anything, which made the compiler reload loop bounds after
// every store.
template <typename T> struct VecType;
template <> struct VecType<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4)));
};
template <> struct VecType<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8)));
};
template <typename T> using Vec = typename VecType<T>::type;
template <typename T> using VecU = typename VecType<T>::unaligned;
template <typename T> constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T> inline Vec<T> load(const T* p) { return *reinterpret_cast<const VecU<T>*>(p); }
template <typename T> inline void store(T* p, Vec<T> x) { *reinterpret_cast<VecU<T>*>(p) = x; }
template <typename T> inline Vec<T> splat(T s) { return Vec<T>{} + s; }
template <typename V> inline V vmax(V a, V b) { return a > b ? a : b; }

// exp(x) for float vectors: Cephes' expf (range reduction to |g| <= ln2/2 and a degree-6
// polynomial, ~1 ulp), written on vector types so that it vectorises; exp(x) = 0 below -87.3
// (so exp(-inf) = 0 for masked logits).
inline Vec<float> vexp(Vec<float> x) {
  typedef int32_t Int __attribute__((vector_size(32)));
  const Vec<float> lo = splat(-87.3365448f), hi = splat(88.3762626f);
  Vec<float> xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  Vec<float> fx = xc * 1.44269504088896341f + 0.5f;
  Vec<float> fn = __builtin_convertvector(__builtin_convertvector(fx, Int), Vec<float>);
  fn = fn > fx ? fn - 1.0f : fn;  // truncation -> floor
  Vec<float> g = xc - fn * 0.693359375f + fn * 2.12194440e-4f;
  Vec<float> y = ((((1.9875691500e-4f * g + 1.3981999507e-3f) * g + 8.3334519073e-3f) * g +
                   4.1665795894e-2f) * g + 1.6666665459e-1f) * g + 5.0000001201e-1f;
  y = y * (g * g) + g + 1.0f;
  Int bits = (__builtin_convertvector(fn, Int) + 127) << 23;  // 2^n
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  return x < lo ? splat(0.0f) : y;
}

// float64 is for gradcheck: exactness matters, speed does not.
inline Vec<double> vexp(Vec<double> x) {
  for (int l = 0; l < 4; ++l) x[l] = std::exp(x[l]);
  return x;
}

// s[b] += sum_{t < n} x[t * xs + b * L] * y[t * ys + b * L] for the NB vectors b of a column
// block. NB vectors x P partial sums = 4 independent FMA chains: enough to hide the FMA latency
// at the one FMA per cycle that two loads per FMA allow (a single chain ran ~4x slower; 8 chains
// only added partial-sum merging).
template <typename T, int NB>
inline void dot(Vec<T>* s, const T* x, int64_t xs, const T* y, int64_t ys, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  constexpr int P = NB >= 4 ? 1 : 4 / NB;
  Vec<T> acc[P][NB];
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < NB; ++b) acc[p][b] = splat(T(0));
  int64_t t = 0;
  for (; t + P <= n; t += P)
    for (int p = 0; p < P; ++p)
      for (int b = 0; b < NB; ++b)
        acc[p][b] += load(x + (t + p) * xs + b * L) * load(y + (t + p) * ys + b * L);
  for (int p = 0; p < P; ++p)
    if (t + p < n)
      for (int b = 0; b < NB; ++b)
        acc[p][b] += load(x + (t + p) * xs + b * L) * load(y + (t + p) * ys + b * L);
  for (int b = 0; b < NB; ++b)
    for (int p = 0; p < P; ++p) s[b] += acc[p][b];
}

// f(c, std::integral_constant<int, NB>) over the columns [0, Wv) in blocks of 4, 2, 1 vectors.
template <typename T, typename F>
inline void for_blocks(int64_t Wv, F&& f) {
  constexpr int64_t L = kLanes<T>;
  int64_t c = 0;
  for (; c + 4 * L <= Wv; c += 4 * L) f(c, std::integral_constant<int, 4>{});
  if (c + 2 * L <= Wv) {
    f(c, std::integral_constant<int, 2>{});
    c += 2 * L;
  }
  if (c + L <= Wv) f(c, std::integral_constant<int, 1>{});
}

// Smallest number of tasks of `work` multiply-adds each worth a parallel chunk.
inline int64_t grain(int64_t work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1)); }

struct Geometry {
  int64_t B, H, W, heads, D, k, r, KK, Wv, S;

  Geometry(const at::Tensor& q, int64_t kernel_size, int64_t lanes)
      : B(q.size(0)), H(q.size(1)), W(q.size(2)), heads(q.size(3)), D(q.size(4)),
        k(kernel_size), r(kernel_size / 2), KK(kernel_size * kernel_size) {
    Wv = (W + lanes - 1) / lanes * lanes;
    // Loads reach column Wv - 1 + 2r of a padded row (neighbour columns in forward, query
    // columns in the backward gather).
    S = (Wv + 2 * r + lanes - 1) / lanes * lanes;
  }
  // Tasks per thread chunk: small problems run serially, as waking threads costs more there.
  int64_t task_grain() const { return grain(KK * Wv * D); }
  // Start of image row i of head bn in a packed tensor: D rows of S columns, one per channel.
  int64_t row(int64_t bn, int64_t i) const { return (bn * H + i) * D * S; }
  int64_t attn_row() const { return KK * S; }       // one (b, n, i) row of the attention weights
  int64_t row_task(int64_t b, int64_t n) const { return b * heads + n; }
};

// x (B, H, W, heads, m), any strides -> (B, heads, H, m, width) with x[b, i, j, n, e] at column
// left + j and zeros elsewhere. ATen's strided copy does the transposition (a hand-written
// pixel-major loop was ~2x slower: its scattered scalar stores missed cache).
at::Tensor pack_rows(const at::Tensor& x, int64_t left, int64_t width) {
  at::Tensor out = at::empty({x.size(0), x.size(3), x.size(1), x.size(4), width}, x.options());
  const int64_t w = x.size(2);
  out.narrow(4, 0, left).zero_();
  out.narrow(4, left + w, width - left - w).zero_();
  out.narrow(4, left, w).copy_(x.permute({0, 3, 1, 4, 2}));
  return out;
}

// q, k, v, grad_out (B, H, W, heads, D) -> zero-padded rows (B, heads, H, D, S). The D channel
// rows of an image row are adjacent: with one plane per channel (B, heads, D, H, S) the D rows
// read together were a multiple of 4 KiB apart, fell into the same L1 sets and evicted each other.
at::Tensor pack(const at::Tensor& x, const Geometry& g) { return pack_rows(x, g.r, g.S); }

// row or column logits (B, H, W, heads, k) -> (B, heads, H, k, Wv), zero past W.
at::Tensor pack_rel(const at::Tensor& x, const Geometry& g) { return pack_rows(x, 0, g.Wv); }

// Rows (b, i) of a (B, H, W, heads, D) output from a task buffer acc[d][Wv] of head n.
template <typename T>
inline void unpack_row(T* out, const T* acc, const Geometry& g, int64_t b, int64_t n, int64_t i) {
  T* base = out + ((b * g.H + i) * g.W * g.heads + n) * g.D;
  for (int64_t j = 0; j < g.W; ++j) {
    T* px = base + j * g.heads * g.D;
    for (int64_t d = 0; d < g.D; ++d) px[d] = acc[d * g.Wv + j];
  }
}

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                     const at::Tensor& v,
                                     const std::optional<at::Tensor>& row_logits,
                                     const std::optional<at::Tensor>& col_logits,
                                     const std::optional<at::Tensor>& position_bias,
                                     int64_t kernel_size, bool mask) {
  constexpr int64_t L = kLanes<T>;
  const Geometry g(q, kernel_size, L);
  const at::Tensor Q = pack(q, g), V = pack(v, g);
  const at::Tensor K = k ? pack(*k, g) : at::Tensor();
  at::Tensor out = at::empty({g.B, g.H, g.W, g.heads, g.D}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, g.H, g.KK, g.S}, q.options());
  // Absent positional logits read as zeros.
  const at::Tensor zeros = at::zeros({g.Wv}, q.options());
  const at::Tensor R = row_logits ? pack_rel(*row_logits, g) : at::Tensor();
  const at::Tensor C = col_logits ? pack_rel(*col_logits, g) : at::Tensor();
  const T* Qp = Q.data_ptr<T>();
  const T* Kp = k ? K.data_ptr<T>() : nullptr;
  const T* Vp = V.data_ptr<T>();
  const T* Rp = row_logits ? R.data_ptr<T>() : nullptr;
  const T* Cp = col_logits ? C.data_ptr<T>() : nullptr;
  const T* zp = zeros.data_ptr<T>();
  // (heads, k, k), contiguous: one constant per head and offset.
  const T* Bp = position_bias ? position_bias->data_ptr<T>() : nullptr;
  T* outp = out.data_ptr<T>();
  T* attnp = attn.data_ptr<T>();
  const T neg_inf = -std::numeric_limits<T>::infinity();

  at::parallel_for(0, g.B * g.heads * g.H, g.task_grain(), [&](int64_t begin, int64_t end) {
    std::vector<T> logit(g.KK * g.Wv), acc(g.D * g.Wv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bn = task / g.H, i = task % g.H, b = bn / g.heads, n = bn % g.heads;
      const T* rel_row = Rp ? Rp + task * g.k * g.Wv : nullptr;
      const T* rel_col = Cp ? Cp + task * g.k * g.Wv : nullptr;
      const T* q_row = Qp + g.row(bn, i) + g.r;

      // Logits of the k*k offsets for the Wv pixels of row i.
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t ii = i + u - g.r;
        const bool row_in = ii >= 0 && ii < g.H;
        for (int64_t w = 0; w < g.k; ++w) {
          T* lo = logit.data() + (u * g.k + w) * g.Wv;
          const T* k_row = Kp && row_in ? Kp + g.row(bn, ii) + w : nullptr;
          const T bias = Bp ? Bp[n * g.KK + u * g.k + w] : T(0);
          for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
            constexpr int NB = decltype(nb)::value;
            Vec<T> s[NB];
            const T* ru = rel_row ? rel_row + u * g.Wv + c : zp;
            const T* cw = rel_col ? rel_col + w * g.Wv + c : zp;
            for (int b = 0; b < NB; ++b) s[b] = load(ru + b * L) + load(cw + b * L) + bias;
            if (k_row) dot<T, NB>(s, q_row + c, g.S, k_row + c, g.S, g.D);
            for (int b = 0; b < NB; ++b) store(lo + c + b * L, s[b]);
          });
          if (mask) {  // out-of-image neighbours: the whole row, or columns j + w - r outside
            const int64_t j0 = row_in ? std::min(g.W, std::max<int64_t>(0, g.r - w)) : g.W;
            const int64_t j1 = row_in ? std::min(g.W, std::max(j0, g.W + g.r - w)) : g.W;
            std::fill(lo, lo + j0, neg_inf);
            std::fill(lo + j1, lo + g.W, neg_inf);
          }
        }
      }

      // Softmax over offsets, per pixel; the weights go straight to the saved attention row.
      T* a_row = attnp + task * g.attn_row();
      for (int64_t o = 0; o < g.KK; ++o) {
        std::fill(a_row + o * g.S, a_row + o * g.S + g.r, T(0));
        std::fill(a_row + o * g.S + g.r + g.Wv, a_row + (o + 1) * g.S, T(0));
      }
      for (int64_t c = 0; c < g.Wv; c += L) {
        Vec<T> m = splat(neg_inf);
        for (int64_t o = 0; o < g.KK; ++o) m = vmax(m, load(logit.data() + o * g.Wv + c));
        Vec<T> sum = splat(T(0));
        for (int64_t o = 0; o < g.KK; ++o) {
          Vec<T> e = vexp(load(logit.data() + o * g.Wv + c) - m);
          store(logit.data() + o * g.Wv + c, e);
          sum += e;
        }
        const Vec<T> inv = T(1) / sum;
        for (int64_t o = 0; o < g.KK; ++o)
          store(a_row + o * g.S + g.r + c, load(logit.data() + o * g.Wv + c) * inv);
      }
      for (int64_t o = 0; o < g.KK; ++o)  // columns past W: zero, so backward gathers ignore them
        std::fill(a_row + o * g.S + g.r + g.W, a_row + o * g.S + g.r + g.Wv, T(0));

      // y = sum_o a_o v_o; rows outside the image have v = 0 and contribute nothing.
      for (int64_t d = 0; d < g.D; ++d) {
        for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
          constexpr int NB = decltype(nb)::value;
          Vec<T> s[NB];
          for (int b = 0; b < NB; ++b) s[b] = splat(T(0));
          for (int64_t u = 0; u < g.k; ++u) {
            const int64_t ii = i + u - g.r;
            if (ii < 0 || ii >= g.H) continue;
            dot<T, NB>(s, a_row + u * g.k * g.S + g.r + c, g.S,
                       Vp + g.row(bn, ii) + d * g.S + c, 1, g.k);
          }
          for (int b = 0; b < NB; ++b) store(acc.data() + d * g.Wv + c + b * L, s[b]);
        });
      }
      unpack_row(outp, acc.data(), g, b, n, i);
    }
  });
  return {out, attn};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& q,
                                      const std::optional<at::Tensor>& k, const at::Tensor& v,
                                      const at::Tensor& attn, int64_t kernel_size, bool has_row,
                                      bool has_col, bool has_bias) {
  constexpr int64_t L = kLanes<T>;
  const Geometry g(q, kernel_size, L);
  const at::Tensor G = pack(grad_out, g), V = pack(v, g);
  const at::Tensor Q = k ? pack(q, g) : at::Tensor();
  const at::Tensor K = k ? pack(*k, g) : at::Tensor();
  at::Tensor d_logit = at::empty_like(attn);
  at::Tensor d_q, d_k, d_row, d_col;
  const auto opts = q.options();
  at::Tensor d_v = at::empty({g.B, g.H, g.W, g.heads, g.D}, opts);
  if (k) {
    d_q = at::empty({g.B, g.H, g.W, g.heads, g.D}, opts);
    d_k = at::empty({g.B, g.H, g.W, g.heads, g.D}, opts);
  }
  // Row/column logit gradients are written as (B, heads, H, k, Wv) and returned as
  // (B, H, W, heads, k) views.
  if (has_row) d_row = at::empty({g.B, g.heads, g.H, g.k, g.Wv}, opts);
  if (has_col) d_col = at::empty({g.B, g.heads, g.H, g.k, g.Wv}, opts);
  const T* Gp = G.data_ptr<T>();
  const T* Vp = V.data_ptr<T>();
  const T* Qp = k ? Q.data_ptr<T>() : nullptr;
  const T* Kp = k ? K.data_ptr<T>() : nullptr;
  const T* attnp = attn.data_ptr<T>();
  T* dlp = d_logit.data_ptr<T>();

  // Pass 1, per query row: dA_o = g . v_o, dL = A (dA - sum_o A dA), d_q = sum_o dL_o k_o.
  at::parallel_for(0, g.B * g.heads * g.H, g.task_grain(), [&](int64_t begin, int64_t end) {
    std::vector<T> d_attn(g.KK * g.Wv), acc(g.D * g.Wv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bn = task / g.H, i = task % g.H, b = bn / g.heads, n = bn % g.heads;
      const T* a_row = attnp + task * g.attn_row() + g.r;
      T* dl_row = dlp + task * g.attn_row();
      const T* g_row = Gp + g.row(bn, i) + g.r;
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t ii = i + u - g.r;
        const bool row_in = ii >= 0 && ii < g.H;
        for (int64_t w = 0; w < g.k; ++w) {
          T* da = d_attn.data() + (u * g.k + w) * g.Wv;
          const T* v_row = row_in ? Vp + g.row(bn, ii) + w : nullptr;
          for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
            constexpr int NB = decltype(nb)::value;
            Vec<T> s[NB];
            for (int b = 0; b < NB; ++b) s[b] = splat(T(0));
            if (v_row) dot<T, NB>(s, g_row + c, g.S, v_row + c, g.S, g.D);
            for (int b = 0; b < NB; ++b) store(da + c + b * L, s[b]);
          });
        }
      }
      for (int64_t o = 0; o < g.KK; ++o) {
        std::fill(dl_row + o * g.S, dl_row + o * g.S + g.r, T(0));
        std::fill(dl_row + o * g.S + g.r + g.Wv, dl_row + (o + 1) * g.S, T(0));
      }
      for (int64_t c = 0; c < g.Wv; c += L) {
        Vec<T> t = splat(T(0));
        for (int64_t o = 0; o < g.KK; ++o)
          t += load(a_row + o * g.S + c) * load(d_attn.data() + o * g.Wv + c);
        // Columns past W have A = 0, hence dL = 0 there.
        for (int64_t o = 0; o < g.KK; ++o)
          store(dl_row + o * g.S + g.r + c,
                load(a_row + o * g.S + c) * (load(d_attn.data() + o * g.Wv + c) - t));
      }
      const T* dl = dl_row + g.r;
      for (int64_t x = 0; x < g.k; ++x) {  // d_row[u] = sum_w dL, d_col[w] = sum_u dL
        for (int64_t c = 0; c < g.Wv; c += L) {
          Vec<T> sr = splat(T(0)), sc = splat(T(0));
          for (int64_t y = 0; y < g.k; ++y) {
            sr += load(dl + (x * g.k + y) * g.S + c);
            sc += load(dl + (y * g.k + x) * g.S + c);
          }
          if (has_row) store(d_row.data_ptr<T>() + (task * g.k + x) * g.Wv + c, sr);
          if (has_col) store(d_col.data_ptr<T>() + (task * g.k + x) * g.Wv + c, sc);
        }
      }
      if (Kp) {
        for (int64_t d = 0; d < g.D; ++d) {
          for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
            constexpr int NB = decltype(nb)::value;
            Vec<T> s[NB];
            for (int b = 0; b < NB; ++b) s[b] = splat(T(0));
            for (int64_t u = 0; u < g.k; ++u) {
              const int64_t ii = i + u - g.r;
              if (ii < 0 || ii >= g.H) continue;
              dot<T, NB>(s, dl + u * g.k * g.S + c, g.S,
                         Kp + g.row(bn, ii) + d * g.S + c, 1, g.k);
            }
            for (int b = 0; b < NB; ++b) store(acc.data() + d * g.Wv + c + b * L, s[b]);
          });
        }
        unpack_row(d_q.data_ptr<T>(), acc.data(), g, b, n, i);
      }
    }
  });

  // Pass 2, per key row a: gather from every query (a - u + r, j - w + r) whose window holds
  // the key: d_k = sum dL q, d_v = sum A g. Query column jq of a saved row sits at r + jq, so
  // key column c reads column c + 2r - w; pads and columns past W are zero.
  at::parallel_for(0, g.B * g.heads * g.H, g.task_grain(), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_k(g.D * g.Wv), acc_v(g.D * g.Wv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bn = task / g.H, a = task % g.H, b = bn / g.heads, n = bn % g.heads;
      for (int64_t d = 0; d < g.D; ++d) {
        for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
          constexpr int NB = decltype(nb)::value;
          Vec<T> sk[NB], sv[NB];
          for (int b = 0; b < NB; ++b) sk[b] = sv[b] = splat(T(0));
          for (int64_t u = 0; u < g.k; ++u) {
            const int64_t i = a - u + g.r;
            if (i < 0 || i >= g.H) continue;
            const int64_t row = (bn * g.H + i) * g.attn_row() + u * g.k * g.S + c + 2 * g.r;
            const int64_t px = g.row(bn, i) + d * g.S + c + 2 * g.r;
            dot<T, NB>(sv, attnp + row, g.S - 1, Gp + px, -1, g.k);
            if (Kp) dot<T, NB>(sk, dlp + row, g.S - 1, Qp + px, -1, g.k);
          }
          for (int b = 0; b < NB; ++b) {
            store(acc_v.data() + d * g.Wv + c + b * L, sv[b]);
            if (Kp) store(acc_k.data() + d * g.Wv + c + b * L, sk[b]);
          }
        });
      }
      unpack_row(d_v.data_ptr<T>(), acc_v.data(), g, b, n, a);
      if (Kp) unpack_row(d_k.data_ptr<T>(), acc_k.data(), g, b, n, a);
    }
  });
  if (has_row) d_row = d_row.narrow(4, 0, g.W).permute({0, 2, 4, 1, 3});
  if (has_col) d_col = d_col.narrow(4, 0, g.W).permute({0, 2, 4, 1, 3});
  // d_bias[n, u, w] = sum over pixels of dL; pads and columns past W hold dL = 0.
  at::Tensor d_bias;
  if (has_bias) d_bias = d_logit.sum({0, 2, 4}).view({g.heads, g.k, g.k});
  return {d_q, d_k, d_v, d_row, d_col, d_bias};
}

void check_inputs(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& v,
                  int64_t kernel_size) {
  TORCH_CHECK(q.device().is_cpu() && v.device().is_cpu(), "sasa_det CPU kernel: CPU tensors only");
  TORCH_CHECK(q.dim() == 5 && v.sizes() == q.sizes(), "q and v must be (B, H, W, heads, d)");
  TORCH_CHECK(!k || k->sizes() == q.sizes(), "k must have the shape of q");
  TORCH_CHECK(kernel_size > 0 && kernel_size % 2 == 1, "kernel_size must be odd and positive");
}

}  // namespace

std::vector<at::Tensor> local_attention_forward(const at::Tensor& q,
                                                const std::optional<at::Tensor>& k,
                                                const at::Tensor& v,
                                                const std::optional<at::Tensor>& row_logits,
                                                const std::optional<at::Tensor>& col_logits,
                                                const std::optional<at::Tensor>& position_bias,
                                                int64_t kernel_size, bool mask) {
  check_inputs(q, k, v, kernel_size);
  TORCH_CHECK(!position_bias || (position_bias->is_contiguous() &&
                                 position_bias->scalar_type() == q.scalar_type() &&
                                 position_bias->numel() == q.size(3) * kernel_size * kernel_size),
              "position_bias must be a contiguous (heads, k, k) tensor of q's dtype");
  return AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sasa_local_attention_forward", [&] {
    return forward_impl<scalar_t>(q, k, v, row_logits, col_logits, position_bias, kernel_size,
                                  mask);
  });
}

std::vector<at::Tensor> local_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                 const std::optional<at::Tensor>& k,
                                                 const at::Tensor& v, const at::Tensor& attn,
                                                 int64_t kernel_size, bool has_row,
                                                 bool has_col, bool has_bias) {
  check_inputs(q, k, v, kernel_size);
  return AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sasa_local_attention_backward", [&] {
    return backward_impl<scalar_t>(grad_out, q, k, v, attn, kernel_size, has_row, has_col,
                                   has_bias);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &local_attention_forward,
        "local attention forward -> (out (B,H,W,heads,d), attn (B,heads,H,k*k,S))");
  m.def("backward", &local_attention_backward,
        "local attention backward -> (d_q, d_k, d_v, d_row_logits, d_col_logits, d_position_bias)");
}
