// Fused CPU kernel for local 2D self-attention (SASA), forward and backward.
//
// Contract: sasa_det/ops/reference.py (query stride 1). For pixel (i, j), head n and window
// offset o = (u, w):
//     logit = q_ij . k_(i+u-r, j+w-r) [if k] + row_logits[u] + col_logits[w] + bias[n, u, w]
//     y_ij  = sum_o softmax_o(logit) v_(i+u-r, j+w-r)
// 'mask' excludes out-of-image neighbours from the softmax; 'zeros' keeps them as zero keys/values.
//
// Types. Inputs and outputs are float64, float32, float16 or bfloat16 (the IO type O); all
// arithmetic is in T = at::opmath_type<O> (float for the 16-bit types): inputs are converted
// while they are packed, the attention weights are saved in T, and results are rounded to O
// only when they are written out.
//
// Layout. q, k, v, grad_out arrive as (B, H, W, heads, d) with any strides (q, k, v are usually
// slices of one fused projection). Each is first packed into zero-padded rows
// (B, heads, H, d, S) of T with pixel (i, j) at column r + j, so that for one image row the k*k
// shifted neighbour rows are contiguous and every inner loop runs over 32-byte SIMD vectors of
// pixels of that row. Vectorising over pixels (not over d) keeps all lanes busy for the small
// head dims of early stages (d = 8) and needs no horizontal sums. Columns j >= W up to Wv (W
// rounded up to the vector width) are computed and ignored; pads are zero, which is exactly
// 'zeros' padding, and 'mask' sets the out-of-image logits to -inf.
//
// Memory. Forward saves only the attention weights (B, heads, H, k*k, S) for backward, never a
// per-pixel k*k*d copy of keys or values. Backward is two passes, both gathers (no atomics):
// pass 1 per query row gives dL (the logit gradient), d_q and the row/column logit gradients;
// pass 2 per key row gathers d_k and d_v from the queries whose window contains that key.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
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

template <typename T>
inline Vec<T> load(const T* p) { return *reinterpret_cast<const VecU<T>*>(p); }
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
inline int64_t grain(int64_t work) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1));
}

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
  int64_t attn_row() const { return KK * S; }  // one (b, n, i) row of the attention weights
  bool row_inside(int64_t i) const { return i >= 0 && i < H; }
};

// One image row i of head n of image b: the unit of parallel work. `index` numbers the rows
// (b, n, i) in the order of the saved attention weights.
struct RowTask {
  int64_t index, bn, i, b, n;
  RowTask(const Geometry& g, int64_t t)
      : index(t), bn(t / g.H), i(t % g.H), b(t / g.H / g.heads), n(t / g.H % g.heads) {}
};

// f(task, scratch) for every image row, in parallel chunks; each chunk owns a scratch buffer of
// scratch_size elements of T.
template <typename T, typename F>
void for_each_row(const Geometry& g, int64_t scratch_size, const F& f) {
  at::parallel_for(0, g.B * g.heads * g.H, g.task_grain(), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(scratch_size);
    for (int64_t t = begin; t < end; ++t) f(RowTask(g, t), scratch.data());
  });
}

// x (B, H, W, heads, m), any strides and floating type -> (B, heads, H, m, width) in `options`
// with x[b, i, j, n, e] at column left + j and zeros elsewhere. ATen's strided copy does the
// transposition and the type conversion (a hand-written pixel-major loop was ~2x slower: its
// scattered scalar stores missed cache).
at::Tensor pack_rows(const at::Tensor& x, int64_t left, int64_t width,
                     const at::TensorOptions& options) {
  at::Tensor out = at::empty({x.size(0), x.size(3), x.size(1), x.size(4), width}, options);
  const int64_t w = x.size(2);
  out.narrow(4, 0, left).zero_();
  out.narrow(4, left + w, width - left - w).zero_();
  out.narrow(4, left, w).copy_(x.permute({0, 3, 1, 4, 2}));
  return out;
}

// q, k, v, grad_out (B, H, W, heads, D) -> zero-padded rows (B, heads, H, D, S). The D channel
// rows of an image row are adjacent: with one plane per channel (B, heads, D, H, S) the D rows
// read together were a multiple of 4 KiB apart, fell into the same L1 sets and evicted each other.
at::Tensor pack(const at::Tensor& x, const Geometry& g, const at::TensorOptions& options) {
  return pack_rows(x, g.r, g.S, options);
}

// Row or column logits (B, H, W, heads, k) -> (B, heads, H, k, Wv), zero past W; undefined if
// absent.
at::Tensor pack_rel(const std::optional<at::Tensor>& x, const Geometry& g,
                    const at::TensorOptions& options) {
  return x ? pack_rows(*x, 0, g.Wv, options) : at::Tensor();
}

template <typename T>
const T* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// Row (b, i) of head n of a (B, H, W, heads, D) output of type O from a buffer acc[d][Wv].
template <typename T, typename O>
inline void unpack_row(O* out, const T* acc, const Geometry& g, const RowTask& t) {
  O* base = out + ((t.b * g.H + t.i) * g.W * g.heads + t.n) * g.D;
  for (int64_t j = 0; j < g.W; ++j) {
    O* px = base + j * g.heads * g.D;
    for (int64_t d = 0; d < g.D; ++d) px[d] = static_cast<O>(acc[d * g.Wv + j]);
  }
}

// Zero the columns outside [r, r + W) of the k*k rows of a saved (KK, S) row (attention
// weights or dL), so that gathers over query columns read zeros there.
template <typename T>
inline void clear_pads(T* saved_row, const Geometry& g) {
  for (int64_t o = 0; o < g.KK; ++o) {
    std::fill(saved_row + o * g.S, saved_row + o * g.S + g.r, T(0));
    std::fill(saved_row + o * g.S + g.r + g.W, saved_row + (o + 1) * g.S, T(0));
  }
}

// out[o][c] = init(u, w, c) + x_c . y_(c + w - r) for o = u*k + w and the Wv pixels c of row i:
// each pixel's D-vector x (packed row, at its column r) against its neighbour at offset (u, w)
// in the packed tensor Y. Neighbour rows outside the image, or Y == nullptr, add nothing.
// Forward: logits from q and K; backward: dA from grad_out and V.
template <typename T, typename Init>
inline void offset_dots(T* out, const T* x_row, const T* Y, const Geometry& g, const RowTask& t,
                        const Init& init) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t u = 0; u < g.k; ++u) {
    const int64_t ii = t.i + u - g.r;
    for (int64_t w = 0; w < g.k; ++w) {
      T* o = out + (u * g.k + w) * g.Wv;
      const T* y_row = Y && g.row_inside(ii) ? Y + g.row(t.bn, ii) + w : nullptr;
      for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
        constexpr int NB = decltype(nb)::value;
        Vec<T> s[NB];
        for (int b = 0; b < NB; ++b) s[b] = init(u, w, c + b * L);
        if (y_row) dot<T, NB>(s, x_row + c, g.S, y_row + c, g.S, g.D);
        for (int b = 0; b < NB; ++b) store(o + c + b * L, s[b]);
      });
    }
  }
}

// acc[d][c] = sum_{u, w} weights[u*k + w][c] * X[row i + u - r][d][c + w]: every pixel's
// weighted sum over its window of a packed tensor X, the weights being a saved (KK, S) row read
// from column r. Forward: y from the attention and V; backward: d_q from dL and K.
template <typename T>
inline void window_sum(T* acc, const T* weights, const T* X, const Geometry& g,
                       const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t d = 0; d < g.D; ++d) {
    for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
      constexpr int NB = decltype(nb)::value;
      Vec<T> s[NB];
      for (int b = 0; b < NB; ++b) s[b] = splat(T(0));
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t ii = t.i + u - g.r;
        if (!g.row_inside(ii)) continue;  // rows outside the image hold zeros
        dot<T, NB>(s, weights + u * g.k * g.S + c, g.S, X + g.row(t.bn, ii) + d * g.S + c, 1,
                   g.k);
      }
      for (int b = 0; b < NB; ++b) store(acc + d * g.Wv + c + b * L, s[b]);
    });
  }
}

// The key-side mirror of window_sum, for key row a = t.i: acc[d][c] = sum over the queries
// (a - u + r, c - w + r) whose window holds key (a, c) of weights[query][u*k + w] * X[query][d].
// Query column jq of a saved row sits at r + jq, so key column c reads column c + 2r - w; pads
// and columns past W are zero. Backward: d_v from the attention and grad_out, d_k from dL and q.
template <typename T>
inline void key_gather(T* acc, const T* saved, const T* X, const Geometry& g, const RowTask& t) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t d = 0; d < g.D; ++d) {
    for_blocks<T>(g.Wv, [&](int64_t c, auto nb) {
      constexpr int NB = decltype(nb)::value;
      Vec<T> s[NB];
      for (int b = 0; b < NB; ++b) s[b] = splat(T(0));
      for (int64_t u = 0; u < g.k; ++u) {
        const int64_t i = t.i - u + g.r;
        if (!g.row_inside(i)) continue;
        const T* w_col = saved + (t.bn * g.H + i) * g.attn_row() + u * g.k * g.S + c + 2 * g.r;
        const T* x_col = X + g.row(t.bn, i) + d * g.S + c + 2 * g.r;
        dot<T, NB>(s, w_col, g.S - 1, x_col, -1, g.k);
      }
      for (int b = 0; b < NB; ++b) store(acc + d * g.Wv + c + b * L, s[b]);
    });
  }
}

// 'mask': logits of neighbours outside the image -> -inf: all of offset row u when row
// i + u - r is outside, else the columns j whose neighbour j + w - r is outside.
template <typename T>
inline void mask_outside(T* logit, const Geometry& g, int64_t i) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t u = 0; u < g.k; ++u) {
    const bool row_in = g.row_inside(i + u - g.r);
    for (int64_t w = 0; w < g.k; ++w) {
      T* lo = logit + (u * g.k + w) * g.Wv;
      const int64_t j0 = row_in ? std::min(g.W, std::max<int64_t>(0, g.r - w)) : g.W;
      const int64_t j1 = row_in ? std::min(g.W, std::max(j0, g.W + g.r - w)) : g.W;
      std::fill(lo, lo + j0, neg_inf);
      std::fill(lo + j1, lo + g.W, neg_inf);
    }
  }
}

// Softmax over the k*k offsets of every pixel: logit (KK, Wv) -> saved row a_row (KK, S).
template <typename T>
inline void softmax_row(T* a_row, T* logit, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t c = 0; c < g.Wv; c += L) {
    Vec<T> m = splat(-std::numeric_limits<T>::infinity());
    for (int64_t o = 0; o < g.KK; ++o) m = vmax(m, load(logit + o * g.Wv + c));
    Vec<T> sum = splat(T(0));
    for (int64_t o = 0; o < g.KK; ++o) {
      const Vec<T> e = vexp(load(logit + o * g.Wv + c) - m);
      store(logit + o * g.Wv + c, e);
      sum += e;
    }
    const Vec<T> inv = T(1) / sum;
    for (int64_t o = 0; o < g.KK; ++o)
      store(a_row + o * g.S + g.r + c, load(logit + o * g.Wv + c) * inv);
  }
  clear_pads(a_row, g);
}

// Softmax backward for one row: dL = A (dA - sum_o A dA), A read from column r of the saved
// row, dA (KK, Wv); dL goes to the saved row dl_row (KK, S).
template <typename T>
inline void softmax_backward(T* dl_row, const T* a, const T* d_attn, const Geometry& g) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t c = 0; c < g.Wv; c += L) {
    Vec<T> t = splat(T(0));
    for (int64_t o = 0; o < g.KK; ++o)
      t += load(a + o * g.S + c) * load(d_attn + o * g.Wv + c);
    for (int64_t o = 0; o < g.KK; ++o)
      store(dl_row + o * g.S + g.r + c, load(a + o * g.S + c) * (load(d_attn + o * g.Wv + c) - t));
  }
  clear_pads(dl_row, g);
}

// d_row[u] = sum_w dL[u*k + w], d_col[w] = sum_u dL[u*k + w] for row `index` (either may be
// null), dL read from column r of its saved row; outputs (B, heads, H, k, Wv).
template <typename T>
inline void relative_grads(T* d_row, T* d_col, const T* dl, const Geometry& g, int64_t index) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t x = 0; x < g.k; ++x) {
    for (int64_t c = 0; c < g.Wv; c += L) {
      Vec<T> sr = splat(T(0)), sc = splat(T(0));
      for (int64_t y = 0; y < g.k; ++y) {
        sr += load(dl + (x * g.k + y) * g.S + c);
        sc += load(dl + (y * g.k + x) * g.S + c);
      }
      if (d_row) store(d_row + (index * g.k + x) * g.Wv + c, sr);
      if (d_col) store(d_col + (index * g.k + x) * g.Wv + c, sc);
    }
  }
}

// The positional part of the logits: row_logits[u] + col_logits[w] + bias[n, u, w] for columns
// [c, c + L) of one image row. Absent row or column logits read a zero vector with stride 0.
template <typename T>
struct PositionalLogits {
  const T *row, *col, *bias;
  int64_t row_stride, col_stride, k;
  Vec<T> operator()(int64_t u, int64_t w, int64_t c) const {
    return load(row + u * row_stride + c) + load(col + w * col_stride + c) + bias[u * k + w];
  }
};

template <typename T, typename O>
std::vector<at::Tensor> forward_impl(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                     const at::Tensor& v,
                                     const std::optional<at::Tensor>& row_logits,
                                     const std::optional<at::Tensor>& col_logits,
                                     const std::optional<at::Tensor>& position_bias,
                                     int64_t kernel_size, bool mask) {
  const Geometry g(q, kernel_size, kLanes<T>);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor Q = pack(q, g, opts), V = pack(v, g, opts);
  const at::Tensor K = k ? pack(*k, g, opts) : at::Tensor();
  const at::Tensor R = pack_rel(row_logits, g, opts), C = pack_rel(col_logits, g, opts);
  const at::Tensor zeros = at::zeros({g.Wv}, opts);
  const at::Tensor bias = position_bias ? position_bias->to(opts).contiguous()
                                        : at::zeros({g.heads, g.k, g.k}, opts);
  at::Tensor out = at::empty({g.B, g.H, g.W, g.heads, g.D}, q.options());
  at::Tensor attn = at::empty({g.B, g.heads, g.H, g.KK, g.S}, opts);
  const T *Qp = Q.data_ptr<T>(), *Kp = data_or_null<T>(K), *Vp = V.data_ptr<T>();
  const T *Rp = data_or_null<T>(R), *Cp = data_or_null<T>(C), *zp = zeros.data_ptr<T>();
  const T* Bp = bias.data_ptr<T>();
  O* outp = out.data_ptr<O>();
  T* attnp = attn.data_ptr<T>();

  for_each_row<T>(g, (g.KK + g.D) * g.Wv, [&](const RowTask& t, T* scratch) {
    T *logit = scratch, *acc = scratch + g.KK * g.Wv;
    const int64_t rel = t.index * g.k * g.Wv;
    const PositionalLogits<T> positional{Rp ? Rp + rel : zp, Cp ? Cp + rel : zp,
                                         Bp + t.n * g.KK, Rp ? g.Wv : 0, Cp ? g.Wv : 0, g.k};
    offset_dots(logit, Qp + g.row(t.bn, t.i) + g.r, Kp, g, t, positional);
    if (mask) mask_outside(logit, g, t.i);
    T* a_row = attnp + t.index * g.attn_row();
    softmax_row(a_row, logit, g);
    window_sum(acc, a_row + g.r, Vp, g, t);
    unpack_row(outp, acc, g, t);
  });
  return {out, attn};
}

// Packed inputs and outputs of one backward call; null where absent.
template <typename T, typename O>
struct BackwardData {
  const T *G, *V, *Q, *K, *attn;
  T *d_logit, *d_row, *d_col;
  O *d_q, *d_k, *d_v;
};

// Pass 1, per query row: dA_o = g . v_o, dL = A (dA - sum_o A dA), the row and column logit
// gradients, and d_q = sum_o dL_o k_o.
template <typename T, typename O>
void query_side_grads(const BackwardData<T, O>& p, const Geometry& g) {
  const auto no_init = [](int64_t, int64_t, int64_t) { return splat(T(0)); };
  for_each_row<T>(g, (g.KK + g.D) * g.Wv, [&](const RowTask& t, T* scratch) {
    T *d_attn = scratch, *acc = scratch + g.KK * g.Wv;
    T* dl_row = p.d_logit + t.index * g.attn_row();
    offset_dots(d_attn, p.G + g.row(t.bn, t.i) + g.r, p.V, g, t, no_init);
    softmax_backward(dl_row, p.attn + t.index * g.attn_row() + g.r, d_attn, g);
    relative_grads(p.d_row, p.d_col, dl_row + g.r, g, t.index);
    if (p.K) {
      window_sum(acc, dl_row + g.r, p.K, g, t);
      unpack_row(p.d_q, acc, g, t);
    }
  });
}

// Pass 2, per key row: d_v = sum A g and d_k = sum dL q over the queries whose window holds
// the key.
template <typename T, typename O>
void key_side_grads(const BackwardData<T, O>& p, const Geometry& g) {
  for_each_row<T>(g, g.D * g.Wv, [&](const RowTask& t, T* acc) {
    key_gather(acc, p.attn, p.G, g, t);
    unpack_row(p.d_v, acc, g, t);
    if (p.Q) {
      key_gather(acc, p.d_logit, p.Q, g, t);
      unpack_row(p.d_k, acc, g, t);
    }
  });
}

template <typename T, typename O>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& q,
                                      const std::optional<at::Tensor>& k, const at::Tensor& v,
                                      const at::Tensor& attn, int64_t kernel_size, bool has_row,
                                      bool has_col, bool has_bias) {
  const Geometry g(q, kernel_size, kLanes<T>);
  const auto opts = attn.options();
  const at::Tensor G = pack(grad_out, g, opts), V = pack(v, g, opts);
  const at::Tensor Q = k ? pack(q, g, opts) : at::Tensor();
  const at::Tensor K = k ? pack(*k, g, opts) : at::Tensor();
  at::Tensor d_logit = at::empty_like(attn);
  auto grad = [&](bool present) {
    return present ? at::empty({g.B, g.H, g.W, g.heads, g.D}, q.options()) : at::Tensor();
  };
  at::Tensor d_q = grad(k.has_value()), d_k = grad(k.has_value()), d_v = grad(true);
  // Row/column logit gradients are written as (B, heads, H, k, Wv) in T and returned as
  // (B, H, W, heads, k) views.
  auto rel_grad = [&](bool present) {
    return present ? at::empty({g.B, g.heads, g.H, g.k, g.Wv}, opts) : at::Tensor();
  };
  at::Tensor d_row = rel_grad(has_row), d_col = rel_grad(has_col);
  const BackwardData<T, O> p{G.data_ptr<T>(), V.data_ptr<T>(), data_or_null<T>(Q),
                             data_or_null<T>(K), attn.data_ptr<T>(), d_logit.data_ptr<T>(),
                             has_row ? d_row.data_ptr<T>() : nullptr,
                             has_col ? d_col.data_ptr<T>() : nullptr,
                             k ? d_q.data_ptr<O>() : nullptr, k ? d_k.data_ptr<O>() : nullptr,
                             d_v.data_ptr<O>()};
  query_side_grads(p, g);
  key_side_grads(p, g);
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
  TORCH_CHECK(v.scalar_type() == q.scalar_type() && (!k || k->scalar_type() == q.scalar_type()),
              "q, k and v must have one dtype");
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
  TORCH_CHECK(!position_bias || position_bias->numel() == q.size(3) * kernel_size * kernel_size,
              "position_bias must be (heads, k, k)");
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "sasa_local_attention_forward", [&] {
        return forward_impl<at::opmath_type<scalar_t>, scalar_t>(
            q, k, v, row_logits, col_logits, position_bias, kernel_size, mask);
      });
}

std::vector<at::Tensor> local_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                 const std::optional<at::Tensor>& k,
                                                 const at::Tensor& v, const at::Tensor& attn,
                                                 int64_t kernel_size, bool has_row,
                                                 bool has_col, bool has_bias) {
  check_inputs(q, k, v, kernel_size);
  return AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "sasa_local_attention_backward", [&] {
        using T = at::opmath_type<scalar_t>;
        TORCH_CHECK(attn.scalar_type() == c10::CppTypeToScalarType<T>::value &&
                        attn.is_contiguous(),
                    "attn must be the contiguous weights saved by forward");
        return backward_impl<T, scalar_t>(grad_out, q, k, v, attn, kernel_size, has_row,
                                          has_col, has_bias);
      });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &local_attention_forward,
        "local attention forward -> (out (B,H,W,heads,d), attn (B,heads,H,k*k,S))");
  m.def("backward", &local_attention_backward,
        "local attention backward -> (d_q, d_k, d_v, d_row_logits, d_col_logits, "
        "d_position_bias)");
}
