// FlashAttention for XLA:CPU through the XLA FFI: softmax(scale * q k^T) v, float32, forward
// and backward, for the unmasked dot-product scores of attention_jax/functional/_flash.py
// (which keeps the general path: masks, biases, other dtypes, other backends). Same algorithm
// and residuals as that file's custom VJP: the forward saves, per query, the row max m and
// 1 / row sum; the backward recomputes each score block from them and uses
// dS = P * (dP - rowsum(dO * O)).
//
// Why a kernel: on XLA:CPU the blocked JAX version pays for each block's scores, exponentials
// and probabilities as separate buffers and passes; here a (64 queries x 256 keys) block stays
// in L1/L2 and every matmul is one register-blocked micro-kernel (AVX2/FMA: 6 rows x 16
// columns of C in twelve ymm accumulators; AVX-512: 12 rows x 32 columns in 24 zmm), the
// layout of the few GEMM shapes attention needs.
//
// Layout: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv), one leading batch (all leading dims
// flattened, identical on q/k/v); D and Dv multiples of 8. Built only where AVX2/FMA are
// available (the Python side checks that the symbols exist).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common.h"

#ifdef AJ_AVX2

namespace {

constexpr int64_t kBq = 64;   // query rows per block
constexpr int64_t kGroup = 4;  // forward: query blocks that share each key block
constexpr int64_t kBk = 256;  // keys per block (a multiple of 16)

// The B operand of Gemm: B(k, j) = p[(j / 16) * panel + k * ldb + j % 16]. Packed operands
// are stored as 16-column panels (ldb = 16, each panel contiguous): rows of a plain row-major
// matrix 256 B or 4 KB apart map to few L1 sets and were measured ~1.5x slower.
struct BMat {
  const float* p;
  int64_t ldb, panel;
};

inline BMat Plain(const float* x, int64_t ld) { return {x, ld, 16}; }

// C[r][0:8 NV] (+)= sum_k A(r, k) B[k][0:8 NV] for r < R, with A(r, k) = a[r * rs + k * ks]:
// the same kernel serves A B (rs = lda, ks = 1) and A^T B (rs = 1, ks = lda).
template <int R, int NV, bool ACC>
inline void Micro(const float* __restrict a, int64_t rs, int64_t ks,
                  const float* __restrict b, int64_t ldb, int64_t K, float* __restrict c,
                  int64_t ldc) {
  // Fully unrolled over (r, v); accumulators start at zero and C is added at the end (with
  // loops left to GCC, it spilled every accumulator to the stack on each k: 2.5x slower).
  __m256 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + k * ldb + 8 * v);
    const float* ak = a + k * ks;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(ak + r * rs);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      float* cp = c + r * ldc + 8 * v;
      _mm256_storeu_ps(cp, ACC ? _mm256_add_ps(_mm256_loadu_ps(cp), acc[r][v]) : acc[r][v]);
    }
  }
}

template <int NV, bool ACC>
inline void Strip(int64_t rows, const float* a, int64_t rs, int64_t ks, const float* b,
                  int64_t ldb, int64_t K, float* c, int64_t ldc) {
  switch (rows) {
    case 6: return Micro<6, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 5: return Micro<5, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 4: return Micro<4, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 3: return Micro<3, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 2: return Micro<2, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    default: return Micro<1, NV, ACC>(a, rs, ks, b, ldb, K, c, ldc);
  }
}

#ifdef AJ_AVX512
// The AVX-512 micro-kernel: C[r][0:16] (+)= sum_k A(r, k) B[k][0:16] for r < R (R <= 12),
// one zmm accumulator per row (twelve in flight hide the FMA latency). A whole 16-column
// panel per vector: AMD Zen 5 (one core, the forward at 8x8 heads, 1024 tokens, D64) ran the
// 8-lane kernel at about half the speed of XLA's own AVX-512 matmuls.
template <int R, bool ACC>
inline void Micro16(const float* __restrict a, int64_t rs, int64_t ks,
                    const float* __restrict b, int64_t ldb, int64_t K, float* __restrict c,
                    int64_t ldc) {
  __m512 acc[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 bv = _mm512_loadu_ps(b + k * ldb);
    const float* ak = a + k * ks;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(ak[r * rs]), bv, acc[r]);
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* cp = c + r * ldc;
    _mm512_storeu_ps(cp, ACC ? _mm512_add_ps(_mm512_loadu_ps(cp), acc[r]) : acc[r]);
  }
}

constexpr int64_t kStrip16 = 12;  // rows per strip of the AVX-512 micro-kernel

template <bool ACC>
inline void Strip16(int64_t rows, const float* a, int64_t rs, int64_t ks, const float* b,
                    int64_t ldb, int64_t K, float* c, int64_t ldc) {
  switch (rows) {
    case 12: return Micro16<12, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 11: return Micro16<11, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 10: return Micro16<10, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 9: return Micro16<9, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 8: return Micro16<8, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 7: return Micro16<7, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 6: return Micro16<6, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 5: return Micro16<5, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 4: return Micro16<4, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 3: return Micro16<3, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    case 2: return Micro16<2, ACC>(a, rs, ks, b, ldb, K, c, ldc);
    default: return Micro16<1, ACC>(a, rs, ks, b, ldb, K, c, ldc);
  }
}
// Two panels (32 columns) at once: two zmm accumulators per row, so each broadcast of A feeds
// two FMAs (the 16-column kernel issues 13 loads per 12 FMAs and is load-bound where the
// core has two load ports for 512-bit operands). Measured on the Intel Xeon (AVX-512, AMX;
// 2026-12-02, 8 x 8 heads, 1024 tokens, D 64, both cores, bench_attention.py, alternating
// runs): forward 97-99 -> 86-93 ms, forward+backward 316-322 -> 263-288 ms against the
// 16-column kernel alone (which still takes a last odd panel). Not yet measured on the AMD.
template <int R, bool ACC>
inline void Micro32(const float* __restrict a, int64_t rs, int64_t ks,
                    const float* __restrict b0, const float* __restrict b1, int64_t ldb,
                    int64_t K, float* __restrict c, int64_t ldc) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 bv0 = _mm512_loadu_ps(b0 + k * ldb), bv1 = _mm512_loadu_ps(b1 + k * ldb);
    const float* ak = a + k * ks;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r * rs]);
      acc0[r] = _mm512_fmadd_ps(av, bv0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, bv1, acc1[r]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* cp = c + r * ldc;
    _mm512_storeu_ps(cp, ACC ? _mm512_add_ps(_mm512_loadu_ps(cp), acc0[r]) : acc0[r]);
    _mm512_storeu_ps(cp + 16, ACC ? _mm512_add_ps(_mm512_loadu_ps(cp + 16), acc1[r]) : acc1[r]);
  }
}

constexpr int64_t kStrip32 = 12;  // rows per strip of the two-panel kernel

template <bool ACC>
inline void Strip32(int64_t rows, const float* a, int64_t rs, int64_t ks, const float* b0,
                    const float* b1, int64_t ldb, int64_t K, float* c, int64_t ldc) {
  switch (rows) {
    case 12: return Micro32<12, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 11: return Micro32<11, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 10: return Micro32<10, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 9: return Micro32<9, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 8: return Micro32<8, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 7: return Micro32<7, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 6: return Micro32<6, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 5: return Micro32<5, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 4: return Micro32<4, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 3: return Micro32<3, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    case 2: return Micro32<2, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
    default: return Micro32<1, ACC>(a, rs, ks, b0, b1, ldb, K, c, ldc);
  }
}
#endif  // AJ_AVX512

// C (rows x n) (+)= A (rows x K) B (K x n), n a multiple of 8, A(r, k) = a[r * rs + k * ks].
// Column panels outside, row strips inside: a (K x 16) panel of B stays in L1 for all strips.
template <bool ACC>
void Gemm(const float* a, int64_t rs, int64_t ks, BMat b, int64_t K, float* c, int64_t ldc,
          int64_t rows, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const float* bp = b.p + (j / 16) * b.panel;
    const bool two = j + 16 <= n;
#ifdef AJ_AVX512
    if (j + 32 <= n) {
      for (int64_t r = 0; r < rows; r += kStrip32) {
        Strip32<ACC>(std::min(kStrip32, rows - r), a + r * rs, rs, ks, bp, bp + b.panel, b.ldb,
                     K, c + r * ldc + j, ldc);
      }
      j += 16;  // the second panel is done
      continue;
    }
    if (two) {
      for (int64_t r = 0; r < rows; r += kStrip16) {
        Strip16<ACC>(std::min(kStrip16, rows - r), a + r * rs, rs, ks, bp, b.ldb, K,
                     c + r * ldc + j, ldc);
      }
      continue;
    }
#endif
    for (int64_t r = 0; r < rows; r += 6) {
      const int64_t m = std::min<int64_t>(6, rows - r);
      if (two) {
        Strip<2, ACC>(m, a + r * rs, rs, ks, bp, b.ldb, K, c + r * ldc + j, ldc);
      } else {
        Strip<1, ACC>(m, a + r * rs, rs, ks, bp, b.ldb, K, c + r * ldc + j, ldc);
      }
    }
  }
}

inline int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }

// x (rows x cols, row-major) as the B operand x^T (cols x rows) in 16-column panels; rows are
// zero-padded to a multiple of 16. Panel stride cols * 16. (Rows outside, so x is read in
// order; each panel is 4 KB at cols = 64 and stays in L1 while it is written.)
void PackTransposedPanels(const float* x, int64_t rows, int64_t cols, float* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    float* panel = out + (r0 / 16) * cols * 16;
    const int64_t nr = std::min<int64_t>(16, rows - r0);
    if (nr < 16) std::memset(panel, 0, sizeof(float) * cols * 16);
    for (int64_t i = 0; i < nr; ++i) {
      const float* src = x + (r0 + i) * cols;
      for (int64_t c = 0; c < cols; ++c) panel[c * 16 + i] = src[c];
    }
  }
}

// x (rows x cols, row-major) as the B operand x (rows x cols) in 16-column panels (the last
// zero-padded to 16). Panel stride rows * 16.
void PackPanels(const float* x, int64_t rows, int64_t cols, float* out) {
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    float* panel = out + (c0 / 16) * rows * 16;
    const int64_t nc = std::min<int64_t>(16, cols - c0);
    if (nc == 16) {
      for (int64_t r = 0; r < rows; ++r) std::memcpy(panel + r * 16, x + r * cols + c0, 64);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(panel + r * 16, x + r * cols + c0, sizeof(float) * nc);
        std::memset(panel + r * 16 + nc, 0, sizeof(float) * (16 - nc));
      }
    }
  }
}

// The B operands those two layouts hold, from row j0 of the packed matrix x (j0 a multiple
// of 16 for the transposed one): columns j0.. of x^T (K = cols) ...
inline BMat TransposedPanelsAt(const float* packed, int64_t cols, int64_t j0) {
  return {packed + j0 * cols, 16, cols * 16};
}

// ... and rows j0.. of x (K = rows - j0 at most).
inline BMat PanelsAt(const float* packed, int64_t rows, int64_t j0) {
  return {packed + j0 * 16, 16, rows * 16};
}

// exp(x) for eight lanes with x <= 0 (every argument here is a score minus its row max):
// x = n ln2 + r (Cody-Waite, two constants), |r| <= ln2 / 2, and e^r by a degree-5 polynomial
// (1, 1 and four coefficients fitted for minimum relative error; 1.8e-7 max relative error in
// float32 over [-87.3, 0], checked against float64), times 2^n. Cephes' degree-7 form is ~1
// ulp but costs three more operations; exp is ~13% of the forward. Below -87.3 (exp underflows
// float32) the argument is clamped there, giving ~1e-38 instead of 0, which no sum containing
// exp(0) = 1 can see. NaN stays NaN (_mm256_max_ps returns its second operand on NaN).
// The constants, shared by every width (Exp16 below) so the lanes agree.
constexpr float kExpMin = -87.33654f;            // exp underflows float32 below this
constexpr float kLog2E = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;  // Cody-Waite split of ln 2
constexpr float kExpPoly[4] = {0.008312528021633625f, 0.04189011827111244f,
                               0.16667114198207855f, 0.499992311000824f};  // r^5 .. r^2

inline __m256 Exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(kExpMin), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 4; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#ifdef AJ_AVX512
// Exp8 on sixteen lanes: the same operations and constants, so each lane's value is Exp8's.
// Intel Xeon, same benchmark: forward 89-100 -> 82-91 ms, forward+backward 270-286 -> 256-281.
inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(kExpMin), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 4; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __m512i e = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
#endif

// Same function for a single value (row tails), so that every element sees one exp.
inline float Exp1(float x) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, Exp8(_mm256_set1_ps(x)));
  return buf[0];
}

// Sum of the eight lanes (pairwise).
inline float HSum8(__m256 v) {
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  return ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

float RowMax(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + c));
  alignas(32) float buf[8];
  _mm256_store_ps(buf, m);
  float r = buf[0];
  for (int i = 1; i < 8; ++i) r = std::max(r, buf[i]);
  for (; c < n; ++c) r = std::max(r, x[c]);
  return r;
}

// x[c] <- exp(x[c] - shift) (* mult if SCALE) for c < n, 0 for n <= c < np; returns
// sum_c exp(x[c] - shift).
template <bool SCALE>
float ExpRow(float* x, int64_t n, int64_t np, float shift, float mult) {
  const __m256 s = _mm256_set1_ps(shift), mu = _mm256_set1_ps(mult);
  __m256 acc = _mm256_setzero_ps();
  int64_t c = 0;
#ifdef AJ_AVX512
  {
    const __m512 s16 = _mm512_set1_ps(shift), mu16 = _mm512_set1_ps(mult);
    __m512 acc16 = _mm512_setzero_ps();
    for (; c + 16 <= n; c += 16) {
      const __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(x + c), s16));
      acc16 = _mm512_add_ps(acc16, e);
      _mm512_storeu_ps(x + c, SCALE ? _mm512_mul_ps(e, mu16) : e);
    }
    acc = _mm256_add_ps(_mm512_castps512_ps256(acc16),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc16), 1)));
  }
#endif
  for (; c + 8 <= n; c += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + c), s));
    acc = _mm256_add_ps(acc, e);
    _mm256_storeu_ps(x + c, SCALE ? _mm256_mul_ps(e, mu) : e);
  }
  float sum = HSum8(acc);
  for (; c < n; ++c) {
    const float e = Exp1(x[c] - shift);
    sum += e;
    x[c] = SCALE ? e * mult : e;
  }
  for (; c < np; ++c) x[c] = 0.f;
  return sum;
}

float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
  float s = HSum8(acc);
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}

struct Dims {
  int64_t n, tq, tk, d, dv;
};

ffi::Error CheckDims(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                     const ffi::Buffer<ffi::F32>& v, Dims& s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  const size_t r = qd.size();
  if (r < 2 || kd.size() != r || vd.size() != r) {
    return ffi::Error::InvalidArgument("flash attention kernel: want q (..., Tq, D), k (..., "
                                       "Tk, D), v (..., Tk, Dv) of the same rank");
  }
  s.n = 1;
  for (size_t i = 0; i + 2 < r; ++i) {
    if (qd[i] != kd[i] || qd[i] != vd[i]) {
      return ffi::Error::InvalidArgument("flash attention kernel: leading dims differ");
    }
    s.n *= qd[i];
  }
  s.tq = qd[r - 2];
  s.d = qd[r - 1];
  s.tk = kd[r - 2];
  s.dv = vd[r - 1];
  if (kd[r - 1] != s.d || vd[r - 2] != s.tk || s.d % 8 != 0 || s.dv % 8 != 0) {
    return ffi::Error::InvalidArgument("flash attention kernel: bad head dims (want D, Dv "
                                       "multiples of 8 and matching q/k, k/v)");
  }
  return ffi::Error::Success();
}

// Per-thread buffers, kept between calls (thread_local): allocating them per call (fresh
// pages, zero-filled) cost several percent. One head's packed operands: kt = K^T and vt = V^T
// in panels (for S = Q K^T and dP = dO V^T), vp = V and kp = K in panels (for P V and dS K).
// Nothing relies on their contents between uses.
struct Scratch {
  std::vector<float> kt, vt, vp, kp, qs, s, dp, acc, m, l, delta;
};

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The forward's query blocks per task: kGroup (they share each key block read from L2),
// halved while the call would have fewer tasks than threads.
int64_t TaskGroup(const Dims& x, int64_t threads) {
  int64_t group = kGroup;
  while (group > 1 && x.n * CeilDiv(x.tq, kBq * group) < std::max<int64_t>(1, threads)) {
    group /= 2;
  }
  return group;
}

// The backward's query ranges per head: 1 (a head per task) unless there are fewer heads than
// threads; then each head's query blocks are split into up to threads / n ranges, whose dK
// and dV are partial sums added afterwards (dQ rows belong to one range).
int64_t BackwardParts(const Dims& x, int64_t threads) {
  threads = std::max<int64_t>(1, threads);
  if (x.n >= threads) return 1;
  return std::max<int64_t>(1, std::min(CeilDiv(x.tq, kBq), CeilDiv(threads, x.n)));
}

Scratch& ThreadScratch(const Dims& x, bool backward) {
  thread_local Scratch sc;
  auto fit = [](std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  };
  fit(sc.kt, x.d * RoundUp16(x.tk));
  fit(sc.qs, (backward ? x.tq : kBq * kGroup) * x.d);
  fit(sc.s, kBq * kBk);
  fit(sc.m, kBq * kGroup);
  fit(sc.l, kBq * kGroup);
  if (backward) {
    fit(sc.vt, x.dv * RoundUp16(x.tk));
    fit(sc.kp, RoundUp16(x.d) * x.tk);
    fit(sc.dp, kBq * kBk);
    fit(sc.delta, x.tq);
  } else {
    fit(sc.vp, RoundUp16(x.dv) * x.tk);
    fit(sc.acc, kBq * kGroup * x.dv);
  }
  return sc;
}

// Queries [i0, i0 + rows) of one head, rows <= kGroup * kBq; sc.kt and sc.vp hold this head's
// packed K^T and V. Key blocks outside, the group's query blocks inside: a (256-key) block of
// K and V (128 KB at D = 64) is read from L2 once per group instead of once per query block
// (at 4096 tokens one head's K and V are 2 MB and no longer fit in L2).
void ForwardGroup(const float* q, float* o, float* st, const Dims& x, float scale, int64_t i0,
                  int64_t rows, Scratch& sc) {
  const int64_t d = x.d, dv = x.dv;
  float* qs = sc.qs.data();
  float* s = sc.s.data();
  float* acc = sc.acc.data();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) qs[r * d + c] = q[(i0 + r) * d + c] * scale;
  std::fill(sc.m.begin(), sc.m.begin() + rows, -std::numeric_limits<float>::infinity());
  std::fill(sc.l.begin(), sc.l.begin() + rows, 0.f);
  std::fill(acc, acc + rows * dv, 0.f);
  for (int64_t j0 = 0; j0 < x.tk; j0 += kBk) {
    const int64_t bk = std::min(kBk, x.tk - j0), bkp = RoundUp16(bk);
    for (int64_t b0 = 0; b0 < rows; b0 += kBq) {
      const int64_t bq = std::min(kBq, rows - b0);
      float* ab = acc + b0 * dv;
      Gemm<false>(qs + b0 * d, d, 1, TransposedPanelsAt(sc.kt.data(), d, j0), d, s, kBk, bq, bkp);
      for (int64_t r = 0; r < bq; ++r) {
        float* row = s + r * kBk;
        const float m_old = sc.m[b0 + r];
        const float m_new = std::max(m_old, RowMax(row, bk));
        const float alpha = std::exp(m_old - m_new);  // 0 on the first block (m_old = -inf)
        sc.l[b0 + r] = sc.l[b0 + r] * alpha + ExpRow<false>(row, bk, bkp, m_new, 1.f);
        sc.m[b0 + r] = m_new;
        if (alpha != 1.f) {
          for (int64_t c = 0; c < dv; ++c) ab[r * dv + c] *= alpha;
        }
      }
      Gemm<true>(s, kBk, 1, PanelsAt(sc.vp.data(), x.tk, j0), bk, ab, dv, bq, dv);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = sc.l[r] > 0 ? 1.f / sc.l[r] : 0.f;
    for (int64_t c = 0; c < dv; ++c) o[(i0 + r) * dv + c] = acc[r * dv + c] * inv;
    st[(i0 + r) * 2] = std::isfinite(sc.m[r]) ? sc.m[r] : 0.f;
    st[(i0 + r) * 2 + 1] = inv;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> stats, float scale) {
  Dims x;
  if (auto err = CheckDims(q, k, v, x); err.failure()) return err;
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  float* sp = stats->typed_data();
  if (x.tk == 0) {  // no keys: zero output, as the JAX path
    std::memset(op, 0, sizeof(float) * x.n * x.tq * x.dv);
    std::memset(sp, 0, sizeof(float) * x.n * x.tq * 2);
    return ffi::Error::Success();
  }
  // Query blocks per task: kGroup, halved while that leaves fewer tasks than threads (one head
  // of 256 queries at batch 1 was one task, one thread busy: 1.6x PyTorch's forward on the
  // 2-core AMD EPYC Zen 4, 1.0-1.3x with two tasks; each task packs its head's K and V).
  const int64_t rows = kBq * TaskGroup(x, pool.num_threads());
  const int64_t nqb = CeilDiv(x.tq, rows);  // tasks per head
  aj::ParallelFor(pool, x.n * nqb, 1, [&](int64_t begin, int64_t end) {
    Scratch& sc = ThreadScratch(x, false);
    int64_t packed = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / nqb, i0 = (t % nqb) * rows;
      if (h != packed) {
        PackTransposedPanels(kp + h * x.tk * x.d, x.tk, x.d, sc.kt.data());
        PackPanels(vp + h * x.tk * x.dv, x.tk, x.dv, sc.vp.data());
        packed = h;
      }
      ForwardGroup(qp + h * x.tq * x.d, op + h * x.tq * x.dv, sp + h * x.tq * 2, x, scale, i0,
                   std::min(rows, x.tq - i0), sc);
    }
  }, /*chunks_per_thread=*/32);
  return ffi::Error::Success();
}

// One head's gradients. Key blocks outside, query blocks inside (FlashAttention-2's order):
// the block's dK and dV rows (2 x 256 x D floats) stay in cache while every query block adds
// to them, and dQ is what goes back and forth (once per key block). Query blocks outside
// re-read and re-wrote all of dK and dV per query block (1.2x slower here).
// Query rows [qa, qb) of one head (qa a multiple of kBq): their dQ rows, and their terms of
// dK and dV (all of them when [qa, qb) is every query; else a partial sum, into other memory).
void BackwardHead(const float* q, const float* k, const float* v, const float* o,
                  const float* st, const float* dout, float* dq, float* dk, float* dv,
                  const Dims& x, float scale, int64_t qa, int64_t qb, Scratch& sc) {
  const int64_t d = x.d, dvd = x.dv;
  PackTransposedPanels(k, x.tk, d, sc.kt.data());
  PackTransposedPanels(v, x.tk, dvd, sc.vt.data());
  PackPanels(k, x.tk, d, sc.kp.data());
  std::memset(dq + qa * d, 0, sizeof(float) * (qb - qa) * d);
  std::memset(dk, 0, sizeof(float) * x.tk * d);
  std::memset(dv, 0, sizeof(float) * x.tk * dvd);
  float* qs = sc.qs.data();
  float* s = sc.s.data();
  float* dp = sc.dp.data();
  for (int64_t i = qa * d; i < qb * d; ++i) qs[i] = q[i] * scale;
  for (int64_t r = qa; r < qb; ++r) sc.delta[r] = Dot(dout + r * dvd, o + r * dvd, dvd);
  for (int64_t j0 = 0; j0 < x.tk; j0 += kBk) {
    const int64_t bk = std::min(kBk, x.tk - j0), bkp = RoundUp16(bk);
    const BMat kt = TransposedPanelsAt(sc.kt.data(), d, j0);
    const BMat vt = TransposedPanelsAt(sc.vt.data(), dvd, j0);
    const BMat kp = PanelsAt(sc.kp.data(), x.tk, j0);
    for (int64_t i0 = qa; i0 < qb; i0 += kBq) {
      const int64_t bq = std::min(kBq, qb - i0);
      const float* dob = dout + i0 * dvd;
      Gemm<false>(qs + i0 * d, d, 1, kt, d, s, kBk, bq, bkp);  // S
      for (int64_t r = 0; r < bq; ++r) {                     // P = exp(S - m) / l
        ExpRow<true>(s + r * kBk, bk, bkp, st[(i0 + r) * 2], st[(i0 + r) * 2 + 1]);
      }
      Gemm<false>(dob, dvd, 1, vt, dvd, dp, kBk, bq, bkp);  // dP = dO V^T
      const __m256 sv = _mm256_set1_ps(scale);
      for (int64_t r = 0; r < bq; ++r) {  // dS * scale = P (dP - delta) scale
        const __m256 dl = _mm256_set1_ps(sc.delta[i0 + r]);
        float* pr = s + r * kBk;
        float* dr = dp + r * kBk;
        for (int64_t c = 0; c < bkp; c += 8) {
          const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(pr + c),
                                         _mm256_sub_ps(_mm256_loadu_ps(dr + c), dl));
          _mm256_storeu_ps(dr + c, _mm256_mul_ps(g, sv));
        }
      }
      Gemm<true>(s, 1, kBk, Plain(dob, dvd), bq, dv + j0 * dvd, dvd, bk, dvd);   // dV += P^T dO
      Gemm<true>(dp, 1, kBk, Plain(q + i0 * d, d), bq, dk + j0 * d, d, bk, d);  // dK += dS^T Q
      Gemm<true>(dp, kBk, 1, kp, bk, dq + i0 * d, d, bq, d);                     // dQ += dS K
    }
  }
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> stats, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, float scale) {
  Dims x;
  if (auto err = CheckDims(q, k, v, x); err.failure()) return err;
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const float* op = out.typed_data();
  const float* sp = stats.typed_data();
  const float* gp = dout.typed_data();
  float* dqp = dq->typed_data();
  float* dkp = dk->typed_data();
  float* dvp = dv->typed_data();
  if (x.tk == 0) {
    std::memset(dqp, 0, sizeof(float) * x.n * x.tq * x.d);
    return ffi::Error::Success();
  }
  const int64_t parts = BackwardParts(x, pool.num_threads());
  const int64_t qblocks = CeilDiv(x.tq, kBq);
  const int64_t kv = x.tk * (x.d + x.dv);  // one range's partial dK and dV
  // Fewer heads than threads (batch 1, one head: one thread busy, 1.1x PyTorch's
  // forward+backward on the 2-core Zen 4, 0.75-0.87x split): each range's partial dK, dV here,
  // summed below.
  std::vector<float> partial(parts > 1 ? x.n * parts * kv : 0);
  aj::ParallelFor(pool, x.n * parts, 1, [&](int64_t begin, int64_t end) {
    Scratch& sc = ThreadScratch(x, true);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / parts, p = t % parts;
      const int64_t qa = p * qblocks / parts * kBq;
      const int64_t qb = std::min(x.tq, (p + 1) * qblocks / parts * kBq);
      float* dkt = parts > 1 ? partial.data() + t * kv : dkp + h * x.tk * x.d;
      float* dvt = parts > 1 ? partial.data() + t * kv + x.tk * x.d : dvp + h * x.tk * x.dv;
      BackwardHead(qp + h * x.tq * x.d, kp + h * x.tk * x.d, vp + h * x.tk * x.dv,
                   op + h * x.tq * x.dv, sp + h * x.tq * 2, gp + h * x.tq * x.dv,
                   dqp + h * x.tq * x.d, dkt, dvt, x, scale, qa, qb, sc);
    }
  }, /*chunks_per_thread=*/x.n * parts);  // one range per claim
  if (parts > 1) {
    // Each head's dK rows then dV rows, (x.tk * (d + dv)) floats, sum of its parts'.
    aj::ParallelFor(pool, x.n * kv, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t h = i / kv, j = i % kv;
        const float* src = partial.data() + h * parts * kv + j;
        float acc = 0.f;
        for (int64_t p = 0; p < parts; ++p) acc += src[p * kv];
        if (j < x.tk * x.d) {
          dkp[h * x.tk * x.d + j] = acc;
        } else {
          dvp[h * x.tk * x.dv + (j - x.tk * x.d)] = acc;
        }
      }
    });
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" {
XLA_FFI_DEFINE_HANDLER_SYMBOL(AjFlashAttentionF32Fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AjFlashAttentionF32Bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
}

#endif  // AJ_AVX2
