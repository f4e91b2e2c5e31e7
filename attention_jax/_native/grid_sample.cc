// Bilinear grid_sample for XLA:CPU through the XLA FFI: forward and backward (w.r.t. the image
// and the grid), NHWC, every padding mode and align_corners, float32 and float64.
//
// The same semantics as attention_jax/functional/sampling.py (PyTorch's grid_sample, plus its
// documented handling of non-finite grid values); that file is the reference these kernels are
// tested against, together with torch.nn.functional.grid_sample.
//
// Why a kernel: XLA:CPU runs the gather/scatter formulation element by element (and fuses the
// tap sum or the scatter-add with the gather into slow loops); here each output point is one
// pass over its four taps with the channel loop innermost and contiguous (NHWC), and the work
// is split over XLA's intra-op thread pool.
//
// Built on first use by attention_jax/_native/__init__.py (g++, headers from
// jax.ffi.include_dir()); loaded with ctypes and registered with jax.ffi.register_ffi_target.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>

#include "common.h"

namespace {

enum Padding : int64_t { kZeros = 0, kBorder = 1, kReflection = 2 };

// ---------------------------------------------------------------------------- geometry
// Written branch-free (selects, no early returns) so that GCC vectorises the per-point loop.

template <typename T>
inline bool Finite(T u) {
  return (u - u) == T(0);  // false for inf and nan (no -ffast-math here)
}

// Loop-invariant constants of one axis (hoisted: int64 -> float conversions inside the loop
// keep GCC from vectorising it).
template <typename T>
struct Axis {
  T scale, shift, hi, low, twice;
  bool degenerate;  // one pixel with align_corners: reflection maps everything to pixel 0
};

template <typename T>
Axis<T> MakeAxis(int64_t size, bool align) {
  Axis<T> a;
  a.scale = align ? T(size - 1) / T(2) : T(size) / T(2);
  a.shift = align ? T(0) : T(0.5);
  a.hi = T(size - 1);
  a.low = align ? T(0) : T(-0.5);
  a.twice = align ? T(2) * T(size - 1) : T(2) * T(size);
  a.degenerate = align && size <= 1;
  return a;
}

// Grid value (one axis) -> source coordinate u and du/dgrid, as sampling.py's _source_coords.
template <typename T, int PAD>
inline void Source(T g, const Axis<T>& ax, T& u_out, T& mult_out) {
  T u = (g + T(1)) * ax.scale - ax.shift;
  const bool fin = Finite(u);
  T mult = fin ? ax.scale : T(0);
  if (PAD == kZeros) {
    u_out = fin ? u : T(-10);  // far outside: every tap masked, output 0
    mult_out = mult;
    return;
  }
  if (PAD == kBorder) {
    u = fin ? u : (u > 0 ? ax.hi : T(0));  // +inf -> last, -inf/nan -> first
  } else {
    u = fin ? u : T(0);
    const T v = u - ax.low;
    const T a = std::fabs(v);
    const T extra = a - std::trunc(a / ax.twice) * ax.twice;
    const T flipped = ax.twice - extra;
    const bool one_more = extra > flipped;
    u = (one_more ? flipped : extra) + ax.low;
    mult = (one_more != (v < 0)) ? -mult : mult;
    u = ax.degenerate ? T(0) : u;
    mult = ax.degenerate ? T(0) : mult;
  }
  const T res = std::min(std::max(u, T(0)), ax.hi);
  mult_out = ((res == T(0)) | (res == ax.hi)) ? T(0) : mult;
  u_out = res;
}

constexpr int kBlock = 256;  // points per geometry block

// Per-point geometry of a block: the four taps' offsets in the image (-1 where the tap is
// outside), their clamped (always valid) offsets, fractional parts and du/dgrid.
template <typename T>
struct Geometry {
  int32_t off[4][kBlock];
  int32_t safe[4][kBlock];
  T tx[kBlock], ty[kBlock], mx[kBlock], my[kBlock];
};

// One point's geometry: fractional parts, du/dgrid, the four taps' clamped (always valid)
// offsets and whether each tap is inside the image.
template <typename T, int PAD>
inline void PointGeometry(T gx, T gy, const Axis<T>& ax, const Axis<T>& ay, int32_t wi,
                          int32_t hi, T& tx, T& ty, T& mx, T& my, int32_t* safe, bool* ok) {
  T ux, uy;
  Source<T, PAD>(gx, ax, ux, mx);
  Source<T, PAD>(gy, ay, uy, my);
  const T x0 = std::floor(ux), y0 = std::floor(uy);
  tx = ux - x0;
  ty = uy - y0;
  // Clamp to [-2, size + 1] in floating point before converting (huge coordinates), then
  // test bounds on integers (int masks keep the int32 selects vectorisable).
  const int32_t xi = static_cast<int32_t>(std::min(std::max(x0, T(-2)), ax.hi + T(2)));
  const int32_t yi = static_cast<int32_t>(std::min(std::max(y0, T(-2)), ay.hi + T(2)));
  const bool okx0 = (xi >= 0) & (xi <= wi - 1), okx1 = (xi >= -1) & (xi <= wi - 2);
  const bool oky0 = (yi >= 0) & (yi <= hi - 1), oky1 = (yi >= -1) & (yi <= hi - 2);
  const int32_t ix0 = std::min(std::max(xi, 0), wi - 1);
  const int32_t ix1 = std::min(std::max(xi + 1, 0), wi - 1);
  const int32_t iy0 = std::min(std::max(yi, 0), hi - 1);
  const int32_t iy1 = std::min(std::max(yi + 1, 0), hi - 1);
  safe[0] = iy0 * wi + ix0;
  safe[1] = iy0 * wi + ix1;
  safe[2] = iy1 * wi + ix0;
  safe[3] = iy1 * wi + ix1;
  ok[0] = oky0 & okx0;
  ok[1] = oky0 & okx1;
  ok[2] = oky1 & okx0;
  ok[3] = oky1 & okx1;
}

template <typename T, int PAD, bool ALIGN>
void ComputeGeometry(const T* __restrict gp, int64_t len, int64_t h, int64_t w,
                     Geometry<T>& geo) {
  const Axis<T> ax = MakeAxis<T>(w, ALIGN), ay = MakeAxis<T>(h, ALIGN);
  const int32_t wi = static_cast<int32_t>(w), hi = static_cast<int32_t>(h);
  for (int64_t j = 0; j < len; ++j) {
    int32_t safe[4];
    bool ok[4];
    PointGeometry<T, PAD>(gp[2 * j], gp[2 * j + 1], ax, ay, wi, hi, geo.tx[j], geo.ty[j],
                          geo.mx[j], geo.my[j], safe, ok);
    for (int k = 0; k < 4; ++k) {
      geo.safe[k][j] = safe[k];
      geo.off[k][j] = ok[k] ? safe[k] : -1;
    }
  }
}

// fn(padding constant, align constant) for the run-time (padding, align): picks the template
// instantiation a kernel runs (std::integral_constant / std::bool_constant arguments).
template <typename F>
auto WithPadding(int64_t padding, bool align, F&& fn) {
  using Z = std::integral_constant<int, kZeros>;
  using B = std::integral_constant<int, kBorder>;
  using R = std::integral_constant<int, kReflection>;
  switch (padding * 2 + (align ? 1 : 0)) {
    case 0: return fn(Z{}, std::false_type{});
    case 1: return fn(Z{}, std::true_type{});
    case 2: return fn(B{}, std::false_type{});
    case 3: return fn(B{}, std::true_type{});
    case 4: return fn(R{}, std::false_type{});
    default: return fn(R{}, std::true_type{});
  }
}

template <typename T>
using GeometryFn = void (*)(const T*, int64_t, int64_t, int64_t, Geometry<T>&);

template <typename T>
GeometryFn<T> PickGeometry(int64_t padding, bool align) {
  return WithPadding(padding, align, [](auto pad, auto al) -> GeometryFn<T> {
    return ComputeGeometry<T, decltype(pad)::value, decltype(al)::value>;
  });
}

// Calls body(n, j0, len) for blocks of at most kBlock points of image n covering flat points
// [begin, end) of an (N, P) point array.
template <typename F>
inline void ForBlocks(int64_t begin, int64_t end, int64_t p, F&& body) {
  int64_t i = begin;
  while (i < end) {
    const int64_t n = i / p, j0 = i - n * p;
    const int64_t len = std::min<int64_t>({kBlock, p - j0, end - i});
    body(n, j0, len);
    i += len;
  }
}

struct Dims {
  int64_t n, h, w, c, ho, wo;
};

template <ffi::DataType DT>
ffi::Error CheckDims(const ffi::Buffer<DT>& x, const ffi::Buffer<DT>& grid, Dims& d) {
  auto xd = x.dimensions();
  auto gd = grid.dimensions();
  if (xd.size() < 4 || gd.size() != xd.size() || gd.back() != 2) {
    return ffi::Error::InvalidArgument("grid_sample kernel: want x (..., H, W, C), grid (..., "
                                       "Ho, Wo, 2) with the same leading dims");
  }
  size_t r = xd.size();
  d.n = 1;
  for (size_t i = 0; i + 3 < r; ++i) {
    if (xd[i] != gd[i]) return ffi::Error::InvalidArgument("grid_sample kernel: batch mismatch");
    d.n *= xd[i];
  }
  d.h = xd[r - 3];
  d.w = xd[r - 2];
  d.c = xd[r - 1];
  d.ho = gd[r - 3];
  d.wo = gd[r - 2];
  if (d.h * d.w >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("grid_sample kernel: more than 2^31 pixels per image");
  }
  return ffi::Error::Success();
}

// The four tap values of point j (C = 1), zero outside. Loads at the clamped offsets first,
// then selects: the form GCC vectorises (AVX2 gathers).
template <typename T>
inline void Gather4(const T* __restrict img, const Geometry<T>& geo, int64_t j, T& v0, T& v1,
                    T& v2, T& v3) {
  v0 = img[geo.safe[0][j]];
  v1 = img[geo.safe[1][j]];
  v2 = img[geo.safe[2][j]];
  v3 = img[geo.safe[3][j]];
  v0 = geo.off[0][j] >= 0 ? v0 : T(0);
  v1 = geo.off[1][j] >= 0 ? v1 : T(0);
  v2 = geo.off[2][j] >= 0 ? v2 : T(0);
  v3 = geo.off[3][j] >= 0 ? v3 : T(0);
}

// C = 1 forward over one block: o[j] = sum_k w_k v_k (vectorised: AVX2 gathers). Out of line:
// inlined into its caller, GCC no longer vectorises it. (Fusing it with the geometry loop was
// measured slower: 1.6x vs 1.2x PyTorch at B64 28x28.)
template <typename T>
__attribute__((noinline)) void SampleC1(const T* __restrict img, T* __restrict o, int64_t len,
                                        const Geometry<T>& geo) {
  for (int64_t j = 0; j < len; ++j) {
    T v0, v1, v2, v3;
    Gather4(img, geo, j, v0, v1, v2, v3);
    const T tx = geo.tx[j], ty = geo.ty[j];
    o[j] = (1 - tx) * (1 - ty) * v0 + tx * (1 - ty) * v1 + (1 - tx) * ty * v2 + tx * ty * v3;
  }
}

// C = 1 gradient w.r.t. the grid over one block (vectorised).
template <typename T>
__attribute__((noinline)) void GridGradC1(const T* __restrict img, const T* __restrict go,
                                          T* __restrict gg, int64_t len, const Geometry<T>& geo) {
  for (int64_t j = 0; j < len; ++j) {
    T v0, v1, v2, v3;
    Gather4(img, geo, j, v0, v1, v2, v3);
    const T gj = go[j];
    const T d0 = v0 * gj, d1 = v1 * gj, d2 = v2 * gj, d3 = v3 * gj;
    const T tx = geo.tx[j], ty = geo.ty[j];
    gg[2 * j] = geo.mx[j] * ((1 - ty) * (d1 - d0) + ty * (d3 - d2));
    gg[2 * j + 1] = geo.my[j] * ((1 - tx) * (d2 - d0) + tx * (d3 - d1));
  }
}

template <typename T>
inline void Weights(T tx, T ty, T* w) {
  w[0] = (1 - tx) * (1 - ty);
  w[1] = tx * (1 - ty);
  w[2] = (1 - tx) * ty;
  w[3] = tx * ty;
}


#ifdef AJ_AVX2
// ---------------------------------------------------------------------------- C = 1 forward, f32
// The bulk of STN use (one-channel digits) and the case the other paths serve worst: per point
// there are four scattered scalar reads and almost no arithmetic. Here the image is first copied
// into a buffer with a zero border (one row/column before, two after), so that every point's
// four taps are two pairs of adjacent pixels read with two 8-byte loads, without bounds masks:
// a tap outside the image reads the border, and a point whose taps are all outside reads the
// border's far corner. Eight points at a time with AVX2 arithmetic and plain loads: AVX2 gathers
// were measured 2x slower on this path (AMD Zen 4). Same arithmetic and results as the generic
// path (the tests run both against PyTorch on all paddings and alignments).

// Zero-bordered copy of one (h, w) image: row y, column x of the image is at (y + 1) * (w + 3)
// + x + 1; rows -1, h, h + 1 and columns -1, w, w + 1 are zero.
void PadImage(const float* __restrict img, int64_t h, int64_t w, float* __restrict pad) {
  const int64_t pw = w + 3;
  std::memset(pad, 0, sizeof(float) * pw);
  for (int64_t y = 0; y < h; ++y) {
    float* __restrict row = pad + (y + 1) * pw;
    row[0] = 0;
    std::memcpy(row + 1, img + y * w, sizeof(float) * w);
    row[w + 1] = 0;
    row[w + 2] = 0;
  }
  std::memset(pad + (h + 1) * pw, 0, sizeof(float) * 2 * pw);
}

// One axis' constants broadcast to eight lanes.
struct AxisV {
  __m256 scale, shift, hi, low, twice, far_lo, far_hi;
  __m256i size;
  bool degenerate;
  explicit AxisV(const Axis<float>& a)
      : scale(_mm256_set1_ps(a.scale)), shift(_mm256_set1_ps(a.shift)),
        hi(_mm256_set1_ps(a.hi)), low(_mm256_set1_ps(a.low)), twice(_mm256_set1_ps(a.twice)),
        far_lo(_mm256_set1_ps(-2.f)), far_hi(_mm256_set1_ps(a.hi + 2.f)),
        size(_mm256_set1_epi32(static_cast<int32_t>(a.hi) + 1)), degenerate(a.degenerate) {}
};

// Source() for eight grid values: the source coordinate, clamped to [-2, size + 1] for zeros
// padding (non-finite -> -2 or size + 1: every tap outside) or to [0, size - 1] otherwise.
// (_mm256_max_ps returns its second operand when the first is NaN.)
template <int PAD>
inline __m256 SourceV(__m256 g, const AxisV& a) {
  __m256 u = _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(g, _mm256_set1_ps(1.f)), a.scale),
                           a.shift);
  if (PAD == kZeros) return _mm256_min_ps(_mm256_max_ps(u, a.far_lo), a.far_hi);
  if (PAD == kReflection) {
    const __m256 zero = _mm256_setzero_ps();
    u = _mm256_and_ps(u, _mm256_cmp_ps(_mm256_sub_ps(u, u), zero, _CMP_EQ_OQ));  // non-finite -> 0
    const __m256 v = _mm256_sub_ps(u, a.low);
    const __m256 ab = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
    const __m256 q = _mm256_round_ps(_mm256_div_ps(ab, a.twice),
                                     _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 extra = _mm256_sub_ps(ab, _mm256_mul_ps(q, a.twice));
    const __m256 flipped = _mm256_sub_ps(a.twice, extra);
    u = _mm256_add_ps(_mm256_blendv_ps(extra, flipped, _mm256_cmp_ps(extra, flipped, _CMP_GT_OQ)),
                      a.low);
    if (a.degenerate) u = zero;
  }
  // Border (and reflection's final clamp): NaN -> 0, +inf -> size - 1, -inf -> 0.
  return _mm256_min_ps(_mm256_max_ps(u, _mm256_setzero_ps()), a.hi);
}

// Integer column (row) of the tap pair's first tap: in [-1, size - 1] when a tap is inside,
// else size (the zero border beyond the image).
inline __m256i PairStart(__m256 x0, const AxisV& a) {
  const __m256i i = _mm256_cvttps_epi32(x0);
  const __m256i ok = _mm256_and_si256(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-2)),
                                      _mm256_cmpgt_epi32(a.size, i));
  return _mm256_blendv_epi8(a.size, i, ok);
}

// Eight points: grid g (x, y interleaved, 16 floats) -> o (8 floats), from a padded image.
template <int PAD>
inline void SampleEightC1(const float* __restrict g, const float* __restrict pad, int32_t pw,
                          const AxisV& ax, const AxisV& ay, float* __restrict o) {
  const __m256 a = _mm256_loadu2_m128(g + 8, g);       // x0 y0 x1 y1 | x4 y4 x5 y5
  const __m256 b = _mm256_loadu2_m128(g + 12, g + 4);  // x2 y2 x3 y3 | x6 y6 x7 y7
  const __m256 ux = SourceV<PAD>(_mm256_shuffle_ps(a, b, 0x88), ax);
  const __m256 uy = SourceV<PAD>(_mm256_shuffle_ps(a, b, 0xDD), ay);
  const __m256 x0 = _mm256_floor_ps(ux), y0 = _mm256_floor_ps(uy);
  const __m256 tx = _mm256_sub_ps(ux, x0), ty = _mm256_sub_ps(uy, y0);
  const __m256i vpw = _mm256_set1_epi32(pw);
  const __m256i q = _mm256_add_epi32(
      _mm256_mullo_epi32(PairStart(y0, ay), vpw),
      _mm256_add_epi32(PairStart(x0, ax), _mm256_set1_epi32(pw + 1)));
  alignas(32) int32_t off[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(off), q);
  auto pairs = [pad](int32_t i, int32_t j) {  // (pad[i], pad[i + 1], pad[j], pad[j + 1])
    return _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd(reinterpret_cast<const double*>(pad + i)),
                                      reinterpret_cast<const double*>(pad + j)));
  };
  const __m256 r0a = _mm256_set_m128(pairs(off[4], off[5]), pairs(off[0], off[1]));
  const __m256 r0b = _mm256_set_m128(pairs(off[6], off[7]), pairs(off[2], off[3]));
  const __m256 r1a = _mm256_set_m128(pairs(off[4] + pw, off[5] + pw),
                                     pairs(off[0] + pw, off[1] + pw));
  const __m256 r1b = _mm256_set_m128(pairs(off[6] + pw, off[7] + pw),
                                     pairs(off[2] + pw, off[3] + pw));
  const __m256 v00 = _mm256_shuffle_ps(r0a, r0b, 0x88), v01 = _mm256_shuffle_ps(r0a, r0b, 0xDD);
  const __m256 v10 = _mm256_shuffle_ps(r1a, r1b, 0x88), v11 = _mm256_shuffle_ps(r1a, r1b, 0xDD);
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 sx = _mm256_sub_ps(one, tx), sy = _mm256_sub_ps(one, ty);
  __m256 r = _mm256_mul_ps(_mm256_mul_ps(sx, sy), v00);
  r = _mm256_add_ps(r, _mm256_mul_ps(_mm256_mul_ps(tx, sy), v01));
  r = _mm256_add_ps(r, _mm256_mul_ps(_mm256_mul_ps(sx, ty), v10));
  r = _mm256_add_ps(r, _mm256_mul_ps(_mm256_mul_ps(tx, ty), v11));
  _mm256_storeu_ps(o, r);
}

#ifdef AJ_AVX512
// The same for sixteen points (the AVX-512 variant), with the tap pairs fetched one of two
// ways, chosen per CPU at load time (TapsByGather):
// * GATHER: each tap pair is one 64-bit lane of a gather (vgatherdpd), four gathers of eight
//   pairs per sixteen points: half the gathered elements of PyTorch's AVX-512 kernel (four
//   16-float gathers), and no shuffles. For Intel cores, where the 8-lane pair loads above
//   (sixteen loads and twelve shuffles per eight points, on Intel's one shuffle port) ran
//   1.6x PyTorch. Not measured here (no Intel machine); AMD Zen 5: 1.35 ns/point.
// * otherwise: each pair is one 8-byte load stored to a staging buffer that is read back as
//   four vectors (loads and stores, no shuffles). AMD Zen 5: 0.97 ns/point, where gathers are
//   slow (the 8-lane pair loads: 1.01; PyTorch's AVX-512 kernel: 2.0; one thread, B64 28x28).
struct AxisW {
  __m512 scale, shift, hi, low, twice, far_lo, far_hi;
  __m512i size;
  bool degenerate;
  explicit AxisW(const Axis<float>& a)
      : scale(_mm512_set1_ps(a.scale)), shift(_mm512_set1_ps(a.shift)),
        hi(_mm512_set1_ps(a.hi)), low(_mm512_set1_ps(a.low)), twice(_mm512_set1_ps(a.twice)),
        far_lo(_mm512_set1_ps(-2.f)), far_hi(_mm512_set1_ps(a.hi + 2.f)),
        size(_mm512_set1_epi32(static_cast<int32_t>(a.hi) + 1)), degenerate(a.degenerate) {}
};

template <int PAD>
inline __m512 SourceW(__m512 g, const AxisW& a) {
  __m512 u = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(g, _mm512_set1_ps(1.f)), a.scale),
                           a.shift);
  if (PAD == kZeros) return _mm512_min_ps(_mm512_max_ps(u, a.far_lo), a.far_hi);
  const __m512 zero = _mm512_setzero_ps();
  if (PAD == kReflection) {
    u = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(u, u), zero, _CMP_EQ_OQ), u);
    const __m512 v = _mm512_sub_ps(u, a.low);
    const __m512 ab = _mm512_abs_ps(v);
    const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(ab, a.twice),
                                          _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 extra = _mm512_sub_ps(ab, _mm512_mul_ps(q, a.twice));
    const __m512 flipped = _mm512_sub_ps(a.twice, extra);
    u = _mm512_add_ps(
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask(extra, flipped, _CMP_GT_OQ), extra, flipped),
        a.low);
    if (a.degenerate) u = zero;
  }
  return _mm512_min_ps(_mm512_max_ps(u, zero), a.hi);
}

inline __m512i PairStartW(__m512 x0, const AxisW& a) {
  const __m512i i = _mm512_cvttps_epi32(x0);
  const __mmask16 ok = _mm512_cmpgt_epi32_mask(i, _mm512_set1_epi32(-2)) &
                       _mm512_cmpgt_epi32_mask(a.size, i);
  return _mm512_mask_blend_epi32(ok, a.size, i);
}

// Whether this CPU fetches taps with gathers (Intel), unless ATTENTION_JAX_NATIVE_GATHER=0/1
// says otherwise (to compare the two, and to test both on one machine).
bool TapsByGather() {
  static const bool gather = [] {
    const char* env = std::getenv("ATTENTION_JAX_NATIVE_GATHER");
    if (env != nullptr && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return gather;
}

template <int PAD, bool GATHER>
inline void SampleSixteenC1(const float* __restrict g, const float* __restrict pad, int32_t pw,
                            const AxisW& ax, const AxisW& ay, float* __restrict o) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2,
                                        0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 a = _mm512_loadu_ps(g), b = _mm512_loadu_ps(g + 16);
  const __m512 ux = SourceW<PAD>(_mm512_permutex2var_ps(a, even, b), ax);
  const __m512 uy = SourceW<PAD>(_mm512_permutex2var_ps(a, odd, b), ay);
  const __m512 x0 = _mm512_roundscale_ps(ux, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 y0 = _mm512_roundscale_ps(uy, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 tx = _mm512_sub_ps(ux, x0), ty = _mm512_sub_ps(uy, y0);
  const __m512i q = _mm512_add_epi32(
      _mm512_mullo_epi32(PairStartW(y0, ay), _mm512_set1_epi32(pw)),
      _mm512_add_epi32(PairStartW(x0, ax), _mm512_set1_epi32(pw + 1)));
  __m512 r0a, r0b, r1a, r1b;  // tap pairs: row y0 of points 0-7, 8-15; row y0 + 1 likewise
  if constexpr (GATHER) {
    const __m256i q0 = _mm512_castsi512_si256(q), q1 = _mm512_extracti64x4_epi64(q, 1);
    const __m256i vpw = _mm256_set1_epi32(pw);
    const double* base = reinterpret_cast<const double*>(pad);
    r0a = _mm512_castpd_ps(_mm512_i32gather_pd(q0, base, 4));
    r0b = _mm512_castpd_ps(_mm512_i32gather_pd(q1, base, 4));
    r1a = _mm512_castpd_ps(_mm512_i32gather_pd(_mm256_add_epi32(q0, vpw), base, 4));
    r1b = _mm512_castpd_ps(_mm512_i32gather_pd(_mm256_add_epi32(q1, vpw), base, 4));
  } else {
    alignas(64) int32_t off[16];
    alignas(64) double stage[32];
    _mm512_store_si512(off, q);
    for (int i = 0; i < 16; ++i) {
      double p0, p1;
      std::memcpy(&p0, pad + off[i], 8);
      std::memcpy(&p1, pad + off[i] + pw, 8);
      stage[i] = p0;
      stage[16 + i] = p1;
    }
    r0a = _mm512_castpd_ps(_mm512_load_pd(stage));
    r0b = _mm512_castpd_ps(_mm512_load_pd(stage + 8));
    r1a = _mm512_castpd_ps(_mm512_load_pd(stage + 16));
    r1b = _mm512_castpd_ps(_mm512_load_pd(stage + 24));
  }
  const __m512 v00 = _mm512_permutex2var_ps(r0a, even, r0b);
  const __m512 v01 = _mm512_permutex2var_ps(r0a, odd, r0b);
  const __m512 v10 = _mm512_permutex2var_ps(r1a, even, r1b);
  const __m512 v11 = _mm512_permutex2var_ps(r1a, odd, r1b);
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 sx = _mm512_sub_ps(one, tx), sy = _mm512_sub_ps(one, ty);
  __m512 r = _mm512_mul_ps(_mm512_mul_ps(sx, sy), v00);
  r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(tx, sy), v01));
  r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(sx, ty), v10));
  r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(tx, ty), v11));
  _mm512_storeu_ps(o, r);
}
#endif  // AJ_AVX512

template <int PAD, bool ALIGN>
void SampleRunC1(const float* __restrict gp, const float* __restrict pad, int64_t len, int64_t h,
                 int64_t w, float* __restrict o) {
  const AxisV ax(MakeAxis<float>(w, ALIGN)), ay(MakeAxis<float>(h, ALIGN));
  const int32_t pw = static_cast<int32_t>(w + 3);
  int64_t j = 0;
#ifdef AJ_AVX512
  const AxisW axw(MakeAxis<float>(w, ALIGN)), ayw(MakeAxis<float>(h, ALIGN));
  if (TapsByGather()) {
    for (; j + 16 <= len; j += 16)
      SampleSixteenC1<PAD, true>(gp + 2 * j, pad, pw, axw, ayw, o + j);
  } else {
    for (; j + 16 <= len; j += 16)
      SampleSixteenC1<PAD, false>(gp + 2 * j, pad, pw, axw, ayw, o + j);
  }
#endif
  for (; j + 8 <= len; j += 8) SampleEightC1<PAD>(gp + 2 * j, pad, pw, ax, ay, o + j);
  if (j < len) {  // the last 1-7 points: through the same code on a zero-filled copy
    alignas(32) float g[16] = {}, r[8];
    std::memcpy(g, gp + 2 * j, sizeof(float) * 2 * (len - j));
    SampleEightC1<PAD>(g, pad, pw, ax, ay, r);
    std::memcpy(o + j, r, sizeof(float) * (len - j));
  }
}

using SampleRunFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float*);

SampleRunFn PickSampleRun(int64_t padding, bool align) {
  return WithPadding(padding, align, [](auto pad, auto al) -> SampleRunFn {
    return SampleRunC1<decltype(pad)::value, decltype(al)::value>;
  });
}

// Whether the padded path applies: float32, one channel, offsets fit int32, and enough points
// per image to pay for copying it (the copy is ~10x cheaper per pixel than a point).
template <typename T>
bool UsePaddedC1(const Dims& d) {
  return std::is_same_v<T, float> && d.c == 1 && (d.h + 3) * (d.w + 3) < (int64_t{1} << 31) &&
         8 * d.ho * d.wo >= d.h * d.w;
}

template <typename T>
void ForwardPaddedC1(ffi::ThreadPool& pool, const T* xp, const T* gp, T* op, const Dims& d,
                     int64_t padding, bool align) {
  if constexpr (std::is_same_v<T, float>) {
    const SampleRunFn run = PickSampleRun(padding, align);
    const int64_t p = d.ho * d.wo, hw = d.h * d.w;
    // Small chunks: the caller starts at once and keeps claiming chunks while a pool thread
    // wakes up (tens of microseconds on a busy VM), so a late helper never makes it wait on
    // a big chunk (with 2048-point chunks, 8 images of 28x28 ran 1.25x PyTorch, now ~1x).
    aj::ParallelFor(pool, d.n * p, 512, [&](int64_t begin, int64_t end) {
      std::unique_ptr<float[]> pad(new float[(d.h + 3) * (d.w + 3)]);
      int64_t padded = -1;  // the image now in pad
      ForBlocks(begin, end, p, [&](int64_t n, int64_t j0, int64_t len) {
        if (n != padded) {
          PadImage(xp + n * hw, d.h, d.w, pad.get());
          padded = n;
        }
        const int64_t first = n * p + j0;
        run(gp + 2 * first, pad.get(), len, d.h, d.w, op + first);
      });
    }, /*chunks_per_thread=*/16);
  }
}
#endif  // AJ_AVX2

template <ffi::DataType DT>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> grid,
                   ffi::ResultBuffer<DT> out, int64_t padding, int64_t align_corners) {
  using T = ffi::NativeType<DT>;
  Dims d;
  if (auto err = CheckDims(x, grid, d); err.failure()) return err;
  const T* xp = x.typed_data();
  const T* gp = grid.typed_data();
  T* op = out->typed_data();
  const GeometryFn<T> geometry = PickGeometry<T>(padding, align_corners != 0);
  const int64_t p = d.ho * d.wo, c = d.c, hw = d.h * d.w;
  if (hw == 0) {  // an empty image: every tap is outside (and the clamped offsets are invalid)
    std::memset(op, 0, sizeof(T) * d.n * p * c);
    return ffi::Error::Success();
  }
#ifdef AJ_AVX2
  if (UsePaddedC1<T>(d)) {
    ForwardPaddedC1(pool, xp, gp, op, d, padding, align_corners != 0);
    return ffi::Error::Success();
  }
#endif
  aj::ParallelFor(pool, d.n * p, 2048, [&](int64_t begin, int64_t end) {
    auto geo = std::make_unique<Geometry<T>>();
    ForBlocks(begin, end, p, [&](int64_t n, int64_t j0, int64_t len) {
      const int64_t first = n * p + j0;
      geometry(gp + 2 * first, len, d.h, d.w, *geo);
      const T* __restrict img = xp + n * hw * c;
      T* __restrict o = op + first * c;
      if (c == 1) {
        SampleC1(img, o, len, *geo);
        return;
      }
      for (int64_t j = 0; j < len; ++j) {
        T w[4];
        Weights(geo->tx[j], geo->ty[j], w);
        T* __restrict oj = o + j * c;
        for (int64_t ch = 0; ch < c; ++ch) oj[ch] = 0;
        for (int k = 0; k < 4; ++k) {
          const int32_t off = geo->off[k][j];
          if (off < 0) continue;
          const T* __restrict src = img + static_cast<int64_t>(off) * c;
          const T wk = w[k];
          for (int64_t ch = 0; ch < c; ++ch) oj[ch] += wk * src[ch];
        }
      }
    });
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> grid,
                    ffi::Buffer<DT> g, ffi::ResultBuffer<DT> gx, ffi::ResultBuffer<DT> ggrid,
                    int64_t padding, int64_t align_corners) {
  using T = ffi::NativeType<DT>;
  Dims d;
  if (auto err = CheckDims(x, grid, d); err.failure()) return err;
  const T* xp = x.typed_data();
  const T* gp = grid.typed_data();
  const T* gop = g.typed_data();
  T* gxp = gx->typed_data();
  T* ggp = ggrid->typed_data();
  const GeometryFn<T> geometry = PickGeometry<T>(padding, align_corners != 0);
  const int64_t p = d.ho * d.wo, c = d.c, hw = d.h * d.w;
  if (hw == 0) {  // an empty image: no gradient anywhere
    std::memset(ggp, 0, sizeof(T) * d.n * p * 2);
    return ffi::Error::Success();
  }
  // Whole images per thread (each writes only its own images' d x): the scatter-add needs no
  // atomics.
  aj::ParallelFor(pool, d.n, 1, [&](int64_t nb, int64_t ne) {
    std::memset(gxp + nb * hw * c, 0, sizeof(T) * (ne - nb) * hw * c);
    auto geo = std::make_unique<Geometry<T>>();
    ForBlocks(nb * p, ne * p, p, [&](int64_t n, int64_t j0, int64_t len) {
      const int64_t first = n * p + j0;
      geometry(gp + 2 * first, len, d.h, d.w, *geo);
      const T* __restrict img = xp + n * hw * c;
      T* __restrict gimg = gxp + n * hw * c;
      const T* __restrict go = gop + first * c;
      T* __restrict gg = ggp + 2 * first;
      if (c == 1) {
        GridGradC1(img, go, gg, len, *geo);
        for (int64_t j = 0; j < len; ++j) {  // d x: scatter-add (scalar: taps may collide)
          T w[4];
          Weights(geo->tx[j], geo->ty[j], w);
          for (int k = 0; k < 4; ++k) {
            const int32_t off = geo->off[k][j];
            if (off >= 0) gimg[off] += w[k] * go[j];
          }
        }
        return;
      }
      for (int64_t j = 0; j < len; ++j) {
        T w[4];
        Weights(geo->tx[j], geo->ty[j], w);
        const T* __restrict goj = go + j * c;
        T dot[4] = {0, 0, 0, 0};  // <tap value, d out>
        for (int k = 0; k < 4; ++k) {
          const int32_t off = geo->off[k][j];
          if (off < 0) continue;
          const T* __restrict src = img + static_cast<int64_t>(off) * c;
          T* __restrict dst = gimg + static_cast<int64_t>(off) * c;
          const T wk = w[k];
          T acc = 0;
          for (int64_t ch = 0; ch < c; ++ch) {
            acc += src[ch] * goj[ch];
            dst[ch] += wk * goj[ch];
          }
          dot[k] = acc;
        }
        const T tx = geo->tx[j], ty = geo->ty[j];
        gg[2 * j] = geo->mx[j] * ((1 - ty) * (dot[1] - dot[0]) + ty * (dot[3] - dot[2]));
        gg[2 * j + 1] = geo->my[j] * ((1 - tx) * (dot[2] - dot[0]) + tx * (dot[3] - dot[1]));
      }
    });
  });
  return ffi::Error::Success();
}

}  // namespace

#define AJ_DEFINE(NAME, DT)                                                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##Fwd, Forward<DT>,                               \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Ret<ffi::Buffer<DT>>()                           \
                                    .Attr<int64_t>("padding")                         \
                                    .Attr<int64_t>("align_corners"));                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##Bwd, Backward<DT>,                              \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Arg<ffi::Buffer<DT>>()                           \
                                    .Ret<ffi::Buffer<DT>>()                           \
                                    .Ret<ffi::Buffer<DT>>()                           \
                                    .Attr<int64_t>("padding")                         \
                                    .Attr<int64_t>("align_corners"));

extern "C" {
AJ_DEFINE(AjGridSampleBilinearF32, ffi::F32)
AJ_DEFINE(AjGridSampleBilinearF64, ffi::F64)
}
