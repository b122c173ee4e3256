// One step of a relevance-screened (or window) memory's attention over its
// slots, forward and reverse, for XLA's CPU backend (relscreen/kernels.py
// builds and registers them).
//
// Forward (SlotsAttend), per row b: e_m = v . tanh(q + keys[m]) for the slots
// holding a state (time[m] >= 0), alpha = softmax(e) over them (0 elsewhere; a
// row with none gets 0 everywhere), context = sum_m alpha_m vals[m]. XLA runs
// that as half a dozen loops; here it is one pass over the keys and one over
// the values per row.
//
// Reverse (SlotsReverse). XLA runs this step as about a dozen loops over the
// [b, m, h] banks: the undo of the step's store on four banks, tanh(q + k_j),
// the weights' cotangents, and the sums of the keys', values' and v's
// cotangents. Here each batch row makes two passes over its slots: one reads
// the values for d alpha, the other computes tanh once per slot and unit and
// adds every cotangent. The four banks are updated in place (XLA aliases them
// to the outputs).
//
// Per row b, with j = s_col[b] and r = r_col[b] (-1: no R slot was written):
//   undo:  d_vals[j] = d_vals[r], d_keys[j] = d_keys[r] (0 if r < 0), then
//          d_vals[r] = d_keys[r] = 0; vals[j] = back, keys[j] = back_key,
//          vals[r] = put_back, keys[r] = put_back_key;
//   attention reverse, t_m = tanh(q + keys[m]):
//          d alpha_m = vals[m] . d_context, ds_m = alpha_m (d alpha_m - sum_n alpha_n d alpha_n),
//          g_m = ds_m v (1 - t_m^2); d_keys[m] += g_m, d_q = sum_m g_m,
//          d_vals[m] += alpha_m d_context, d_v += sum_m ds_m t_m (over rows too).
// Slots with weight 0 (empty) get nothing, as in the XLA path.
//
// Both run their rows in chunks of 8, on XLA's intra-op threads when the banks
// are large (ForChunks).
//
// RnnBlockReverse: a block of the reverse pass's steps of an RNN cell with
// tanh or an LSTM cell, each step's cell, matrix products and mixing around
// the reverse step above, in one call; RnnForward: the forward scan of the
// same cells over a relevance memory (any relevance and eviction rule) or a
// window, the attention, the cell and the store with its screening at every
// step (see their own comments).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// float tanh as a rational function of x (odd degree 13 over even degree 6),
// clamped where float's tanh is +-1: within 5 ulp of tanh, as XLA's own, and
// plain arithmetic the compiler vectorises. TanhRational is the function on x
// within the clamp, for a float or a vector of them (VTanh below).
constexpr float kTanhClamp = 7.90531110763549805f;

template <typename X>
inline X TanhRational(X x) {
  const X x2 = x * x;
  X p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  X q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p * x / q;
}

inline float Tanh(float x) {
  return TanhRational(std::min(std::max(x, -kTanhClamp), kTanhClamp));
}

inline double Tanh(double x) { return std::tanh(x); }

// The logistic function: from the float32 tanh above (vectorizes), std::exp in float64.
inline float Sigmoid(float x) { return 0.5f + 0.5f * Tanh(0.5f * x); }
inline double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The 512-bit vector of T (GCC and Clang vector extensions: the compiler maps
// it to the target's own vectors).
template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(64))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(64))); };

// Asks the cache for n elements from p (reads a later step makes).
template <typename T>
inline void Prefetch(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(T)); o += 64) __builtin_prefetch(c + o);
}

template <typename T>
constexpr int64_t kLanes = sizeof(typename Vec<T>::type) / sizeof(T);

template <typename T>
inline typename Vec<T>::type Load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void Store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// x as it is: keeps the compiler from fusing the product x into the sum it
// feeds (a fused multiply-add rounds once; the loops these replaced did not fuse
// there, and their float32 results are kept to the bit). Only where a 512-bit
// vector is one register (AVX-512); elsewhere the compiler may fuse, which
// changes float rounding only.
template <typename V>
inline V Rounded(V x) {
#if defined(__GNUC__) && defined(__AVX512F__)
  asm("" : "+v"(x));
#endif
  return x;
}

// Tanh lane by lane: the float32 function above on a vector, as the compiler
// made of it (beyond the clamp exactly +-1, which the rational function at the
// clamp is not: 0.99999976), with the target's min, max, compares and blends
// where it has AVX-512 (the compiler's own selects cost 10% of the attention);
// float64's std::tanh per lane.
inline Vec<float>::type VTanh(Vec<float>::type x) {
  typedef Vec<float>::type V;
  const float c = kTanhClamp;
  const V x0 = x;
#ifdef __AVX512F__
  x = (V)_mm512_min_ps(_mm512_set1_ps(c), _mm512_max_ps(_mm512_set1_ps(-c), (__m512)x));
#else
  x = x < -c ? -c : x;
  x = x > c ? c : x;
#endif
  V r = TanhRational(x);
#ifdef __AVX512F__
  const __m512 z = (__m512)x0;
  r = (V)_mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_set1_ps(c), _CMP_GT_OQ), (__m512)r,
                              _mm512_set1_ps(1.f));
  r = (V)_mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_set1_ps(-c), _CMP_LT_OQ), (__m512)r,
                              _mm512_set1_ps(-1.f));
#else
  r = x0 > c ? 1.f : r;
  r = x0 < -c ? -1.f : r;
#endif
  return r;
}

inline Vec<double>::type VTanh(Vec<double>::type x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = std::tanh(x[i]);
  return x;
}

// x . y over n elements: one vector of per-lane sums, then its lanes in order
// (the order the compiler's vectorised reduction took, kept to the bit).
template <typename T>
inline T Dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  constexpr int64_t N = kLanes<T>;
  const int64_t full = n / N * N;
  typename Vec<T>::type acc = {};
  for (int64_t i = 0; i < full; i += N) acc += Load(x + i) * Load(y + i);
  T s = 0;
  for (int64_t l = 0; l < N; ++l) s += acc[l];
  for (int64_t i = full; i < n; ++i) s += x[i] * y[i];
  return s;
}

// The reverse step for batch row b (see the top of the file); the row's d v
// is added to d_v, d_query[b] is overwritten; d_alpha: scratch of M.
template <typename T>
void ReverseRow(int64_t b, int64_t M, int64_t H, T* __restrict vals, T* __restrict keys,
                T* __restrict d_vals, T* __restrict d_keys, int64_t j, int64_t r, const T* back,
                const T* back_key, const T* put_back, const T* put_back_key,
                const T* __restrict q, const T* __restrict a, const T* __restrict v,
                const T* __restrict dc, T* __restrict dq, T* __restrict d_v, T* __restrict d_alpha) {
  const int64_t row = b * M * H;
  const bool s_ok = j >= 0 && j < M, r_ok = r >= 0 && r < M;
  if (s_ok) {
    T* dvj = d_vals + row + j * H;
    T* dkj = d_keys + row + j * H;
    if (r_ok) {
      std::copy(d_vals + row + r * H, d_vals + row + (r + 1) * H, dvj);
      std::copy(d_keys + row + r * H, d_keys + row + (r + 1) * H, dkj);
    } else {
      std::fill(dvj, dvj + H, T(0));
      std::fill(dkj, dkj + H, T(0));
    }
    std::copy(back, back + H, vals + row + j * H);
    std::copy(back_key, back_key + H, keys + row + j * H);
  }
  if (r_ok) {
    std::fill(d_vals + row + r * H, d_vals + row + (r + 1) * H, T(0));
    std::fill(d_keys + row + r * H, d_keys + row + (r + 1) * H, T(0));
    std::copy(put_back, put_back + H, vals + row + r * H);
    std::copy(put_back_key, put_back_key + H, keys + row + r * H);
  }
  std::fill(dq, dq + H, T(0));
  T weighted = 0;
  for (int64_t m = 0; m < M; ++m) {
    d_alpha[m] = Dot(vals + row + m * H, dc, H);
    weighted += a[m] * d_alpha[m];
  }
  constexpr int64_t N = kLanes<T>;
  const int64_t full = H / N * N;
  for (int64_t m = 0; m < M; ++m) {
    const T am = a[m];
    if (am == T(0)) continue;
    const T ds = am * (d_alpha[m] - weighted);
    const T* km = keys + row + m * H;
    T* dkm = d_keys + row + m * H;
    T* dvm = d_vals + row + m * H;
    for (int64_t h = 0; h < full; h += N) {
      const auto t = VTanh(Load(q + h) + Load(km + h));
      const auto g = ds * Load(v + h) * (T(1) - t * t);
      Store(dq + h, Load(dq + h) + g);
      Store(dkm + h, Load(dkm + h) + g);
      Store(d_v + h, Load(d_v + h) + Rounded(ds * t));
      Store(dvm + h, Load(dvm + h) + am * Load(dc + h));
    }
    for (int64_t h = full; h < H; ++h) {
      const T t = Tanh(q[h] + km[h]);
      const T g = ds * v[h] * (T(1) - t * t);
      dq[h] += g;
      dkm[h] += g;
      d_v[h] += ds * t;
      dvm[h] += am * dc[h];
    }
  }
}

template <typename T>
void SlotsReverse(int64_t b0, int64_t b1, int64_t M, int64_t H, T* __restrict vals, T* __restrict keys,
                  T* __restrict d_vals, T* __restrict d_keys, const int32_t* s_col,
                  const int32_t* r_col, const T* back, const T* back_key, const T* put_back,
                  const T* put_back_key, const T* __restrict query, const T* __restrict alpha,
                  const T* __restrict v, const T* __restrict d_context, T* __restrict d_query,
                  T* __restrict d_v) {
  std::fill(d_v, d_v + H, T(0));  // this range's share of d v
  std::vector<T> d_alpha(M);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t o = b * H;
    ReverseRow<T>(b, M, H, vals, keys, d_vals, d_keys, s_col[b], r_col[b], back + o, back_key + o,
                  put_back + o, put_back_key + o, query + o, alpha + b * M, v, d_context + o,
                  d_query + o, d_v, d_alpha.data());
  }
}

// The forward step for one row: q [h], the row's banks km, vm [m, h] and slot
// times held [m]; writes ctx [h] and a [m]; lanes: scratch of m vectors. Each
// score's products go into one vector of per-lane sums, whose lanes are then
// added in order for all slots at once (one slot's lanes in order are a chain
// of dependent additions); the context's sums stay in registers over the slots.
template <typename T>
void AttendRow(int64_t M, int64_t H, const T* __restrict q, const T* __restrict km0,
               const T* __restrict vm0, const int32_t* __restrict held, const T* __restrict v,
               T* __restrict ctx, T* __restrict a, T* __restrict lanes) {
  typedef typename Vec<T>::type V;
  constexpr int64_t N = kLanes<T>;
  const int64_t full = H / N * N;
  for (int64_t m = 0; m < M; ++m) {
    V acc = {};
    if (held[m] >= 0) {
      const T* km = km0 + m * H;
      for (int64_t h = 0; h < full; h += N)
        acc += Rounded(Load(v + h) * VTanh(Load(q + h) + Load(km + h)));
    }
    Store(lanes + m * N, acc);
  }
  std::fill(a, a + M, T(0));
  for (int64_t l = 0; l < N; ++l)
    for (int64_t m = 0; m < M; ++m) a[m] += lanes[m * N + l];
  T peak = -std::numeric_limits<T>::infinity();
  for (int64_t m = 0; m < M; ++m) {
    if (held[m] < 0) continue;
    const T* km = km0 + m * H;
    for (int64_t h = full; h < H; ++h) a[m] += v[h] * Tanh(q[h] + km[h]);
    peak = std::max(peak, a[m]);
  }
  T total = 0;
  for (int64_t m = 0; m < M; ++m) {
    a[m] = held[m] < 0 ? T(0) : std::exp(a[m] - peak);
    total += a[m];
  }
  std::fill(ctx, ctx + H, T(0));
  if (total == T(0)) return;  // no slot holds a state: weights and context 0
  for (int64_t m = 0; m < M; ++m) a[m] /= total;
  constexpr int64_t kHeld = 8;  // vectors of the context summed in registers at a time
  for (int64_t h0 = 0; h0 < full; h0 += kHeld * N) {
    const int64_t n = std::min<int64_t>(kHeld, (full - h0) / N);
    V acc[kHeld] = {};
    for (int64_t m = 0; m < M; ++m) {
      const T am = a[m];
      if (am == T(0)) continue;
      const T* vm = vm0 + m * H + h0;
      for (int64_t i = 0; i < n; ++i) acc[i] += am * Load(vm + i * N);
    }
    for (int64_t i = 0; i < n; ++i) Store(ctx + h0 + i * N, acc[i]);
  }
  for (int64_t m = 0; m < M; ++m) {
    const T am = a[m];
    if (am == T(0)) continue;
    const T* vm = vm0 + m * H;
    for (int64_t h = full; h < H; ++h) ctx[h] += am * vm[h];
  }
}

template <typename T>
void SlotsAttend(int64_t b0, int64_t b1, int64_t M, int64_t H, const T* __restrict query,
                 const T* __restrict keys, const T* __restrict vals, const int32_t* __restrict time,
                 const T* __restrict v, T* __restrict context, T* __restrict alpha) {
  std::vector<T> scratch(M * kLanes<T>);
  for (int64_t b = b0; b < b1; ++b) {
    AttendRow<T>(M, H, query + b * H, keys + b * M * H, vals + b * M * H, time + b * M, v,
                 context + b * H, alpha + b * M, scratch.data());
  }
}

// ---------------------------------------------------------------------------
// A block of reverse steps of an RNN cell with tanh and its relevance or
// window memory (RnnBlockReverse): what the reverse pass's scan over a block of
// steps does per step, for steps t = first + n - 1 down to first, per batch
// row, from a fresh state (h_t in S's slot t mod nu):
//   pop:   dv = d_vals[j], dk = d_keys[j] (j = t mod nu);
//   cell:  dh = g_t + d_newest + dv + dk Ua^T, dpre = dh (1 - h_t^2),
//          ds = [dpre, dq_next] [V | Va]^T;
//   mix:   s_t = (newest + attn context) / 2: d_newest = ds / 2,
//          d_context = attn (ds / 2);
//   then the reverse step above with query q_t, and dq_next = its d_query;
//   its undo puts back h_{t - nu} (the state that left S) and, where
//   screening wrote an R slot, the state it had evicted, read with their keys
//   from the whole sequence's [L, b, h] arrays (no per-block copies).
// From a given state (stored and undo given): h_t is in the S slot the
// forward's records name (stored [n, b]), and the states undoing puts back,
// some of them the given memory's, come gathered by time in undo [4, n, b, h]
// (values and keys of the one that left S and of the one R had evicted).
// An LSTM cell (pre, c and dc_next given): from the step's gate
// pre-activations pre (f, i, o, g; XLA's block-wide product) and c_{t-1},
//   c_t = sig(f) c_{t-1} + sig(i) tanh(g); dc = dc_next + dh sig(o) (1 - tanh(c_t)^2),
//   dpre = [dc c_{t-1} f', dc tanh(g) i', dh tanh(c_t) o', dc sig(i) (1 - tanh(g)^2)]
//   (f' = sig(f) (1 - sig(f)), ...), dc_next = dc sig(f), ds = [dpre, dq_next] [W_s | Va]^T.
// It returns every step's dq, dpre and dk (the caller forms the matrices'
// gradients from them once per block) and the block's share of d v. Rows are
// independent but for d v, which is kept per row and summed in row order: the
// rows go in fixed groups on XLA's threads, the result the same whatever the
// number of threads.

// out[i][c0 : c_end] (+)= x[i] W for RT rows, in blocks of CV vectors of
// columns from c_begin while a whole block fits (accumulators in registers);
// returns the first column not done. Each element sums its K products in order
// from zero, then is stored (or added to out), whatever the tile: the results
// do not depend on the tiles' shapes.
template <typename T, int RT, int CV>
int64_t Tile(const T* const* x, const T* __restrict W, int64_t K, int64_t H, int64_t c_begin,
             int64_t c_end, T* const* out, bool add) {
  typedef typename Vec<T>::type V;
  constexpr int64_t L = kLanes<T>, WC = CV * L;
  int64_t c0 = c_begin;
  for (; c0 + WC <= c_end; c0 += WC) {
    V acc[RT][CV] = {};
    for (int64_t k = 0; k < K; ++k) {
      V w[CV];
      std::memcpy(w, W + k * H + c0, sizeof(w));
      for (int i = 0; i < RT; ++i) {
        const T xi = x[i][k];
        for (int c = 0; c < CV; ++c) acc[i][c] += xi * w[c];
      }
    }
    for (int i = 0; i < RT; ++i) {
      for (int c = 0; c < CV; ++c) {
        V o = acc[i][c];
        if (add) {
          V before;
          std::memcpy(&before, out[i] + c0 + c * L, sizeof(V));
          o = before + o;
        }
        std::memcpy(out[i] + c0 + c * L, &o, sizeof(V));
      }
    }
  }
  return c0;
}

// RT rows of out = x W (add: +=): tiles of 7 or 8 rows take 2 vectors of
// columns (16 or 24 accumulators, 2 vectors of W and a broadcast within
// AVX-512's 32 registers; each row of W read once for 8 rows: 25% less time
// than two tiles of 4 at K = 256), fewer rows 4 vectors; then whole vectors
// one at a time, then the last columns one by one.
template <typename T, int RT>
void TileRows(const T* const* x, const T* __restrict W, int64_t K, int64_t H, T* const* out,
              bool add) {
  constexpr int CV = RT >= 7 ? 2 : 4;
  int64_t c = Tile<T, RT, CV>(x, W, K, H, 0, H, out, add);
  c = Tile<T, RT, 1>(x, W, K, H, c, H, out, add);
  for (int i = 0; i < RT; ++i) {
    for (int64_t col = c; col < H; ++col) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x[i][k] * W[k * H + col];
      out[i][col] = add ? out[i][col] + acc : acc;
    }
  }
}

// out[r] = x[r] W (add: out[r] += x[r] W) for rows r < R; x[r] of K, W [K, H]
// row-major, out[r] of H. Groups of up to 8 rows as one tile (5 rows as one,
// 9 as 8 + 1).
template <typename T>
void RowsTimes(int64_t R, const T* const* x, const T* __restrict W, int64_t K, int64_t H,
               T* const* out, bool add) {
  for (int64_t r = 0; r < R;) {
    const int64_t take = std::min<int64_t>(R - r, 8);
    switch (take) {
      case 8: TileRows<T, 8>(x + r, W, K, H, out + r, add); break;
      case 7: TileRows<T, 7>(x + r, W, K, H, out + r, add); break;
      case 6: TileRows<T, 6>(x + r, W, K, H, out + r, add); break;
      case 5: TileRows<T, 5>(x + r, W, K, H, out + r, add); break;
      case 4: TileRows<T, 4>(x + r, W, K, H, out + r, add); break;
      case 3: TileRows<T, 3>(x + r, W, K, H, out + r, add); break;
      case 2: TileRows<T, 2>(x + r, W, K, H, out + r, add); break;
      default: TileRows<T, 1>(x + r, W, K, H, out + r, add); break;
    }
    r += take;
  }
}

template <typename T>
struct BlockArgs {
  int64_t n, B, M, H, nu, first, L;  // steps first .. first + n - 1 of a sequence of L
  int64_t G;                      // the cell's pre-activation width (h, or an LSTM's 4h)
  T attn;
  T *vals, *keys, *d_vals, *d_keys, *d_newest, *dq_next;  // the carry, updated in place
  const int32_t *slot, *evicted;  // [n, b]: the R slot each store wrote (-1: none) and
                                  // the time of the state it evicted there (-1: none)
  const T* alpha;                 // [n, b, m]
  const T *h, *h_keys;            // [L, b, h]: states, their keys
  const T* g;                     // [b, L, h]: the states' cotangents from the outputs,
                                  // batch-major as the outputs are (no transpose)
  const T* q;                     // [L, b, h]: the queries
  const T *v, *ua_t, *both_t;     // [h], [h, h], [G + h, h]
  T *dq, *dpre, *dk;              // [n, b, h], [n, b, G], [n, b, h]
  T* d_v_rows;                    // [b, h]
  const T *pre, *c;               // an LSTM's [n, b, 4h] gates and [L, b, h] cell states
  T* dc_next;                     // an LSTM's carry [b, h]; null (all three): tanh RNN
  const int32_t* stored;          // from a given state: [n, b] the S slot each store wrote
  const T* undo;                  // and [4, n, b, h] the states (and keys) it puts back,
                                  // as block_inputs gathers them; null: a fresh state
  const int32_t* resets;          // [n, b]: rows restarting before step first + i; null: none
  const int32_t* before;          // [n, b, m]: their slots' times before the restart
  const T *start_vals, *start_keys;  // the given memory [b, m, h], whose states have
  const int32_t* start_time;         // times [b, m] before t0 (h_0's time)
  int32_t t0;
};

// Puts back row b's memory as it was before a restart at step t of a block:
// slot m gets the state of time before[m] (h_{time - t0} with its key, or the
// given memory's state of that time before t0; an empty slot zeros). Its
// slots' cotangents are 0 already (nothing after the restart read that
// memory: undoing the later stores moved or zeroed theirs, and step t
// attended to an empty memory).
template <typename T>
void RestoreRow(const BlockArgs<T>& a, int64_t b, const int32_t* before) {
  const int64_t M = a.M, H = a.H, B = a.B;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t time = before[m];
    const T *val = nullptr, *key = nullptr;
    if (time >= a.t0) {
      val = a.h + ((time - a.t0) * B + b) * H;
      key = a.h_keys + ((time - a.t0) * B + b) * H;
    } else if (time >= 0) {
      for (int64_t k = 0; k < M; ++k)
        if (a.start_time[b * M + k] == time) {
          val = a.start_vals + (b * M + k) * H;
          key = a.start_keys + (b * M + k) * H;
          break;
        }
    }
    T* vo = a.vals + (b * M + m) * H;
    T* ko = a.keys + (b * M + m) * H;
    if (val) {
      std::copy(val, val + H, vo);
      std::copy(key, key + H, ko);
    } else {
      std::fill(vo, vo + H, T(0));
      std::fill(ko, ko + H, T(0));
    }
  }
}

template <typename T>
void RnnBlockRows(const BlockArgs<T>& a, int64_t b0, int64_t b1) {
  const int64_t R = b1 - b0, B = a.B, M = a.M, H = a.H, nu = a.nu, G = a.G, W = G + H;
  std::vector<T> scratch(2 * R * H + R * W + M);
  T* dh = scratch.data();   // [R, H]
  T* x2 = dh + R * H;       // [R, G + H]: dpre, dq_next
  T* ds = x2 + R * W;       // [R, H]
  T* d_alpha = ds + R * H;  // [M]
  const std::vector<T> zeros(H);  // a restarting row's c_{t-1}
  std::vector<const T*> in(R);
  std::vector<T*> out(R);
  for (int64_t i = a.n - 1; i >= 0; --i) {
    // Rows restarting before step t ran it from a zero s and c, over an empty memory.
    auto fresh = [&](int64_t b) { return a.resets && a.resets[i * B + b]; };
    // Step t = first + i: h_t is in S's slot t mod nu (a fresh state's ring),
    // or the one the records name (a given state's).
    const int64_t t = a.first + i, back_at = std::max<int64_t>(t - nu, 0);
    auto slot_of = [&](int64_t b) -> int64_t { return a.stored ? a.stored[i * B + b] : t % nu; };
    if (i > 0) {  // the rows step t - 1 reads from the sequence's arrays, out of cache by now
      const int64_t s_back = std::max<int64_t>(t - 1 - nu, 0);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = b0 + r, row = (i - 1) * B + b;
        const int64_t put = std::max<int32_t>(a.evicted[row], 0);
        for (const T* p : {a.h + ((t - 1) * B + b) * H, a.g + (b * a.L + t - 1) * H,
                           a.q + ((t - 1) * B + b) * H})
          Prefetch(p, H);
        if (!a.undo)
          for (const T* p : {a.h + (s_back * B + b) * H, a.h_keys + (s_back * B + b) * H,
                             a.h + (put * B + b) * H, a.h_keys + (put * B + b) * H})
            Prefetch(p, H);
        if (a.c) Prefetch(a.c + ((t - 2) * B + b) * H, H);
      }
    }
    for (int64_t r = 0; r < R; ++r) {  // pop h_t's cotangents from its slot
      const int64_t b = b0 + r, o = (i * B + b) * H, j = slot_of(b);
      T* dk = a.dk + o;
      const T* g = a.g + (b * a.L + t) * H;
      const T* dn = a.d_newest + b * H;
      const T* dv = a.d_vals + (b * M + j) * H;
      T* d = dh + r * H;
      std::copy(a.d_keys + (b * M + j) * H, a.d_keys + (b * M + j + 1) * H, dk);
      for (int64_t c = 0; c < H; ++c) d[c] = g[c] + dn[c] + dv[c];
      in[r] = dk;
      out[r] = d;
    }
    RowsTimes<T>(R, in.data(), a.ua_t, H, H, out.data(), true);  // dh += dk Ua^T
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = b0 + r;
      T* dp = a.dpre + (i * B + b) * G;
      const T* d = dh + r * H;
      if (a.c) {  // the LSTM's gating, from its gates and c_{t-1}
        const T* p = a.pre + (i * B + b) * G;
        const T* cp = fresh(b) ? zeros.data() : a.c + ((t - 1) * B + b) * H;
        T* dcn = a.dc_next + b * H;
#pragma omp simd
        for (int64_t c = 0; c < H; ++c) {
          const T f = Sigmoid(p[c]), in_ = Sigmoid(p[H + c]), og = Sigmoid(p[2 * H + c]);
          const T gg = Tanh(p[3 * H + c]);
          const T tc = Tanh(f * cp[c] + in_ * gg);
          const T dc = dcn[c] + d[c] * og * (T(1) - tc * tc);
          dp[c] = dc * cp[c] * f * (T(1) - f);
          dp[H + c] = dc * gg * in_ * (T(1) - in_);
          dp[2 * H + c] = d[c] * tc * og * (T(1) - og);
          dp[3 * H + c] = dc * in_ * (T(1) - gg * gg);
          dcn[c] = dc * f;
        }
        if (fresh(b)) std::fill(dcn, dcn + H, T(0));  // c_{t-1} was a fresh 0
      } else {
        const T* h = a.h + (t * B + b) * H;
#pragma omp simd
        for (int64_t c = 0; c < H; ++c) dp[c] = d[c] * (T(1) - h[c] * h[c]);
      }
      std::copy(dp, dp + G, x2 + r * W);
      std::copy(a.dq_next + b * H, a.dq_next + (b + 1) * H, x2 + r * W + G);
      in[r] = x2 + r * W;
      out[r] = ds + r * H;
    }
    RowsTimes<T>(R, in.data(), a.both_t, W, H, out.data(), false);  // ds
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = b0 + r, o = (i * B + b) * H, row = i * B + b;
      T* dn = a.d_newest + b * H;
      T* dc = ds + r * H;
      if (fresh(b)) std::fill(dc, dc + H, T(0));  // s_t was not mixed from the memory
      for (int64_t c = 0; c < H; ++c) {
        dn[c] = T(0.5) * dc[c];
        dc[c] = a.attn * dn[c];
      }
      // Undo the store: S's slot j gets back the state that left S, the R slot
      // screening wrote the state it had evicted.
      const int32_t slot = a.slot[row];
      const int64_t r_col = slot >= 0 ? nu + slot : -1;
      const int64_t put_back_at = std::max<int32_t>(a.evicted[row], 0);
      const int64_t back_o = (back_at * B + b) * H, put_o = (put_back_at * B + b) * H;
      const T *back = a.h + back_o, *back_key = a.h_keys + back_o, *put = a.h + put_o,
              *put_key = a.h_keys + put_o;
      if (a.undo) {  // a given state's: gathered per block, [4, n, b, h]
        const int64_t q4 = a.n * B * H;
        back = a.undo + o;
        back_key = back + q4;
        put = back + 2 * q4;
        put_key = back + 3 * q4;
      }
      ReverseRow<T>(b, M, H, a.vals, a.keys, a.d_vals, a.d_keys, slot_of(b), r_col, back,
                    back_key, put, put_key, a.q + (t * B + b) * H,
                    a.alpha + row * M, a.v, dc, a.dq + o, a.d_v_rows + b * H, d_alpha);
      std::copy(a.dq + o, a.dq + o + H, a.dq_next + b * H);
      if (fresh(b)) RestoreRow(a, b, a.before + row * M);
    }
  }
}

// ---------------------------------------------------------------------------
// The forward scan of an RNN cell with tanh over a relevance memory with the
// paper's rules (sum of weights, top eviction; others below) or a window, from the state
// after step 0 (RnnForward): what `reverse.attentive_forward`'s scan does, for
// steps t = 1 .. L - 1, per batch row:
//   q = s Va; alpha, context = the attention over the slots holding a state;
//   score[m] += alpha_m for the S slots; s = (newest + attn context) / 2, with
//   newest S's latest state (h_{t-1});
//   h = tanh(x_t U + b + s V); key = h Ua; store h (and its key) in S's oldest
//   slot j (its first empty one while S fills); the state leaving S (if any)
//   enters R while R has room, else in place of R's lowest score (the first of
//   equal ones) if its own is larger; R slot and evicted time recorded.
// h, s, q and key go to rows t of the [L, b, h] buffers (row 0: step 0's, given),
// the weights to alpha [L - 1, b, m]; per step and row the R slot written and
// the time it held, the S slot written and the time of the state that left S
// (the records a reverse pass from a given state reads). Rows in fixed groups on XLA's threads
// for the whole sequence: a group's banks stay in the core's cache.
// Step t's state is stored with time index stamp + t - 1 (a fresh sequence:
// stamp 1). Rows flagged in restart [b] take step 0's rule at step 1 (the
// streaming step's rows at t = 0 or reset): the cell runs on s_0 itself and s
// becomes its pre-activation (x U + b + s_0 V); the attention is as for any row.
// Rows flagged in resets [L - 1, b] (row t - 1: before step t; a training
// window's episode starts) restart from a fresh state before step t: their
// memory is emptied (times -1, scores, count, values and keys 0; the times it
// held go to before [L - 1, b, m], which the reverse pass restores), and the
// step takes step 0's rule on a zero s (and c): the query is 0, the memory
// empty, s the cell's pre-activation (an LSTM's: 0).
// An LSTM cell (c given): U = W_x [i, 4h], V = W_s [h, 4h], b [4h], gates f, i,
// o, g of pre = (x W_x + b) + s W_s: c_t = sig(f) c_{t-1} + sig(i) tanh(g),
// h_t = sig(o) tanh(c_t), c_t to rows t of c [L, b, h]; a restarting row's s
// stays s_0 (the mixing's attn is 1).
// Other rules (rsm.accumulate, rsm.choose): relevance mean (sum in S, the
// candidate's sum divided by the steps it spent there, t - t_j, at least 1),
// max (S's scores keep their largest weight) or decay (every score in S and
// every held one in R becomes gamma score + weight); eviction fifo (every
// candidate enters R, at slot seen mod rho) or reservoir (R fills, then the
// n-th candidate takes slot d if its draw d in [0, n] is below rho; the draws
// come in, made by XLA from JAX's PRNG as rsm.choose makes them).
// Lean (a forward with no reverse pass to follow): s, q, k and c are [2, b, h]
// rings (step t in row t mod 2) and alpha is [1, b, m] (the last step's), so
// only h is kept for every step.

template <typename T>
struct ForwardArgs {
  int64_t L, B, M, H, I, nu, G;             // G: the cell's pre-activation width (h or 4h)
  int32_t stamp;                            // time index of step 1's state
  const int32_t* restart;                   // [b]: rows taking step 0's rule at step 1
  T attn;
  T *vals, *keys, *score;                   // [b, m, h], [b, m, h], [b, m]
  int32_t *time, *seen;                     // [b, m], [b]
  T *h, *s, *q, *k;                         // [L, b, h] (s, q, k: [2, b, h] when lean)
  const T *x, *U, *bias, *Va, *V, *Ua, *v;  // [L - 1, b, i], [i, G], [G], [h, h], [h, G], [h, h], [h]
  int32_t *slot, *replaced, *stored, *left; // [L - 1, b]
  T* alpha;                                 // [L - 1, b, m]
  T* c;                                     // [L, b, h] (lean: [2, b, h]) an LSTM's cell
                                            // states; null: tanh RNN
  bool lean;                                // s, q, k, c as [2, b, h] rings, alpha [1, b, m]
  int relevance;                            // kSum, kMean, kMax or kDecay
  T decay;                                  // gamma of kDecay
  bool fifo;                                // eviction fifo (else top, or reservoir:)
  const int32_t* draws;                     // [L - 1, b] reservoir draws: row b's for its
                                            // (seen_0 + k + 1)-th candidate in row k;
                                            // null: top or fifo
  const int32_t* resets;                    // [L - 1, b]: rows restarting before step t
                                            // (row t - 1); null: none
  int32_t* before;                          // [L - 1, b, m]: the slots' times before step
                                            // t's restarts (with resets, not lean); or null
};

enum Relevance { kSum = 0, kMean = 1, kMax = 2, kDecay = 3 };

template <typename T>
void RnnForwardRows(const ForwardArgs<T>& a, int64_t b0, int64_t b1) {
  const int64_t R = b1 - b0, B = a.B, M = a.M, H = a.H, nu = a.nu, rho = a.M - a.nu, G = a.G;
  std::vector<T> scratch(R * H + 2 * R * G + M * kLanes<T>);
  T* ctx = scratch.data();   // [R, H]
  T* xp = ctx + R * H;       // [R, G]
  T* sv = xp + R * G;        // [R, G]
  T* tmp = sv + R * G;       // [M, lanes]
  // The group's scores, times, count and screening records are its own until
  // the end: rows of other groups share their cache lines.
  std::vector<T> score(a.score + b0 * M, a.score + b1 * M);
  std::vector<int32_t> time(a.time + b0 * M, a.time + b1 * M), seen(a.seen + b0, a.seen + b1);
  const std::vector<int32_t> seen0(seen);  // the count the reservoir draws start from
  const std::vector<T> zeros(H);            // a restarting row's s_{t-1} and c_{t-1}
  // [L - 1, R] each: R slots, replaced times, S slots written, times leaving S
  std::vector<int32_t> slots(4 * (a.L - 1) * R);
  std::vector<const T*> in(R);
  std::vector<T*> out(R);
  // Step t's row of s, q, k and c: t, or t mod 2 in a lean forward.
  auto at = [&](int64_t t) { return a.lean ? t % 2 : t; };
  auto rows = [&](T* base, int64_t t) {  // row pointers of [L, b, h] buffer rows t
    for (int64_t r = 0; r < R; ++r) out[r] = base + (at(t) * B + b0 + r) * H;
  };
  // Rows restarting before step t start from a fresh state: an empty memory,
  // zero s and c (step 0's rule below).
  auto fresh = [&](int64_t t, int64_t b) { return a.resets && a.resets[(t - 1) * B + b]; };
  for (int64_t t = 1; t < a.L; ++t) {
    if (a.resets) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = b0 + r;
        int32_t* tm = time.data() + r * M;
        if (a.before) std::copy(tm, tm + M, a.before + ((t - 1) * B + b) * M);
        if (!fresh(t, b)) continue;
        std::fill(a.vals + b * M * H, a.vals + (b + 1) * M * H, T(0));
        std::fill(a.keys + b * M * H, a.keys + (b + 1) * M * H, T(0));
        std::fill(score.data() + r * M, score.data() + (r + 1) * M, T(0));
        std::fill(tm, tm + M, -1);
        seen[r] = 0;
      }
    }
    // The query from s_{t-1} (a restarting row's: zero).
    for (int64_t r = 0; r < R; ++r)
      in[r] = fresh(t, b0 + r) ? zeros.data() : a.s + (at(t - 1) * B + b0 + r) * H;
    rows(a.q, t);
    RowsTimes<T>(R, in.data(), a.Va, H, H, out.data(), false);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = b0 + r;
      T* al = a.alpha + ((a.lean ? 0 : t - 1) * B + b) * M;
      AttendRow<T>(M, H, a.q + (at(t) * B + b) * H, a.keys + b * M * H, a.vals + b * M * H,
                   time.data() + r * M, a.v, ctx + r * H, al, tmp);
      T* sc = score.data() + r * M;
      const int32_t* held = time.data() + r * M;
      if (a.relevance == kMax) {
        for (int64_t m = 0; m < nu; ++m) sc[m] = std::max(sc[m], al[m]);
      } else if (a.relevance == kDecay) {
        for (int64_t m = 0; m < M; ++m)
          if (m < nu || held[m] >= 0) sc[m] = a.decay * sc[m] + al[m];
      } else {
        for (int64_t m = 0; m < nu; ++m) sc[m] += al[m];
      }
      // The newest stored state, h_{t-1} (S's latest slot; slot 0 while S is
      // empty, which a restarting row does not read).
      const int32_t* tm = time.data() + r * M;
      int64_t latest = 0;
      for (int64_t m = 1; m < nu; ++m)
        if (tm[m] > tm[latest]) latest = m;
      const T* newest = a.vals + (b * M + latest) * H;
      T* st = a.s + (at(t) * B + b) * H;
      const T* c = ctx + r * H;
      if (fresh(t, b)) {  // the cell runs on a zero s
        std::fill(st, st + H, T(0));
        continue;
      }
      if (t == 1 && a.restart[b]) {  // the cell runs on s_0
        std::copy(a.s + b * H, a.s + (b + 1) * H, st);
        continue;
      }
      for (int64_t i = 0; i < H; ++i) st[i] = T(0.5) * (newest[i] + a.attn * c[i]);
    }
    // pre = (x U + b) + s V; h = tanh(pre), or the LSTM's gating
    for (int64_t r = 0; r < R; ++r) {
      in[r] = a.x + ((t - 1) * B + b0 + r) * a.I;
      out[r] = xp + r * G;
    }
    RowsTimes<T>(R, in.data(), a.U, a.I, G, out.data(), false);
    for (int64_t r = 0; r < R; ++r) {
      in[r] = a.s + (at(t) * B + b0 + r) * H;
      out[r] = sv + r * G;
    }
    RowsTimes<T>(R, in.data(), a.V, H, G, out.data(), false);
    for (int64_t r = 0; r < R; ++r) {
      T* ht = a.h + (t * B + b0 + r) * H;
      T *x = xp + r * G;
      const T* y = sv + r * G;
      if (a.c) {
#pragma omp simd
        for (int64_t i = 0; i < G; ++i) x[i] = (x[i] + a.bias[i]) + y[i];
        const T* cp = fresh(t, b0 + r) ? zeros.data() : a.c + (at(t - 1) * B + b0 + r) * H;
        T* ct = a.c + (at(t) * B + b0 + r) * H;
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) {
          ct[i] = Sigmoid(x[i]) * cp[i] + Sigmoid(x[H + i]) * Tanh(x[3 * H + i]);
          ht[i] = Sigmoid(x[2 * H + i]) * Tanh(ct[i]);
        }
        in[r] = ht;
        continue;
      }
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) ht[i] = Tanh((x[i] + a.bias[i]) + y[i]);
      if ((t == 1 && a.restart[b0 + r]) || fresh(t, b0 + r)) {  // s = the pre-activation
        T* st = a.s + (at(t) * B + b0 + r) * H;
        for (int64_t i = 0; i < H; ++i) st[i] = (x[i] + a.bias[i]) + y[i];
      }
      in[r] = ht;
    }
    rows(a.k, t);
    RowsTimes<T>(R, in.data(), a.Ua, H, H, out.data(), false);
    for (int64_t r = 0; r < R; ++r) {  // the store and its screening
      const int64_t b = b0 + r;
      int32_t* tm = time.data() + r * M;
      T* sc = score.data() + r * M;
      int64_t j = 0;
      for (int64_t m = 1; m < nu; ++m)
        if (tm[m] < tm[j]) j = m;
      const int32_t cand_time = tm[j], now = static_cast<int32_t>(a.stamp + t - 1);
      T cand_score = sc[j];
      if (a.relevance == kMean && cand_time >= 0)
        cand_score /= static_cast<T>(std::max<int32_t>(now - cand_time, 1));
      int64_t r_slot = -1;
      if (rho > 0 && cand_time >= 0) {
        if (a.fifo) {
          r_slot = nu + seen[r] % rho;
        } else if (a.draws) {  // Vitter's R: fill R, then slot draw if draw < rho
          int64_t count = 0;
          for (int64_t m = nu; m < M; ++m) count += tm[m] >= 0;
          const int32_t draw = a.draws[(seen[r] - seen0[r]) * B + b];
          if (count < rho) {
            r_slot = nu + count;
          } else if (draw < rho) {
            r_slot = nu + draw;
          }
        } else {
          int64_t count = 0, low = -1;
          for (int64_t m = nu; m < M; ++m) {
            if (tm[m] < 0) continue;
            ++count;
            if (low < 0 || sc[m] < sc[low]) low = m;
          }
          if (count < rho) {
            r_slot = nu + count;
          } else if (cand_score > sc[low]) {
            r_slot = low;
          }
        }
        seen[r] += 1;
      }
      int32_t* sl = slots.data() + (t - 1) * R + r;
      int32_t* rep = sl + (a.L - 1) * R;
      *sl = r_slot < 0 ? -1 : static_cast<int32_t>(r_slot - nu);
      *rep = r_slot < 0 ? -1 : tm[r_slot];
      rep[(a.L - 1) * R] = static_cast<int32_t>(j);
      rep[2 * (a.L - 1) * R] = cand_time;
      T* row_v = a.vals + b * M * H;
      T* row_k = a.keys + b * M * H;
      if (r_slot >= 0) {
        std::copy(row_v + j * H, row_v + (j + 1) * H, row_v + r_slot * H);
        std::copy(row_k + j * H, row_k + (j + 1) * H, row_k + r_slot * H);
        sc[r_slot] = cand_score;
        tm[r_slot] = cand_time;
      }
      const T* ht = a.h + (t * B + b) * H;
      const T* kt = a.k + (at(t) * B + b) * H;
      std::copy(ht, ht + H, row_v + j * H);
      std::copy(kt, kt + H, row_k + j * H);
      sc[j] = T(0);
      tm[j] = now;
    }
  }
  std::copy(score.begin(), score.end(), a.score + b0 * M);
  std::copy(time.begin(), time.end(), a.time + b0 * M);
  std::copy(seen.begin(), seen.end(), a.seen + b0);
  int32_t* const records[4] = {a.slot, a.replaced, a.stored, a.left};
  for (int k = 0; k < 4; ++k)
    for (int64_t t = 0; t < a.L - 1; ++t) {
      const int32_t* from = slots.data() + (k * (a.L - 1) + t) * R;
      std::copy(from, from + R, records[k] + t * B + b0);
    }
}

// Rows go in chunks of kRows, a chunk's results its own (the reverse pass's
// shares of d v are summed in chunk order after): the result does not depend
// on how many threads ran them.
constexpr int64_t kRows = 8;
// Below this many bank elements (b m h; the forward: over all its steps) one
// thread does it all: waking XLA's other threads costs more than the step
// (batch 10, 25 slots, 128 units: 32,000). A one-step forward (the streaming
// step) of an LSTM at batch 16 inside a scan took 57-64 us in two threads,
// 35-41 in one (XLA's step: 30).
constexpr int64_t kParallel = 1 << 17;

// Runs body(chunk, first row, end row) for every chunk of `size` rows: here, and
// on XLA's threads when `parallel`. Each thread takes chunks until none is left;
// this call returns when every chunk is done. A task that starts later finds
// none left, so the state it shares is on the heap, owned by all.
template <typename F>
void ForChunks(ffi::ThreadPool& pool, int64_t rows, bool parallel, F body, int64_t size = kRows) {
  struct Shared {
    Shared(F f, int64_t n, int64_t s, int64_t k) : body(std::move(f)), rows(n), size(s), chunks(k) {}
    F body;
    int64_t rows, size, chunks;
    std::atomic<int64_t> next{0}, done{0};
    void Work() {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
        body(c, c * size, std::min(rows, (c + 1) * size));
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  const int64_t chunks = (rows + size - 1) / size;
  auto shared = std::make_shared<Shared>(std::move(body), rows, size, chunks);
  if (parallel) {
    const int64_t helpers = std::min(pool.num_threads(), chunks) - 1;
    for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared] { shared->Work(); });
  }
  shared->Work();
  // Every chunk is taken; wait for those other threads are still running.
  while (shared->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// XLA aliases each updated input to its output; copy the input where it did
// not (and, for a longer output, into its start).
void CopyUnaliased(std::initializer_list<std::pair<const ffi::AnyBuffer*,
                                                   ffi::Result<ffi::AnyBuffer>*>> pairs) {
  for (const auto& [in, out] : pairs) {
    if ((*out)->untyped_data() != in->untyped_data())
      std::memcpy((*out)->untyped_data(), in->untyped_data(), in->size_bytes());
  }
}

// out[h] = sum over the n rows of parts [n, H], in row order.
template <typename T>
void SumRows(const T* parts, int64_t n, int64_t H, T* out) {
  std::fill(out, out + H, T(0));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < H; ++h) out[h] += parts[r * H + h];
}

template <typename T>
void RunReverse(ffi::ThreadPool& pool, int64_t B, int64_t M, int64_t H, ffi::AnyBuffer s_col,
                ffi::AnyBuffer r_col, ffi::AnyBuffer back, ffi::AnyBuffer back_key,
                ffi::AnyBuffer put_back, ffi::AnyBuffer put_back_key, ffi::AnyBuffer query,
                ffi::AnyBuffer alpha, ffi::AnyBuffer v, ffi::AnyBuffer d_context,
                ffi::Result<ffi::AnyBuffer>& vals, ffi::Result<ffi::AnyBuffer>& keys,
                ffi::Result<ffi::AnyBuffer>& d_vals, ffi::Result<ffi::AnyBuffer>& d_keys,
                ffi::Result<ffi::AnyBuffer>& d_query, ffi::Result<ffi::AnyBuffer>& d_v) {
  T *vals_p = vals->typed_data<T>(), *keys_p = keys->typed_data<T>();
  T *d_vals_p = d_vals->typed_data<T>(), *d_keys_p = d_keys->typed_data<T>();
  T* d_query_p = d_query->typed_data<T>();
  const int32_t *s_col_p = s_col.typed_data<int32_t>(), *r_col_p = r_col.typed_data<int32_t>();
  const T *back_p = back.typed_data<T>(), *back_key_p = back_key.typed_data<T>();
  const T *put_back_p = put_back.typed_data<T>(), *put_back_key_p = put_back_key.typed_data<T>();
  const T *query_p = query.typed_data<T>(), *alpha_p = alpha.typed_data<T>();
  const T *v_p = v.typed_data<T>(), *d_context_p = d_context.typed_data<T>();
  std::vector<T> parts(((B + kRows - 1) / kRows) * H);  // each chunk's share of d v
  T* parts_p = parts.data();
  ForChunks(pool, B, B * M * H >= kParallel, [=](int64_t c, int64_t b0, int64_t b1) {
    SlotsReverse<T>(b0, b1, M, H, vals_p, keys_p, d_vals_p, d_keys_p, s_col_p, r_col_p, back_p,
                    back_key_p, put_back_p, put_back_key_p, query_p, alpha_p, v_p, d_context_p,
                    d_query_p, parts_p + c * H);
  });
  SumRows(parts.data(), static_cast<int64_t>(parts.size()) / H, H, d_v->typed_data<T>());
}

// Every float argument in the banks' type (typed_data of another type aborts).
ffi::Error SameType(ffi::DataType want,
                    std::initializer_list<std::pair<const char*, const ffi::AnyBuffer*>> args) {
  for (const auto& [name, buffer] : args) {
    if (buffer->element_type() != want)
      return ffi::Error::InvalidArgument(std::string(name) + " is not of the banks' float type");
  }
  return ffi::Error::Success();
}

// Calls f(T{}) with T the banks' float type; float32 and float64 only.
template <typename F>
ffi::Error ByFloat(ffi::DataType type, F f) {
  if (type == ffi::F32) {
    f(float{});
  } else if (type == ffi::F64) {
    f(double{});
  } else {
    return ffi::Error::InvalidArgument("float32 or float64 only");
  }
  return ffi::Error::Success();
}

ffi::Error SlotsReverseImpl(ffi::ThreadPool pool, ffi::AnyBuffer vals_in, ffi::AnyBuffer keys_in,
                            ffi::AnyBuffer d_vals_in, ffi::AnyBuffer d_keys_in,
                            ffi::AnyBuffer s_col, ffi::AnyBuffer r_col,
                            ffi::AnyBuffer back, ffi::AnyBuffer back_key, ffi::AnyBuffer put_back,
                            ffi::AnyBuffer put_back_key, ffi::AnyBuffer query,
                            ffi::AnyBuffer alpha, ffi::AnyBuffer v, ffi::AnyBuffer d_context,
                            ffi::Result<ffi::AnyBuffer> vals, ffi::Result<ffi::AnyBuffer> keys,
                            ffi::Result<ffi::AnyBuffer> d_vals, ffi::Result<ffi::AnyBuffer> d_keys,
                            ffi::Result<ffi::AnyBuffer> d_query, ffi::Result<ffi::AnyBuffer> d_v) {
  const auto dims = keys_in.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("the banks must be [b, m, h]");
  if (s_col.element_type() != ffi::S32 || r_col.element_type() != ffi::S32)
    return ffi::Error::InvalidArgument("the slot columns must be int32");
  const int64_t B = dims[0], M = dims[1], H = dims[2];
  if (auto e = SameType(keys_in.element_type(),
                        {{"vals", &vals_in}, {"d_vals", &d_vals_in}, {"d_keys", &d_keys_in},
                         {"back", &back}, {"back_key", &back_key}, {"put_back", &put_back},
                         {"put_back_key", &put_back_key}, {"query", &query}, {"alpha", &alpha},
                         {"v", &v}, {"d_context", &d_context}});
      e.failure())
    return e;
  CopyUnaliased({{&vals_in, &vals}, {&keys_in, &keys}, {&d_vals_in, &d_vals},
                 {&d_keys_in, &d_keys}});
  return ByFloat(keys_in.element_type(), [&](auto zero) {
    RunReverse<decltype(zero)>(pool, B, M, H, s_col, r_col, back, back_key, put_back,
                               put_back_key, query, alpha, v, d_context, vals, keys, d_vals,
                               d_keys, d_query, d_v);
  });
}

ffi::Error SlotsAttendImpl(ffi::ThreadPool pool, ffi::AnyBuffer query, ffi::AnyBuffer keys,
                          ffi::AnyBuffer vals, ffi::AnyBuffer time, ffi::AnyBuffer v,
                          ffi::Result<ffi::AnyBuffer> context, ffi::Result<ffi::AnyBuffer> alpha) {
  const auto dims = keys.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("the banks must be [b, m, h]");
  if (time.element_type() != ffi::S32)
    return ffi::Error::InvalidArgument("the slots' times must be int32");
  const int64_t B = dims[0], M = dims[1], H = dims[2];
  if (auto e = SameType(keys.element_type(), {{"query", &query}, {"vals", &vals}, {"v", &v}});
      e.failure())
    return e;
  const bool parallel = B * M * H >= kParallel;
  return ByFloat(keys.element_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *q = query.typed_data<T>(), *k = keys.typed_data<T>(), *x = vals.typed_data<T>();
    const T* w = v.typed_data<T>();
    const int32_t* held = time.typed_data<int32_t>();
    T *ctx = context->typed_data<T>(), *a = alpha->typed_data<T>();
    ForChunks(pool, B, parallel, [=](int64_t, int64_t b0, int64_t b1) {
      SlotsAttend<T>(b0, b1, M, H, q, k, x, held, w, ctx, a);
    });
  });
}

// Rows per group of the block kernel: half the batch (both threads of a 2-core
// machine busy at batch 10) up to 8; fixed by the batch alone.
int64_t BlockRows(int64_t B) { return std::min<int64_t>(8, std::max<int64_t>(1, (B + 1) / 2)); }

ffi::Error RnnBlockReverseImpl(
    ffi::ThreadPool pool, ffi::AnyBuffer vals_in, ffi::AnyBuffer keys_in, ffi::AnyBuffer d_vals_in,
    ffi::AnyBuffer d_keys_in, ffi::AnyBuffer d_newest_in, ffi::AnyBuffer dq_next_in,
    ffi::AnyBuffer first, ffi::AnyBuffer slot, ffi::AnyBuffer evicted, ffi::AnyBuffer alpha,
    ffi::AnyBuffer h, ffi::AnyBuffer h_keys, ffi::AnyBuffer g, ffi::AnyBuffer q,
    ffi::AnyBuffer v, ffi::AnyBuffer ua_t, ffi::AnyBuffer both_t, ffi::AnyBuffer stored,
    ffi::AnyBuffer undo, ffi::AnyBuffer resets, ffi::AnyBuffer before,
    ffi::AnyBuffer start_vals, ffi::AnyBuffer start_keys, ffi::AnyBuffer start_time,
    ffi::AnyBuffer t0, std::optional<ffi::AnyBuffer> dc_next_in,
    std::optional<ffi::AnyBuffer> pre,
    std::optional<ffi::AnyBuffer> c, int64_t nu, double attn,
    ffi::Result<ffi::AnyBuffer> vals, ffi::Result<ffi::AnyBuffer> keys,
    ffi::Result<ffi::AnyBuffer> d_vals, ffi::Result<ffi::AnyBuffer> d_keys,
    ffi::Result<ffi::AnyBuffer> d_newest, ffi::Result<ffi::AnyBuffer> dq_next,
    ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dpre,
    ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> d_v,
    std::optional<ffi::Result<ffi::AnyBuffer>> dc_next) {
  const auto dims = keys_in.dimensions(), seq = h.dimensions(), steps = alpha.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("the banks must be [b, m, h]");
  if (seq.size() != 3 || steps.size() != 3)
    return ffi::Error::InvalidArgument("h must be [L, b, h] and alpha [n, b, m]");
  if (first.element_type() != ffi::S32 || slot.element_type() != ffi::S32 ||
      evicted.element_type() != ffi::S32)
    return ffi::Error::InvalidArgument("first, slot and evicted must be int32");
  const int64_t B = dims[0], M = dims[1], H = dims[2], L = seq[0], n = steps[0];
  const int64_t start = first.typed_data<int32_t>()[0];
  const bool lstm = dc_next_in.has_value();
  if (pre.has_value() != lstm || c.has_value() != lstm || dc_next.has_value() != lstm)
    return ffi::Error::InvalidArgument("an LSTM's block takes dc_next, pre and c, returns dc_next");
  const int64_t G = lstm ? 4 * H : H;
  if (lstm && (dc_next_in->element_count() != B * H || pre->element_count() != n * B * G ||
               c->element_count() != L * B * H))
    return ffi::Error::InvalidArgument("dc_next must be [b, h], pre [n, b, 4h] and c [L, b, h]");
  if (lstm)
    if (auto e = SameType(keys_in.element_type(),
                          {{"dc_next", &*dc_next_in}, {"pre", &*pre}, {"c", &*c}});
        e.failure())
      return e;
  if (slot.element_count() != n * B || evicted.element_count() != n * B || steps[1] != B ||
      steps[2] != M || seq[1] != B || seq[2] != H || both_t.element_count() != (G + H) * H ||
      dpre->element_count() != n * B * G ||
      ua_t.element_count() != H * H || nu < 1 || nu > M || start < 1 || start + n > L)
    return ffi::Error::InvalidArgument("the block's arguments do not match the banks' shape");
  const auto gs = g.dimensions();
  if (gs.size() != 3 || gs[0] != B || gs[1] != L || gs[2] != H)
    return ffi::Error::InvalidArgument("g must be [b, L, h]");
  // From a given state: the S slots stores wrote and the states undoing puts
  // back; both empty from a fresh state.
  const bool given = stored.element_count() > 0;
  if (stored.element_type() != ffi::S32 ||
      stored.element_count() != (given ? n * B : 0) ||
      undo.element_count() != (given ? 4 * n * B * H : 0))
    return ffi::Error::InvalidArgument(
        "stored must be int32 [n, b] and undo [4, n, b, h] (both empty from a fresh state)");
  if (given)
    if (auto e = SameType(keys_in.element_type(), {{"undo", &undo}}); e.failure()) return e;
  // Rows restarting in the block (from a given state): what their memory was.
  const bool restarts = resets.element_count() > 0;
  if (resets.element_type() != ffi::S32 || before.element_type() != ffi::S32 ||
      start_time.element_type() != ffi::S32 || t0.element_type() != ffi::S32 ||
      (restarts && (!given || resets.element_count() != n * B ||
                    before.element_count() != n * B * M || start_vals.element_count() != B * M * H ||
                    start_keys.element_count() != B * M * H ||
                    start_time.element_count() != B * M || t0.element_count() != 1)))
    return ffi::Error::InvalidArgument(
        "resets must be int32 [n, b], before int32 [n, b, m], the given memory's values and "
        "keys [b, m, h], times int32 [b, m] and t0 int32 [] (from a given state; else empty)");
  if (restarts)
    if (auto e = SameType(keys_in.element_type(),
                          {{"start_vals", &start_vals}, {"start_keys", &start_keys}});
        e.failure())
      return e;
  if (auto e = SameType(keys_in.element_type(),
                        {{"vals", &vals_in}, {"d_vals", &d_vals_in}, {"d_keys", &d_keys_in},
                         {"d_newest", &d_newest_in}, {"dq_next", &dq_next_in},
                         {"alpha", &alpha}, {"h", &h}, {"h_keys", &h_keys}, {"g", &g},
                         {"q", &q}, {"v", &v}, {"ua_t", &ua_t}, {"both_t", &both_t}});
      e.failure())
    return e;
  CopyUnaliased({{&vals_in, &vals}, {&keys_in, &keys}, {&d_vals_in, &d_vals},
                 {&d_keys_in, &d_keys}, {&d_newest_in, &d_newest}, {&dq_next_in, &dq_next}});
  if (lstm) CopyUnaliased({{&*dc_next_in, &*dc_next}});
  return ByFloat(keys_in.element_type(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> d_v_rows(B * H, T(0));
    BlockArgs<T> a{n, B, M, H, nu, start, L, G, static_cast<T>(attn),
                   vals->typed_data<T>(), keys->typed_data<T>(), d_vals->typed_data<T>(),
                   d_keys->typed_data<T>(), d_newest->typed_data<T>(), dq_next->typed_data<T>(),
                   slot.typed_data<int32_t>(), evicted.typed_data<int32_t>(),
                   alpha.typed_data<T>(), h.typed_data<T>(), h_keys.typed_data<T>(),
                   g.typed_data<T>(), q.typed_data<T>(), v.typed_data<T>(), ua_t.typed_data<T>(),
                   both_t.typed_data<T>(), dq->typed_data<T>(), dpre->typed_data<T>(),
                   dk->typed_data<T>(), d_v_rows.data(),
                   lstm ? pre->typed_data<T>() : nullptr, lstm ? c->typed_data<T>() : nullptr,
                   lstm ? (*dc_next)->typed_data<T>() : nullptr,
                   given ? stored.typed_data<int32_t>() : nullptr,
                   given ? undo.typed_data<T>() : nullptr,
                   restarts ? resets.typed_data<int32_t>() : nullptr,
                   restarts ? before.typed_data<int32_t>() : nullptr,
                   restarts ? start_vals.typed_data<T>() : nullptr,
                   restarts ? start_keys.typed_data<T>() : nullptr,
                   restarts ? start_time.typed_data<int32_t>() : nullptr,
                   restarts ? t0.typed_data<int32_t>()[0] : 0};
    ForChunks(pool, B, true, [&a](int64_t, int64_t b0, int64_t b1) { RnnBlockRows<T>(a, b0, b1); },
              BlockRows(B));
    SumRows(d_v_rows.data(), B, H, d_v->typed_data<T>());
  });
}

ffi::Error RnnForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer vals_in, ffi::AnyBuffer keys_in,
                          ffi::AnyBuffer score_in, ffi::AnyBuffer time_in, ffi::AnyBuffer seen_in,
                          ffi::AnyBuffer h_in, ffi::AnyBuffer s_in, ffi::AnyBuffer q_in,
                          ffi::AnyBuffer k_in, ffi::AnyBuffer x, ffi::AnyBuffer U,
                          ffi::AnyBuffer bias, ffi::AnyBuffer Va, ffi::AnyBuffer V,
                          ffi::AnyBuffer Ua, ffi::AnyBuffer v, ffi::AnyBuffer stamp,
                          ffi::AnyBuffer restart, ffi::AnyBuffer draws,
                          ffi::AnyBuffer resets, std::optional<ffi::AnyBuffer> c_in,
                          int64_t nu, double attn, int64_t lean, int64_t relevance,
                          double decay, int64_t fifo,
                          ffi::Result<ffi::AnyBuffer> vals, ffi::Result<ffi::AnyBuffer> keys,
                          ffi::Result<ffi::AnyBuffer> score, ffi::Result<ffi::AnyBuffer> time,
                          ffi::Result<ffi::AnyBuffer> seen, ffi::Result<ffi::AnyBuffer> h,
                          ffi::Result<ffi::AnyBuffer> s, ffi::Result<ffi::AnyBuffer> q,
                          ffi::Result<ffi::AnyBuffer> k, ffi::Result<ffi::AnyBuffer> slot,
                          ffi::Result<ffi::AnyBuffer> replaced,
                          ffi::Result<ffi::AnyBuffer> stored, ffi::Result<ffi::AnyBuffer> left,
                          ffi::Result<ffi::AnyBuffer> alpha, ffi::Result<ffi::AnyBuffer> before,
                          std::optional<ffi::Result<ffi::AnyBuffer>> c) {
  const auto dims = keys_in.dimensions(), xs = x.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("the banks must be [b, m, h]");
  if (xs.size() != 3) return ffi::Error::InvalidArgument("x must be [L - 1, b, i]");
  if (time_in.element_type() != ffi::S32 || seen_in.element_type() != ffi::S32 ||
      stamp.element_type() != ffi::S32 || restart.element_type() != ffi::S32)
    return ffi::Error::InvalidArgument("the slots' times, seen, stamp and restart must be int32");
  const int64_t B = dims[0], M = dims[1], H = dims[2], L = xs[0] + 1, I = xs[2];
  const bool reservoir = draws.element_count() > 0;
  if (draws.element_type() != ffi::S32 ||
      (reservoir && (fifo || draws.element_count() != (L - 1) * B)))
    return ffi::Error::InvalidArgument("draws must be int32 [L - 1, b] (reservoir; else empty)");
  const bool restarts = resets.element_count() > 0, keep_before = restarts && !lean;
  if (resets.element_type() != ffi::S32 || before->element_type() != ffi::S32 ||
      (restarts && (reservoir || resets.element_count() != (L - 1) * B)) ||
      before->element_count() != (keep_before ? (L - 1) * B * M : 0))
    return ffi::Error::InvalidArgument(
        "resets must be int32 [L - 1, b] (not with reservoir draws; else empty) and before "
        "int32 [L - 1, b, m] (with resets, not lean; else empty)");
  if (relevance < kSum || relevance > kDecay)
    return ffi::Error::InvalidArgument("relevance must be 0 (sum), 1 (mean), 2 (max) or 3 (decay)");
  if (c_in.has_value() != c.has_value())
    return ffi::Error::InvalidArgument("an LSTM's forward takes c_0 and returns c");
  const int64_t G = c_in ? 4 * H : H;  // the cell's pre-activation width
  const int64_t kept = lean ? 2 : L;  // rows of s, q, k and c
  if (c_in && (c_in->element_count() != B * H || (*c)->element_count() != kept * B * H))
    return ffi::Error::InvalidArgument("c_0 must be [b, h] and c [L, b, h]");
  if (c_in)
    if (auto e = SameType(keys_in.element_type(), {{"c_0", &*c_in}}); e.failure()) return e;
  if (xs[1] != B || nu < 1 || nu > M || U.element_count() != I * G ||
      bias.element_count() != G || V.element_count() != H * G ||
      Va.element_count() != H * H || h_in.element_count() != B * H ||
      s_in.element_count() != B * H || q_in.element_count() != B * H ||
      k_in.element_count() != B * H || stamp.element_count() != 1 ||
      restart.element_count() != B || h->element_count() != L * B * H ||
      s->element_count() != kept * B * H || q->element_count() != kept * B * H ||
      k->element_count() != kept * B * H || alpha->element_count() != (lean ? 1 : L - 1) * B * M)
    return ffi::Error::InvalidArgument("the forward's arguments do not match the banks' shape");
  if (auto e = SameType(keys_in.element_type(),
                        {{"vals", &vals_in}, {"score", &score_in}, {"h", &h_in}, {"s", &s_in},
                         {"q", &q_in}, {"k", &k_in}, {"x", &x}, {"U", &U}, {"b", &bias},
                         {"Va", &Va}, {"V", &V}, {"Ua", &Ua}, {"v", &v}});
      e.failure())
    return e;
  // The memory: aliased (copied where it is not); the [L, b, h] outputs: row 0
  // is step 0's, the kernel writes the others (nothing zeroed).
  CopyUnaliased({{&vals_in, &vals}, {&keys_in, &keys}, {&score_in, &score}, {&time_in, &time},
                 {&seen_in, &seen}, {&h_in, &h}, {&s_in, &s}, {&q_in, &q}, {&k_in, &k}});
  if (c_in) CopyUnaliased({{&*c_in, &*c}});
  return ByFloat(keys_in.element_type(), [&](auto zero) {
    using T = decltype(zero);
    ForwardArgs<T> a{L, B, M, H, I, nu, G, *stamp.typed_data<int32_t>(),
                     restart.typed_data<int32_t>(), static_cast<T>(attn),
                     vals->typed_data<T>(), keys->typed_data<T>(), score->typed_data<T>(),
                     time->typed_data<int32_t>(), seen->typed_data<int32_t>(),
                     h->typed_data<T>(), s->typed_data<T>(), q->typed_data<T>(),
                     k->typed_data<T>(), x.typed_data<T>(), U.typed_data<T>(),
                     bias.typed_data<T>(), Va.typed_data<T>(), V.typed_data<T>(),
                     Ua.typed_data<T>(), v.typed_data<T>(), slot->typed_data<int32_t>(),
                     replaced->typed_data<int32_t>(), stored->typed_data<int32_t>(),
                     left->typed_data<int32_t>(), alpha->typed_data<T>(),
                     c ? (*c)->typed_data<T>() : nullptr, lean != 0,
                     static_cast<int>(relevance), static_cast<T>(decay), fifo != 0,
                     reservoir ? draws.typed_data<int32_t>() : nullptr,
                     restarts ? resets.typed_data<int32_t>() : nullptr,
                     keep_before ? before->typed_data<int32_t>() : nullptr};
    ForChunks(pool, B, (L - 1) * B * M * H >= kParallel,
              [&a](int64_t, int64_t b0, int64_t b1) { RnnForwardRows<T>(a, b0, b1); },
              BlockRows(B));
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelscreenSlotsReverse, SlotsReverseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // vals [b, m, h]
                                  .Arg<ffi::AnyBuffer>()  // keys
                                  .Arg<ffi::AnyBuffer>()  // d_vals
                                  .Arg<ffi::AnyBuffer>()  // d_keys
                                  .Arg<ffi::AnyBuffer>()  // s_col [b], int32
                                  .Arg<ffi::AnyBuffer>()  // r_col [b], int32
                                  .Arg<ffi::AnyBuffer>()  // back [b, h]
                                  .Arg<ffi::AnyBuffer>()  // back_key
                                  .Arg<ffi::AnyBuffer>()  // put_back
                                  .Arg<ffi::AnyBuffer>()  // put_back_key
                                  .Arg<ffi::AnyBuffer>()  // query [b, h]
                                  .Arg<ffi::AnyBuffer>()  // alpha [b, m]
                                  .Arg<ffi::AnyBuffer>()  // v [h]
                                  .Arg<ffi::AnyBuffer>()  // d_context [b, h]
                                  .Ret<ffi::AnyBuffer>()  // vals
                                  .Ret<ffi::AnyBuffer>()  // keys
                                  .Ret<ffi::AnyBuffer>()  // d_vals
                                  .Ret<ffi::AnyBuffer>()  // d_keys
                                  .Ret<ffi::AnyBuffer>()  // d_query [b, h]
                                  .Ret<ffi::AnyBuffer>());  // d_v [h]

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelscreenSlotsAttend, SlotsAttendImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // query [b, h]
                                  .Arg<ffi::AnyBuffer>()  // keys [b, m, h]
                                  .Arg<ffi::AnyBuffer>()  // vals [b, m, h]
                                  .Arg<ffi::AnyBuffer>()  // time [b, m], int32 (< 0: empty)
                                  .Arg<ffi::AnyBuffer>()  // v [h]
                                  .Ret<ffi::AnyBuffer>()  // context [b, h]
                                  .Ret<ffi::AnyBuffer>());  // alpha [b, m]

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelscreenRnnBlockReverse, RnnBlockReverseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // vals [b, m, h]
                                  .Arg<ffi::AnyBuffer>()  // keys
                                  .Arg<ffi::AnyBuffer>()  // d_vals
                                  .Arg<ffi::AnyBuffer>()  // d_keys
                                  .Arg<ffi::AnyBuffer>()  // d_newest [b, h]
                                  .Arg<ffi::AnyBuffer>()  // dq_next [b, h]
                                  .Arg<ffi::AnyBuffer>()  // first [], int32
                                  .Arg<ffi::AnyBuffer>()  // slot [n, b], int32
                                  .Arg<ffi::AnyBuffer>()  // evicted [n, b], int32
                                  .Arg<ffi::AnyBuffer>()  // alpha [n, b, m]
                                  .Arg<ffi::AnyBuffer>()  // h [L, b, h]
                                  .Arg<ffi::AnyBuffer>()  // h_keys [L, b, h]
                                  .Arg<ffi::AnyBuffer>()  // g [b, L, h]
                                  .Arg<ffi::AnyBuffer>()  // q [L, b, h]
                                  .Arg<ffi::AnyBuffer>()  // v [h]
                                  .Arg<ffi::AnyBuffer>()  // ua_t [h, h]
                                  .Arg<ffi::AnyBuffer>()  // both_t [G + h, h]
                                  .Arg<ffi::AnyBuffer>()  // stored [n, b] int32 (given; else [0])
                                  .Arg<ffi::AnyBuffer>()  // undo [4, n, b, h] (given; else [0])
                                  .Arg<ffi::AnyBuffer>()  // resets [n, b] int32 (or [0])
                                  .Arg<ffi::AnyBuffer>()  // before [n, b, m] int32 (or [0])
                                  .Arg<ffi::AnyBuffer>()  // given memory's vals (or [0])
                                  .Arg<ffi::AnyBuffer>()  // its keys (or [0])
                                  .Arg<ffi::AnyBuffer>()  // its times [b, m] int32 (or [0])
                                  .Arg<ffi::AnyBuffer>()  // t0 [] int32 (or [0])
                                  .OptionalArg<ffi::AnyBuffer>()  // dc_next [b, h] (LSTM)
                                  .OptionalArg<ffi::AnyBuffer>()  // pre [n, b, 4h] (LSTM)
                                  .OptionalArg<ffi::AnyBuffer>()  // c [L, b, h] (LSTM)
                                  .Attr<int64_t>("nu")
                                  .Attr<double>("attn")
                                  .Ret<ffi::AnyBuffer>()  // vals
                                  .Ret<ffi::AnyBuffer>()  // keys
                                  .Ret<ffi::AnyBuffer>()  // d_vals
                                  .Ret<ffi::AnyBuffer>()  // d_keys
                                  .Ret<ffi::AnyBuffer>()  // d_newest
                                  .Ret<ffi::AnyBuffer>()  // dq_next
                                  .Ret<ffi::AnyBuffer>()  // dq [n, b, h]
                                  .Ret<ffi::AnyBuffer>()  // dpre [n, b, G]
                                  .Ret<ffi::AnyBuffer>()  // dk [n, b, h]
                                  .Ret<ffi::AnyBuffer>()  // d_v [h]
                                  .OptionalRet<ffi::AnyBuffer>());  // dc_next (LSTM)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelscreenRnnForward, RnnForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // vals [b, m, h]
                                  .Arg<ffi::AnyBuffer>()  // keys
                                  .Arg<ffi::AnyBuffer>()  // score [b, m]
                                  .Arg<ffi::AnyBuffer>()  // time [b, m], int32
                                  .Arg<ffi::AnyBuffer>()  // seen [b], int32
                                  .Arg<ffi::AnyBuffer>()  // h_0 [b, h]
                                  .Arg<ffi::AnyBuffer>()  // s_0
                                  .Arg<ffi::AnyBuffer>()  // q_0 (zeros)
                                  .Arg<ffi::AnyBuffer>()  // k_0
                                  .Arg<ffi::AnyBuffer>()  // x [L - 1, b, i]
                                  .Arg<ffi::AnyBuffer>()  // U [i, G] (G: h, an LSTM's 4h)
                                  .Arg<ffi::AnyBuffer>()  // b [G]
                                  .Arg<ffi::AnyBuffer>()  // Va [h, h]
                                  .Arg<ffi::AnyBuffer>()  // V [h, G]
                                  .Arg<ffi::AnyBuffer>()  // Ua [h, h]
                                  .Arg<ffi::AnyBuffer>()  // v [h]
                                  .Arg<ffi::AnyBuffer>()  // stamp [], int32
                                  .Arg<ffi::AnyBuffer>()  // restart [b], int32
                                  .Arg<ffi::AnyBuffer>()  // draws [L - 1, b] int32 (or [0])
                                  .Arg<ffi::AnyBuffer>()  // resets [L - 1, b] int32 (or [0])
                                  .OptionalArg<ffi::AnyBuffer>()  // c_0 [b, h] (LSTM)
                                  .Attr<int64_t>("nu")
                                  .Attr<double>("attn")
                                  .Attr<int64_t>("lean")
                                  .Attr<int64_t>("relevance")
                                  .Attr<double>("decay")
                                  .Attr<int64_t>("fifo")
                                  .Ret<ffi::AnyBuffer>()  // vals
                                  .Ret<ffi::AnyBuffer>()  // keys
                                  .Ret<ffi::AnyBuffer>()  // score
                                  .Ret<ffi::AnyBuffer>()  // time
                                  .Ret<ffi::AnyBuffer>()  // seen
                                  .Ret<ffi::AnyBuffer>()  // h [L, b, h]
                                  .Ret<ffi::AnyBuffer>()  // s (lean: [2, b, h])
                                  .Ret<ffi::AnyBuffer>()  // q
                                  .Ret<ffi::AnyBuffer>()  // k
                                  .Ret<ffi::AnyBuffer>()  // slot [L - 1, b], int32
                                  .Ret<ffi::AnyBuffer>()  // replaced [L - 1, b], int32
                                  .Ret<ffi::AnyBuffer>()  // stored [L - 1, b], int32
                                  .Ret<ffi::AnyBuffer>()  // left [L - 1, b], int32
                                  .Ret<ffi::AnyBuffer>()  // alpha [L - 1, b, m]
                                  .Ret<ffi::AnyBuffer>()  // before [L - 1, b, m] int32 (or [0])
                                  .OptionalRet<ffi::AnyBuffer>());  // c [L, b, h] (LSTM)
