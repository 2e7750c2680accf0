// Portable SIMD helpers for the kernel headers, on GCC vector extensions: the same source becomes
// SSE, AVX2 or AVX-512 code under each ISA's target pragma (GRANET_VECTOR_BYTES wide).
// No include guard: each kernel header includes it inside its namespace granet::cpu::GRANET_ISA
// and anonymous namespace, once per ISA (see for_each_isa.h).

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The calling thread's OpenMP team: its size and this thread's number in it (1 and 0 outside a
// parallel region or without OpenMP).
struct Team {
  int64_t size, id;
};
inline Team this_team() {
#ifdef _OPENMP
  return {omp_get_num_threads(), omp_get_thread_num()};
#else
  return {1, 0};
#endif
}

template <typename T>
struct IntOf;
template <>
struct IntOf<float> {
  typedef int32_t type;
};
template <>
struct IntOf<double> {
  typedef int64_t type;
};

// a * b + c, rounded once where the ISA has FMA (the AVX2 and AVX-512 copies), twice on the SSE
// baseline, which has none. Explicit because GCC contracts a * b + c at its own discretion: GCC 13
// left the multiply and the add apart when it vectorised a scalar tail loop of the AVX-512 copy,
// and kernels whose scalar and vector paths must give the same bits (the one-row forward and the
// training forward; dW computed with or without dx) cannot leave that to the compiler.
template <typename T>
inline T fmadd(T a, T b, T c) {
#if GRANET_VECTOR_BYTES >= 32
  if constexpr (sizeof(T) == 4) return __builtin_fmaf(a, b, c);
  else return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
  static constexpr int lanes = GRANET_VECTOR_BYTES / sizeof(T);

  static inline vec load(const T* p) {
    vec v;
    __builtin_memcpy(&v, p, sizeof(vec));
    return v;
  }
  static inline void store(T* p, vec v) { __builtin_memcpy(p, &v, sizeof(vec)); }
  // s - 0 folds to one broadcast (0 + s would not: -0 + 0 is +0).
  static inline vec splat(T s) { return s - vec{}; }
  // a * b + c lane by lane, rounded as the scalar fmadd above.
  static inline vec fmadd(vec a, vec b, vec c) {
#if GRANET_VECTOR_BYTES == 64
    if constexpr (sizeof(T) == 4) return _mm512_fmadd_ps(a, b, c);
    else return _mm512_fmadd_pd(a, b, c);
#elif GRANET_VECTOR_BYTES == 32
    if constexpr (sizeof(T) == 4) return _mm256_fmadd_ps(a, b, c);
    else return _mm256_fmadd_pd(a, b, c);
#else
    return a * b + c;
#endif
  }
  static inline T hsum(vec v) {
    T s = T(0);
    for (int l = 0; l < lanes; ++l) s += v[l];
    return s;
  }
};

// Horizontal sums of four vectors at once (out[u] = sum of t_u's lanes): a transposing reduction
// tree costs about as much as one plain horizontal sum.
template <typename T>
inline void hsum4(typename Simd<T>::vec t0, typename Simd<T>::vec t1, typename Simd<T>::vec t2,
                  typename Simd<T>::vec t3, T* out) {
  constexpr int L = Simd<T>::lanes;
  if constexpr (L == 8) {
    typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
    const ivec even = {0, 8, 2, 10, 4, 12, 6, 14}, odd = {1, 9, 3, 11, 5, 13, 7, 15};
    const auto u0 = __builtin_shuffle(t0, t1, even) + __builtin_shuffle(t0, t1, odd);
    const auto u1 = __builtin_shuffle(t2, t3, even) + __builtin_shuffle(t2, t3, odd);
    const ivec lo = {0, 1, 8, 9, 4, 5, 12, 13}, hi = {2, 3, 10, 11, 6, 7, 14, 15};
    const auto v = __builtin_shuffle(u0, u1, lo) + __builtin_shuffle(u0, u1, hi);
    // Lanes u and u + 4 hold the halves of sum u: add the two half vectors. (Written as lane by
    // lane scalar adds, GCC 13.3 -O3 vectorised this wrongly for 8 x fp64 under AVX-512: wrong BSR
    // dW sums on the device machine's Xeon; correct at -O2 or without the tree vectorisers.)
    typedef T half __attribute__((vector_size(GRANET_VECTOR_BYTES / 2)));
    half a, b;
    __builtin_memcpy(&a, &v, sizeof(half));
    __builtin_memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(half), sizeof(half));
    a += b;
    __builtin_memcpy(out, &a, sizeof(half));
  } else {
    out[0] = Simd<T>::hsum(t0);
    out[1] = Simd<T>::hsum(t1);
    out[2] = Simd<T>::hsum(t2);
    out[3] = Simd<T>::hsum(t3);
  }
}

