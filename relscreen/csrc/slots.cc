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

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// float tanh as a rational function of x (odd degree 13 over even degree 6),
// clamped where float's tanh is +-1: within 5 ulp of tanh, as XLA's own, and
// plain arithmetic the compiler vectorises.
inline float Tanh(float x) {
  const float c = 7.90531110763549805f;
  x = std::min(std::max(x, -c), c);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p * x / q;
}

inline double Tanh(double x) { return std::tanh(x); }

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
    const int64_t row = b * M * H;
    const int64_t j = s_col[b], r = r_col[b];
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
      std::copy(back + b * H, back + (b + 1) * H, vals + row + j * H);
      std::copy(back_key + b * H, back_key + (b + 1) * H, keys + row + j * H);
    }
    if (r_ok) {
      std::fill(d_vals + row + r * H, d_vals + row + (r + 1) * H, T(0));
      std::fill(d_keys + row + r * H, d_keys + row + (r + 1) * H, T(0));
      std::copy(put_back + b * H, put_back + (b + 1) * H, vals + row + r * H);
      std::copy(put_back_key + b * H, put_back_key + (b + 1) * H, keys + row + r * H);
    }
    const T* q = query + b * H;
    const T* dc = d_context + b * H;
    const T* a = alpha + b * M;
    T* dq = d_query + b * H;
    std::fill(dq, dq + H, T(0));
    T weighted = 0;
    for (int64_t m = 0; m < M; ++m) {
      const T* vm = vals + row + m * H;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t h = 0; h < H; ++h) acc += vm[h] * dc[h];
      d_alpha[m] = acc;
      weighted += a[m] * acc;
    }
    for (int64_t m = 0; m < M; ++m) {
      const T am = a[m];
      if (am == T(0)) continue;
      const T ds = am * (d_alpha[m] - weighted);
      const T* km = keys + row + m * H;
      T* dkm = d_keys + row + m * H;
      T* dvm = d_vals + row + m * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        const T t = Tanh(q[h] + km[h]);
        const T g = ds * v[h] * (T(1) - t * t);
        dq[h] += g;
        dkm[h] += g;
        d_v[h] += ds * t;
        dvm[h] += am * dc[h];
      }
    }
  }
}

template <typename T>
void SlotsAttend(int64_t b0, int64_t b1, int64_t M, int64_t H, const T* __restrict query,
                 const T* __restrict keys, const T* __restrict vals, const int32_t* __restrict time,
                 const T* __restrict v, T* __restrict context, T* __restrict alpha) {
  std::vector<T> scratch(H);
  T* __restrict t = scratch.data();
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t row = b * M * H;
    const T* q = query + b * H;
    T* a = alpha + b * M;
    const int32_t* held = time + b * M;
    T peak = -std::numeric_limits<T>::infinity();
    for (int64_t m = 0; m < M; ++m) {
      if (held[m] < 0) continue;
      const T* km = keys + row + m * H;
      // tanh first, then the sum: tanh inside the sum's loop ran 2.5x slower
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) t[h] = v[h] * Tanh(q[h] + km[h]);
      T e = 0;
#pragma omp simd reduction(+ : e)
      for (int64_t h = 0; h < H; ++h) e += t[h];
      a[m] = e;
      peak = std::max(peak, e);
    }
    T total = 0;
    for (int64_t m = 0; m < M; ++m) {
      a[m] = held[m] < 0 ? T(0) : std::exp(a[m] - peak);
      total += a[m];
    }
    T* ctx = context + b * H;
    std::fill(ctx, ctx + H, T(0));
    if (total == T(0)) continue;  // no slot holds a state: weights and context 0
    for (int64_t m = 0; m < M; ++m) {
      a[m] /= total;
      const T am = a[m];
      if (am == T(0)) continue;
      const T* vm = vals + row + m * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) ctx[h] += am * vm[h];
    }
  }
}

// Rows go in chunks of kRows, a chunk's results its own (the reverse pass's
// shares of d v are summed in chunk order after): the result does not depend
// on how many threads ran them.
constexpr int64_t kRows = 8;
// Below this many bank elements (b m h) one thread does it all: waking XLA's
// other threads costs more than the step (batch 10, 25 slots, 128 units: 32,000).
constexpr int64_t kParallel = 1 << 17;

// Runs body(chunk, first row, end row) for every chunk of kRows rows: here, and
// on XLA's threads when `parallel`. Each thread takes chunks until none is left;
// this call returns when every chunk is done. A task that starts later finds
// none left, so the state it shares is on the heap, owned by all.
template <typename F>
void ForChunks(ffi::ThreadPool& pool, int64_t rows, bool parallel, F body) {
  struct Shared {
    Shared(F f, int64_t n, int64_t k) : body(std::move(f)), rows(n), chunks(k) {}
    F body;
    int64_t rows, chunks;
    std::atomic<int64_t> next{0}, done{0};
    void Work() {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
        body(c, c * kRows, std::min(rows, (c + 1) * kRows));
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  const int64_t chunks = (rows + kRows - 1) / kRows;
  auto shared = std::make_shared<Shared>(std::move(body), rows, chunks);
  if (parallel) {
    const int64_t helpers = std::min(pool.num_threads(), chunks) - 1;
    for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared] { shared->Work(); });
  }
  shared->Work();
  // Every chunk is taken; wait for those other threads are still running.
  while (shared->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
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
  T* out = d_v->typed_data<T>();
  std::fill(out, out + H, T(0));
  for (size_t c = 0; c < parts.size() / H; ++c)
    for (int64_t h = 0; h < H; ++h) out[h] += parts[c * H + h];
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
  const ffi::AnyBuffer* ins[4] = {&vals_in, &keys_in, &d_vals_in, &d_keys_in};
  ffi::Result<ffi::AnyBuffer>* outs[4] = {&vals, &keys, &d_vals, &d_keys};
  for (int i = 0; i < 4; ++i) {  // XLA aliases them; copy where it did not
    if ((*outs[i])->untyped_data() != ins[i]->untyped_data())
      std::memcpy((*outs[i])->untyped_data(), ins[i]->untyped_data(), ins[i]->size_bytes());
  }
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
