// TQ2_0 (llama.cpp / ggml) vs codl ternary GEMV, one process, 4096 x 4096 ternary weight, batch 1.
//
// Portions of this file (block_tq2_0, block_q8_K, quantize_row_tq2_0_ref, quantize_row_q8_K_ref,
// nearest_int, hsum_float_8, ggml_vec_dot_tq2_0_q8_K and the structure of
// ggml_compute_forward_mul_mat / ggml_barrier) are copied from ggml, MIT License,
// Copyright (c) 2023-2024 The ggml authors, https://github.com/ggml-org/ggml
// (commit d99724f2b141fed9e1a9f402213506c081433465, the ggml tree that llama.cpp vendors under
// ggml/; the TQ2_0 x86 kernel is the same text in llama.cpp's ggml/src/ggml-cpu/arch/x86/quants.c).
// Files: src/ggml-common.h, src/ggml-quants.c, src/ggml-cpu/arch/x86/quants.c,
//        src/ggml-cpu/simd-mappings.h, src/ggml-cpu/ggml-cpu.c.
// Changes to the copied code: C -> C++ casts of void pointers, GGML_RESTRICT -> __restrict__,
// nothing else in the kernel bodies; the scalar fallback of ggml_vec_dot_tq2_0_q8_K is left out.
//
// Built with the C++ tests (CMake target codl_tq2_0_gemv, x86 with AVX-512); run it as
// build/<dir>/codl_tq2_0_gemv [copies rounds calls] (defaults 12 7 200): see benchmarks/README.md.

#include <immintrin.h>

#include <algorithm>
#include <cassert>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "codl/dispatch.h"
#include "codl/pack.h"
#include "codl/ternary.h"

// ============================== ggml (copied) ==============================
#define GGML_RESTRICT __restrict__
#define UNUSED(x) (void)(x)
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

#define QK_K 256
typedef uint16_t ggml_half;

// ggml-common.h: 2.0625 bpw
typedef struct {
    uint8_t qs[QK_K/4]; // 2 bits per element
    ggml_half d;
} block_tq2_0;
static_assert(sizeof(block_tq2_0) == sizeof(ggml_half) + QK_K / 4, "wrong tq2_0 block size/padding");

// ggml-common.h: This is only used for intermediate quantization and dot products
typedef struct {
    float   d;              // delta
    int8_t  qs[QK_K];       // quants
    int16_t bsums[QK_K/16]; // sum of quants in groups of 16
} block_q8_K;
static_assert(sizeof(block_q8_K) == sizeof(float) + QK_K + QK_K/16*sizeof(int16_t), "wrong q8_K block size/padding");

// simd-mappings.h: on x86 (F16C, not NEON/POWER/RISC-V) GGML_CPU_FP16_TO_FP32 is the
// 64K-entry table lookup ggml_lookup_fp16_to_fp32 (ggml_table_f32_f16, filled in ggml_cpu_init).
static float ggml_table_f32_f16[1 << 16];
static inline float ggml_lookup_fp16_to_fp32(ggml_half f) {
    uint16_t s;
    memcpy(&s, &f, sizeof(uint16_t));
    return ggml_table_f32_f16[s];
}
#define GGML_CPU_FP16_TO_FP32(x) ggml_lookup_fp16_to_fp32(x)
#define GGML_FP32_TO_FP16(x) ((ggml_half)_cvtss_sh((x), 0))
static void ggml_init_table() {
    for (uint32_t i = 0; i < (1u << 16); ++i) ggml_table_f32_f16[i] = _cvtsh_ss((unsigned short)i);
}

// ggml-quants.c
static inline int nearest_int(float fval) {
    assert(fabsf(fval) <= 4194303.f);
    float val = fval + 12582912.f;
    int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

// ggml-quants.c
void quantize_row_tq2_0_ref(const float * GGML_RESTRICT x, block_tq2_0 * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;

    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f; // absolute max

        for (int j = 0; j < QK_K; j++) {
            const float v = x[j];
            amax = MAX(amax, fabsf(v));
        }

        const float d = amax;
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);

        for (size_t j = 0; j < sizeof(y->qs); j += 32) {
            for (size_t m = 0; m < 32; ++m) {
                uint8_t q = 0;
                for (size_t n = 0; n < 4; ++n) {
                    // -1, 0, 1 -> 0, 1, 2
                    int xi = lroundf(x[m + n*32] * id) + 1;
                    q += (xi & 3) << (2*n);
                }
                y[i].qs[j + m] = q;
            }
            x += 4*32;
        }
    }
}

// ggml-quants.c
void quantize_row_q8_K_ref(const float * GGML_RESTRICT x, block_q8_K * GGML_RESTRICT y, int64_t k) {
    assert(k % QK_K == 0);
    const int64_t nb = k / QK_K;

    for (int i = 0; i < nb; i++) {

        float max = 0;
        float amax = 0;
        for (int j = 0; j < QK_K; ++j) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax; max = x[j];
            }
        }
        if (!amax) {
            y[i].d = 0;
            memset(y[i].qs, 0, QK_K);
            x += QK_K;
            continue;
        }
        //const float iscale = -128.f/max;
        // We need this change for IQ2_XXS, else the AVX implementation becomes very awkward
        const float iscale = -127.f/max;
        for (int j = 0; j < QK_K; ++j) {
            int v = nearest_int(iscale*x[j]);
            y[i].qs[j] = MIN(127, v);
        }
        for (int j = 0; j < QK_K/16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) {
                sum += y[i].qs[j*16 + ii];
            }
            y[i].bsums[j] = sum;
        }
        y[i].d = 1/iscale;
        x += QK_K;
    }
}

// ggml-cpu/arch/x86/quants.c: "placeholder implementation for Apple targets" -- this is what
// type_traits_cpu[GGML_TYPE_Q8_K].from_float is on x86 (no SIMD quantizer for Q8_K).
void quantize_row_q8_K(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {
    quantize_row_q8_K_ref(x, (block_q8_K *)y, k);
}

// ggml-cpu/arch/x86/quants.c
#if __AVX__ || __AVX2__ || __AVX512F__
// horizontally add 8 floats
static inline float hsum_float_8(const __m256 x) {
    __m128 res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    return _mm_cvtss_f32(res);
}
#endif

// The baseline is the kernel llama.cpp runs on x86: ggml's AVX2 branch (it has no AVX-512 one
// for TQ2_0); its scalar fallback is not copied.
#if !defined(__AVX2__)
#error "build with -mavx2: the TQ2_0 baseline is ggml's AVX2 kernel"
#endif
static const char* kTq2Path = "AVX2 (#if defined(__AVX2__) branch; ggml has no AVX-512 branch for tq2_0)";

// ggml-cpu/arch/x86/quants.c
void ggml_vec_dot_tq2_0_q8_K(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {
    assert(nrc == 1);
    UNUSED(nrc);
    UNUSED(bx);
    UNUSED(by);
    UNUSED(bs);

    const block_tq2_0 * GGML_RESTRICT x = (const block_tq2_0 *)vx;
    const block_q8_K  * GGML_RESTRICT y = (const block_q8_K *)vy;

    const int nb = n / QK_K;

#if defined(__AVX2__)
    __m256 sumf = _mm256_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        // 16-bit sums, because 256*127 still fits
        __m256i sumi0 = _mm256_setzero_si256();
        __m256i sumi1 = _mm256_setzero_si256();

        for (size_t j = 0; j < sizeof(x->qs); j += 32) {
            __m256i qx0 = _mm256_loadu_si256((const __m256i *) (x[i].qs + j));
            __m256i qx1 = _mm256_srli_epi16(qx0, 2);
            __m256i qx2 = _mm256_srli_epi16(qx0, 4);
            __m256i qx3 = _mm256_srli_epi16(qx0, 6);

            // 0, 1, 2 (should not be 3)
            qx0 = _mm256_and_si256(qx0, _mm256_set1_epi8(3));
            qx1 = _mm256_and_si256(qx1, _mm256_set1_epi8(3));
            qx2 = _mm256_and_si256(qx2, _mm256_set1_epi8(3));
            qx3 = _mm256_and_si256(qx3, _mm256_set1_epi8(3));

            const __m256i qy0 = _mm256_loadu_si256((const __m256i *) (y[i].qs + j*4 +  0));
            const __m256i qy1 = _mm256_loadu_si256((const __m256i *) (y[i].qs + j*4 + 32));
            const __m256i qy2 = _mm256_loadu_si256((const __m256i *) (y[i].qs + j*4 + 64));
            const __m256i qy3 = _mm256_loadu_si256((const __m256i *) (y[i].qs + j*4 + 96));

            qx0 = _mm256_maddubs_epi16(qx0, qy0);
            qx1 = _mm256_maddubs_epi16(qx1, qy1);
            qx2 = _mm256_maddubs_epi16(qx2, qy2);
            qx3 = _mm256_maddubs_epi16(qx3, qy3);

            sumi0 = _mm256_add_epi16(sumi0, _mm256_add_epi16(qx0, qx1));
            sumi1 = _mm256_add_epi16(sumi1, _mm256_add_epi16(qx2, qx3));
        }

        const __m256i ysum = _mm256_loadu_si256((const __m256i *) y[i].bsums);
        const __m256 d = _mm256_set1_ps(y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d));

        sumi0 = _mm256_add_epi16(sumi0, sumi1);
        sumi0 = _mm256_sub_epi16(sumi0, ysum);
        sumi0 = _mm256_madd_epi16(sumi0, _mm256_set1_epi16(1));

        sumf = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi0), d), sumf);
    }

    *s = hsum_float_8(sumf);
#endif
}

// ============================== ggml-style thread pool ==============================
// A small stand-in for ggml's CPU threadpool: the calling thread is thread 0 and T-1 persistent
// workers spin on a generation counter (ggml's workers poll likewise between graphs; here they
// fall back to a condition variable after ~0.5 ms of spinning so that an idle pool does not
// steal the second core from codl's blocks). ggml_barrier is copied in spirit (counter + passed).
struct Pool {
    typedef void (*JobFn)(void* arg, int ith, int nth);
    std::vector<std::thread> workers;
    std::atomic<uint64_t> gen{0};
    std::atomic<int> done{0};
    std::atomic<int> sleepers{0};
    std::atomic<bool> stop{false};
    std::mutex m;
    std::condition_variable cv;
    JobFn fn = nullptr;
    void* arg = nullptr;
    int nth = 1;
    // ggml_barrier state
    std::atomic<int> n_barrier{0};
    std::atomic<int> n_barrier_passed{0};
    std::atomic<int> current_chunk{0};

    explicit Pool(int n_workers) {
        for (int i = 0; i < n_workers; ++i) workers.emplace_back([this, i] { loop(i + 1); });
    }
    ~Pool() {
        stop.store(true);
        gen.fetch_add(1);
        { std::lock_guard<std::mutex> lk(m); }
        cv.notify_all();
        for (auto& t : workers) t.join();
    }
    void loop(int ith) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t g;
            long spins = 0;
            while ((g = gen.load(std::memory_order_acquire)) == seen) {
                _mm_pause();
                if (++spins > 20000) {  // ~0.5-1 ms of pause
                    std::unique_lock<std::mutex> lk(m);
                    sleepers.fetch_add(1);
                    while (gen.load() == seen && !stop.load()) cv.wait(lk);
                    sleepers.fetch_sub(1);
                    spins = 0;
                }
            }
            seen = g;
            if (stop.load()) return;
            if (ith < nth) {
                fn(arg, ith, nth);
                done.fetch_add(1, std::memory_order_release);
            }
        }
    }
    void run(JobFn f, void* a, int n) {
        fn = f; arg = a; nth = n;
        done.store(0, std::memory_order_relaxed);
        if (n > 1) {
            gen.fetch_add(1);  // seq_cst, pairs with sleepers.fetch_add in loop()
            if (sleepers.load() > 0) {
                { std::lock_guard<std::mutex> lk(m); }
                cv.notify_all();
            }
        }
        f(a, 0, n);
        while (done.load(std::memory_order_acquire) < n - 1) _mm_pause();
    }
    // ggml_barrier (ggml-cpu.c)
    void barrier(int n_threads) {
        if (n_threads == 1) return;
        int n_passed = n_barrier_passed.load(std::memory_order_relaxed);
        if (n_barrier.fetch_add(1, std::memory_order_seq_cst) == n_threads - 1) {
            n_barrier.store(0, std::memory_order_relaxed);
            n_barrier_passed.fetch_add(1, std::memory_order_seq_cst);
            return;
        }
        while (n_barrier_passed.load(std::memory_order_relaxed) == n_passed) _mm_pause();
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
};

// One ggml mul_mat (src0 = TQ2_0 [K x N], src1 = f32 [K x 1]) as ggml_compute_forward_mul_mat
// runs it for ne11 == 1: each thread quantizes its share of the Q8_K blocks of the activation
// row, barrier, then 64-row chunks (chunk_size 64 because nr1 == 1) claimed from an atomic
// counter, each chunk walked in blocks of 16 rows through tmp[32] as in _one_chunk.
struct Tq2Job {
    Pool* pool;
    const block_tq2_0* w;  // N rows of K/QK_K blocks
    const float* x;
    block_q8_K* q8;        // K/QK_K blocks
    float* y;
    int64_t K, N;
};

static void tq2_mul_mat_thread(void* a, int ith, int nth) {
    Tq2Job& J = *static_cast<Tq2Job*>(a);
    const int64_t ne10 = J.K;
    {   // from_float split by blocks (ggml_compute_forward_mul_mat)
        const int64_t bs = QK_K;
        int64_t ne10_block_start = (ith * ne10/bs) / nth;
        int64_t ne10_block_end   = ((ith + 1) * ne10/bs) / nth;
        quantize_row_q8_K(J.x + ne10_block_start*bs, J.q8 + ne10_block_start,
                          (ne10_block_end - ne10_block_start) * bs);
    }
    if (ith == 0) J.pool->current_chunk.store(nth, std::memory_order_relaxed);
    J.pool->barrier(nth);

    const int64_t nr0 = J.N, nr1 = 1;
    int chunk_size = 16;
    if (nr0 == 1 || nr1 == 1) chunk_size = 64;
    int64_t nchunk0 = (nr0 + chunk_size - 1) / chunk_size;
    int64_t nchunk1 = (nr1 + chunk_size - 1) / chunk_size;
    if (nchunk0 * nchunk1 < nth * 4) {
        nchunk0 = nr0 > nr1 ? nth : 1;
        nchunk1 = nr0 > nr1 ? 1 : nth;
    }
    const int64_t dr0 = (nr0 + nchunk0 - 1) / nchunk0;
    const size_t nb01 = (size_t)(J.K / QK_K) * sizeof(block_tq2_0);
    const char* src0 = (const char*)J.w;
    int current_chunk = ith;
    while (current_chunk < nchunk0 * nchunk1) {
        const int64_t ith0 = current_chunk % nchunk0;
        const int64_t ir0_start = dr0 * ith0;
        const int64_t ir0_end = MIN(ir0_start + dr0, nr0);
        // ggml_compute_forward_mul_mat_one_chunk, ne11 == 1, num_rows_per_vec_dot == 1
        float tmp[32];
        const int64_t blck_0 = 16;
        for (int64_t iir0 = ir0_start; iir0 < ir0_end; iir0 += blck_0) {
            for (int64_t ir0 = iir0; ir0 < iir0 + blck_0 && ir0 < ir0_end; ++ir0) {
                ggml_vec_dot_tq2_0_q8_K((int)ne10, &tmp[ir0 - iir0], 0, src0 + ir0 * nb01, 0, J.q8, 0, 1);
            }
            memcpy(&J.y[iir0], tmp, (MIN(iir0 + blck_0, ir0_end) - iir0) * sizeof(float));
        }
        if (nth >= nchunk0 * nchunk1) break;
        current_chunk = J.pool->current_chunk.fetch_add(1, std::memory_order_relaxed);
    }
}

// ============================== benchmark ==============================
static double now_us() {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
static double rel_err(const std::vector<float>& a, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) { num += (a[i] - ref[i]) * (a[i] - ref[i]); den += ref[i] * ref[i]; }
    return std::sqrt(num / den);
}
static double rel_err_f(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) { num += double(a[i] - b[i]) * (a[i] - b[i]); den += double(b[i]) * b[i]; }
    return std::sqrt(num / den);
}

int main(int argc, char** argv) {
    const int64_t K = 4096, N = 4096;
    const int kCopies = argc > 1 ? std::atoi(argv[1]) : 12;
    const int kRounds = argc > 2 ? std::atoi(argv[2]) : 7;
    const int kCalls = argc > 3 ? std::atoi(argv[3]) : 200;
    const int kSkip = 5;  // calls dropped at the start of each block (pool wake-up, switch-over)

    ggml_init_table();

    std::mt19937 rng(1234);
    std::vector<int8_t> codes(N * K);
    for (auto& c : codes) c = (int8_t)((int)(rng() % 3) - 1);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> x(K);
    for (auto& v : x) v = nd(rng);

    // float reference W @ x
    std::vector<double> yref(N);
    for (int64_t r = 0; r < N; ++r) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += (double)codes[r * K + k] * x[k];
        yref[r] = s;
    }

    // TQ2_0 weights: quantize_row_tq2_0_ref of the codes as floats (d = 1 per block)
    const size_t tq2_row_bytes = (K / QK_K) * sizeof(block_tq2_0);
    const size_t tq2_bytes = N * tq2_row_bytes;
    std::vector<block_tq2_0*> tq2w(kCopies);
    {
        std::vector<float> wf(K);
        tq2w[0] = (block_tq2_0*)std::aligned_alloc(64, (tq2_bytes + 63) / 64 * 64);
        for (int64_t r = 0; r < N; ++r) {
            for (int64_t k = 0; k < K; ++k) wf[k] = codes[r * K + k];
            quantize_row_tq2_0_ref(wf.data(), tq2w[0] + r * (K / QK_K), K);
        }
        for (int c = 1; c < kCopies; ++c) {
            tq2w[c] = (block_tq2_0*)std::aligned_alloc(64, (tq2_bytes + 63) / 64 * 64);
            memcpy(tq2w[c], tq2w[0], tq2_bytes);
        }
    }
    // codl weights: ternary2 rows of k_padded / 4 bytes
    const size_t kp = codl::ternary_padded_k(K);
    const size_t codl_row_bytes = kp / 4;
    const size_t codl_bytes = N * codl_row_bytes;
    std::vector<uint8_t*> cw(kCopies);
    cw[0] = (uint8_t*)std::aligned_alloc(64, (codl_bytes + 63) / 64 * 64);
    for (int64_t r = 0; r < N; ++r) {
        if (!codl::pack_ternary2(codes.data() + r * K, K, cw[0] + r * codl_row_bytes)) {
            std::fprintf(stderr, "pack_ternary2 failed\n");
            return 1;
        }
    }
    for (int c = 1; c < kCopies; ++c) {
        cw[c] = (uint8_t*)std::aligned_alloc(64, (codl_bytes + 63) / 64 * 64);
        memcpy(cw[c], cw[0], codl_bytes);
    }
    // Layout note: within each 128 values the two formats put the same 2-bit fields in the same
    // bytes; TQ2_0 adds a 2-byte fp16 scale per 256 values.
    bool same_bits = true;
    for (int64_t r = 0; r < N && same_bits; ++r)
        for (int64_t b = 0; b < K / QK_K; ++b)
            if (memcmp(tq2w[0][r * (K / QK_K) + b].qs, cw[0] + r * codl_row_bytes + b * 64, 64) != 0) { same_bits = false; break; }

    std::vector<float> alpha(N, 1.0f);
    std::vector<float> y_codl(N), y_tq2(N);
    std::vector<block_q8_K> q8(K / QK_K);

    Pool pool(1);  // thread 0 = caller, one persistent worker for T = 2

    auto run_tq2 = [&](const block_tq2_0* w, int T) {
        Tq2Job job{&pool, w, x.data(), q8.data(), y_tq2.data(), K, N};
        pool.run(tq2_mul_mat_thread, &job, T);
    };
    auto run_codl = [&](const uint8_t* w, int T) {
        if (!codl::ternary_linear_f32(x.data(), 1, K, w, alpha.data(), N, nullptr, y_codl.data(), T)) {
            std::fprintf(stderr, "codl returned false\n");
            std::exit(1);
        }
    };

    std::printf("machine: %u hw threads; codl ISA: %s (%s); ggml TQ2_0 dot: %s\n",
                std::thread::hardware_concurrency(), codl::isa_name(codl::active_isa()),
                codl::compiler_description().c_str(), kTq2Path);
    std::printf("weights: TQ2_0 %.2f MB/copy, codl ternary2 %.2f MB/copy, %d copies for cold "
                "(%.1f MB + %.1f MB); 2-bit fields byte-identical between formats: %s\n",
                tq2_bytes / 1e6, codl_bytes / 1e6, kCopies, kCopies * tq2_bytes / 1e6,
                kCopies * codl_bytes / 1e6, same_bits ? "yes" : "NO");

    // correctness, both thread counts
    for (int T : {1, 2}) {
        std::fill(y_codl.begin(), y_codl.end(), 0.f);
        std::fill(y_tq2.begin(), y_tq2.end(), 0.f);
        run_codl(cw[0], T);
        run_tq2(tq2w[0], T);
        std::printf("check T=%d: rel err vs float ref: codl %.4f%%, TQ2_0 %.4f%%; codl vs TQ2_0 %.4f%%\n", T,
                    100 * rel_err(y_codl, yref), 100 * rel_err(y_tq2, yref), 100 * rel_err_f(y_tq2, y_codl));
    }

    std::printf("timing: %d rounds x (%d codl calls, %d TQ2_0 calls), order alternating per round, first %d "
                "calls of each block dropped; medians in us\n", kRounds, kCalls, kCalls, kSkip);
    std::printf("%-5s %-3s %12s %12s %10s   %s\n", "mode", "T", "TQ2_0 us", "codl us", "TQ2/codl", "(p10-p90 TQ2 | codl)");
    for (int T : {1, 2}) {
        for (int cold = 1; cold >= 0; --cold) {
            std::vector<double> tt, tc;
            int ci = 0, ti = 0;
            for (int r = 0; r < kRounds; ++r) {
                for (int side = 0; side < 2; ++side) {
                    const bool codl_side = (side == 0) == (r % 2 == 0);
                    for (int i = 0; i < kCalls; ++i) {
                        if (codl_side) {
                            const uint8_t* w = cw[cold ? (ci++ % kCopies) : 0];
                            double t0 = now_us();
                            run_codl(w, T);
                            double t1 = now_us();
                            if (i >= kSkip) tc.push_back(t1 - t0);
                        } else {
                            const block_tq2_0* w = tq2w[cold ? (ti++ % kCopies) : 0];
                            double t0 = now_us();
                            run_tq2(w, T);
                            double t1 = now_us();
                            if (i >= kSkip) tt.push_back(t1 - t0);
                        }
                    }
                }
            }
            auto pct = [](std::vector<double> v, double p) { std::sort(v.begin(), v.end()); return v[(size_t)(p * (v.size() - 1))]; };
            double mt = median(tt), mc = median(tc);
            std::printf("%-5s %-3d %12.1f %12.1f %10.3f   (%.0f-%.0f | %.0f-%.0f)\n", cold ? "cold" : "hot", T, mt, mc,
                        mt / mc, pct(tt, 0.1), pct(tt, 0.9), pct(tc, 0.1), pct(tc, 0.9));
        }
    }
    // final sanity: outputs after the timing loops still agree
    std::printf("final codl vs TQ2_0 rel err %.4f%%\n", 100 * rel_err_f(y_tq2, y_codl));
    for (auto p : tq2w) std::free(p);
    for (auto p : cw) std::free(p);
    return 0;
}
