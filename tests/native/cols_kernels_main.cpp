// tests/test_cols_kernels.py's driver: the multi-column kernels of patches 0003/0006 against the one-column
// kernels of the same build, bit for bit. Compiled once per ISA level (x86; and aarch64, cross-compiled and run
// under qemu by tests/test_cols_kernels_arm.py) together with ggml-cpu's arch/<arch>/quants.c,
// arch/<arch>/repack.cpp, quants.c and ggml-quants.c from the patched sdist; this file includes
// ggml-cpu/repack.cpp for its (static) repack functions, the ones the library runs at load time.
//
// For every weight type: random weights (quantized with the reference quantizer, repacked for the
// repacked layouts), random activations of 1..32 columns (quantized with the library's own activation
// quantizer), realistic row lengths; the columns go through the entry points that the library's dispatch calls
// (which group them) and every output float is compared with memcmp to the one-column kernel's. Prints
// "checked N differ M" on the last line; exits 1 on any difference.
#include "repack.cpp"
#include "ggml-quants.h"
#include "quants.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" void swift_test_init_tables(void);

namespace {

uint64_t rng_state = 0x9E3779B97F4A7C15ull;

uint64_t next_u64() {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }

double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// weights and activations of varied shapes: per-32 scales over several orders of magnitude, heavy tails,
// now and then an all-zero or constant block (a zero scale)
void fill(std::vector<float> & v, int mode) {
    const size_t n = v.size();
    for (size_t i = 0; i < n; i += 32) {
        const double r = uniform();
        const double scale = std::exp(uniform() * 6.0 - 3.0);
        for (size_t k = i; k < i + 32 && k < n; ++k) {
            double x = normal() * scale;
            if (mode == 1 && uniform() < 0.02) x *= 20.0;   // outliers (activations)
            if (r < 0.02) x = 0.0;
            else if (r < 0.03) x = scale;
            v[k] = (float) x;
        }
    }
}

struct Type {
    const char * name;
    ggml_type wtype;     // weight type
    ggml_type atype;     // activation (vec_dot) type
    int blck;            // elements per weight block
    size_t wblock;       // bytes per weight block
    size_t ablock;       // bytes per activation block (QK8_0 / QK_K elements)
    int ablck;
    bool repacked;
    int rowgroup;        // rows per interleaved group (repacked layouts)
};

// the one-column-dot types, the same on every ISA (each table adds the repacked GEMVs of its own)
#define VEC_DOT_TYPES \
    {"q4_K (vec_dot)", GGML_TYPE_Q4_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q4_K), sizeof(block_q8_K), QK_K, false, 0}, \
    {"q5_K (vec_dot)", GGML_TYPE_Q5_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q5_K), sizeof(block_q8_K), QK_K, false, 0}, \
    {"q6_K (vec_dot)", GGML_TYPE_Q6_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q6_K), sizeof(block_q8_K), QK_K, false, 0}, \
    {"iq4_xs (vec_dot)", GGML_TYPE_IQ4_XS, GGML_TYPE_Q8_K, QK_K, sizeof(block_iq4_xs), sizeof(block_q8_K), QK_K, false, 0}, \
    {"q4_0 (vec_dot)", GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, QK4_0, sizeof(block_q4_0), sizeof(block_q8_0), QK8_0, false, 0}, \
    {"q5_0 (vec_dot)", GGML_TYPE_Q5_0, GGML_TYPE_Q8_0, QK5_0, sizeof(block_q5_0), sizeof(block_q8_0), QK8_0, false, 0}, \
    {"q8_0 (vec_dot)", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, QK8_0, sizeof(block_q8_0), sizeof(block_q8_0), QK8_0, false, 0}, \
    {"q4_1 (vec_dot)", GGML_TYPE_Q4_1, GGML_TYPE_Q8_1, QK4_1, sizeof(block_q4_1), sizeof(block_q8_1), QK8_1, false, 0},

#if defined(__aarch64__)
// ARM64 with dotprod: the layouts ggml_repack_get_optimal_repack_type picks (8x8 / 4x8 with i8mm, 8x4 / 4x4
// without; `inter` is the interleave block), the vec_dot types that are not repacked (or whose row count is not a
// multiple of the interleave)
#if defined(__ARM_FEATURE_MATMUL_INT8)
#define ARM_K 8
#define ARM_Q8 8
#else
#define ARM_K 4
#define ARM_Q8 4
#endif
const Type TYPES[] = {
    {ARM_K == 8 ? "q4_K_8x8 (repacked gemv)" : "q4_K_8x4 (repacked gemv)", GGML_TYPE_Q4_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q4_K), sizeof(block_q8_K), QK_K, true, 8},
    {ARM_K == 8 ? "q5_K_8x8 (repacked gemv)" : "q5_K_8x4 (repacked gemv)", GGML_TYPE_Q5_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q5_K), sizeof(block_q8_K), QK_K, true, 8},
    {ARM_K == 8 ? "q6_K_8x8 (repacked gemv)" : "q6_K_8x4 (repacked gemv)", GGML_TYPE_Q6_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q6_K), sizeof(block_q8_K), QK_K, true, 8},
    {ARM_Q8 == 8 ? "q8_0_4x8 (repacked gemv)" : "q8_0_4x4 (repacked gemv)", GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, QK8_0, sizeof(block_q8_0), sizeof(block_q8_0), QK8_0, true, 4},
    {ARM_Q8 == 8 ? "q4_0_4x8 (repacked gemv)" : "q4_0_4x4 (repacked gemv)", GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, QK4_0, sizeof(block_q4_0), sizeof(block_q8_0), QK8_0, true, 4},
    {"iq4_nl_4x4 (repacked gemv)", GGML_TYPE_IQ4_NL, GGML_TYPE_Q8_0, QK4_NL, sizeof(block_iq4_nl), sizeof(block_q8_0), QK8_0, true, 4},
    VEC_DOT_TYPES
};
#else
const Type TYPES[] = {
    {"q4_K_8x8 (repacked gemv)", GGML_TYPE_Q4_K, GGML_TYPE_Q8_K, QK_K, sizeof(block_q4_K), sizeof(block_q8_K), QK_K, true, 8},
    {"q4_0_8x8 (repacked gemv)", GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, QK4_0, sizeof(block_q4_0), sizeof(block_q8_0), QK8_0, true, 8},
    {"iq4_nl_8x8 (repacked gemv)", GGML_TYPE_IQ4_NL, GGML_TYPE_Q8_0, QK4_NL, sizeof(block_iq4_nl), sizeof(block_q8_0), QK8_0, true, 8},
    VEC_DOT_TYPES
};

#endif

void quantize_weights(ggml_type t, const float * x, void * y, int64_t k) {
    switch (t) {
        case GGML_TYPE_Q4_K:   quantize_row_q4_K_ref(x, (block_q4_K *) y, k); break;
        case GGML_TYPE_Q5_K:   quantize_row_q5_K_ref(x, (block_q5_K *) y, k); break;
        case GGML_TYPE_Q6_K:   quantize_row_q6_K_ref(x, (block_q6_K *) y, k); break;
        case GGML_TYPE_IQ4_XS: quantize_row_iq4_xs_ref(x, (block_iq4_xs *) y, k); break;
        case GGML_TYPE_IQ4_NL: quantize_row_iq4_nl_ref(x, (block_iq4_nl *) y, k); break;
        case GGML_TYPE_Q4_0:   quantize_row_q4_0_ref(x, (block_q4_0 *) y, k); break;
        case GGML_TYPE_Q4_1:   quantize_row_q4_1_ref(x, (block_q4_1 *) y, k); break;
        case GGML_TYPE_Q5_0:   quantize_row_q5_0_ref(x, (block_q5_0 *) y, k); break;
        case GGML_TYPE_Q8_0:   quantize_row_q8_0_ref(x, (block_q8_0 *) y, k); break;
        default: abort();
    }
}

// the library's own activation quantizers (type_traits_cpu[...].from_float of this build)
void quantize_activations(ggml_type t, const float * x, void * y, int64_t k) {
    switch (t) {
        case GGML_TYPE_Q8_K: quantize_row_q8_K(x, y, k); break;
        case GGML_TYPE_Q8_0: quantize_row_q8_0(x, y, k); break;
        case GGML_TYPE_Q8_1: quantize_row_q8_1(x, y, k); break;
        default: abort();
    }
}

int repack(const Type & T, int rows, int64_t k, const void * data, size_t size, void * out) {
    ggml_tensor t;
    memset(&t, 0, sizeof(t));
    t.type = T.wtype;
    t.ne[0] = k; t.ne[1] = rows; t.ne[2] = 1; t.ne[3] = 1;
    t.data = out;
    switch (T.wtype) {
#if defined(__aarch64__)
        case GGML_TYPE_Q4_K:   return repack_q4_K_to_q4_K_8_bl(&t, ARM_K, data, size);
        case GGML_TYPE_Q5_K:   return repack_q5_K_to_q5_K_8_bl(&t, ARM_K, data, size);
        case GGML_TYPE_Q6_K:   return repack_q6_K_to_q6_K_8_bl(&t, ARM_K, data, size);
        case GGML_TYPE_Q8_0:   return repack_q8_0_to_q8_0_4_bl(&t, ARM_Q8, data, size);
        case GGML_TYPE_Q4_0:   return repack_q4_0_to_q4_0_4_bl(&t, ARM_Q8, data, size);
        case GGML_TYPE_IQ4_NL: return repack_iq4_nl_to_iq4_nl_4_bl(&t, 4, data, size);
#else
        case GGML_TYPE_Q4_K:   return repack_q4_K_to_q4_K_8_bl(&t, 8, data, size);
        case GGML_TYPE_Q4_0:   return repack_q4_0_to_q4_0_8_bl(&t, 8, data, size);
        case GGML_TYPE_IQ4_NL: return repack_iq4_nl_to_iq4_nl_8_bl(&t, 8, data, size);
#endif
        default: abort();
    }
}

// one column, the library's one-token path
void one_column(const Type & T, int64_t k, int rows, const char * w, size_t wrow, const char * col, float * out) {
    if (T.repacked) {
        switch (T.wtype) {
#if defined(__aarch64__)
            case GGML_TYPE_Q4_K: (ARM_K == 8 ? ggml_gemv_q4_K_8x8_q8_K : ggml_gemv_q4_K_8x4_q8_K)(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_Q5_K: (ARM_K == 8 ? ggml_gemv_q5_K_8x8_q8_K : ggml_gemv_q5_K_8x4_q8_K)(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_Q6_K: (ARM_K == 8 ? ggml_gemv_q6_K_8x8_q8_K : ggml_gemv_q6_K_8x4_q8_K)(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_Q8_0: (ARM_Q8 == 8 ? ggml_gemv_q8_0_4x8_q8_0 : ggml_gemv_q8_0_4x4_q8_0)(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_Q4_0: (ARM_Q8 == 8 ? ggml_gemv_q4_0_4x8_q8_0 : ggml_gemv_q4_0_4x4_q8_0)(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_IQ4_NL: ggml_gemv_iq4_nl_4x4_q8_0(k, out, 0, w, col, 1, rows); break;
#else
            case GGML_TYPE_Q4_K:   ggml_gemv_q4_K_8x8_q8_K(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_Q4_0:   ggml_gemv_q4_0_8x8_q8_0(k, out, 0, w, col, 1, rows); break;
            case GGML_TYPE_IQ4_NL: ggml_gemv_iq4_nl_8x8_q8_0(k, out, 0, w, col, 1, rows); break;
#endif
            default: abort();
        }
        return;
    }
    for (int r = 0; r < rows; ++r) {
        const char * x = w + r*wrow;
        switch (T.wtype) {
            case GGML_TYPE_Q4_K:   ggml_vec_dot_q4_K_q8_K(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q5_K:   ggml_vec_dot_q5_K_q8_K(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q6_K:   ggml_vec_dot_q6_K_q8_K(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_IQ4_XS: ggml_vec_dot_iq4_xs_q8_K(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q4_0:   ggml_vec_dot_q4_0_q8_0(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q5_0:   ggml_vec_dot_q5_0_q8_0(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q8_0:   ggml_vec_dot_q8_0_q8_0(k, out + r, 0, x, 0, col, 0, 1); break;
            case GGML_TYPE_Q4_1:   ggml_vec_dot_q4_1_q8_1(k, out + r, 0, x, 0, col, 0, 1); break;
            default: abort();
        }
    }
}

// whether the multi-column entry point leaves this row length to the one-column kernels by design: on ARM64
// the legacy quants' rows with an odd number of blocks (arch/arm/quants.c says why)
bool declined(const Type & T, int64_t k) {
#if defined(__aarch64__)
    return !T.repacked && T.ablck == QK8_0 && (k / T.ablck) % 2 != 0;
#else
    (void) T; (void) k;
    return false;
#endif
}

// ncols columns at once (column j at cols + j*by, result of row r at out[j*bs + r]), as a verification batch
// runs them: ggml_swift_mul_mat_cols (ggml-cpu.c's dispatch) or the repacked GEMV's balanced column groups
// (repack.cpp's dispatch); false where ggml_swift_mul_mat_cols declines (nothing computed)
bool multi_column(const Type & T, int64_t k, int rows, const char * w, size_t wrow, const char * cols, size_t by,
                  int ncols, float * out, size_t bs) {
#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
    if (T.repacked) {
        switch (T.wtype) {
            case GGML_TYPE_Q4_K: (ARM_K == 8 ? ggml_gemv_q4_K_8x8_q8_K_cols : ggml_gemv_q4_K_8x4_q8_K_cols)(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_Q5_K: (ARM_K == 8 ? ggml_gemv_q5_K_8x8_q8_K_cols : ggml_gemv_q5_K_8x4_q8_K_cols)(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_Q6_K: (ARM_K == 8 ? ggml_gemv_q6_K_8x8_q8_K_cols : ggml_gemv_q6_K_8x4_q8_K_cols)(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_Q8_0: (ARM_Q8 == 8 ? ggml_gemv_q8_0_4x8_q8_0_cols : ggml_gemv_q8_0_4x4_q8_0_cols)(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_Q4_0: (ARM_Q8 == 8 ? ggml_gemv_q4_0_4x8_q8_0_cols : ggml_gemv_q4_0_4x4_q8_0_cols)(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_IQ4_NL: ggml_gemv_iq4_nl_4x4_q8_0_cols(k, out, bs, w, cols, by, ncols, rows); break;
            default: abort();
        }
        return true;
    }
    return ggml_swift_mul_mat_cols(T.wtype, k, rows, ncols, out, bs, w, wrow, cols, by);
#elif defined(__AVX2__)
    if (T.repacked) {
        switch (T.wtype) {
            case GGML_TYPE_Q4_K:   ggml_gemv_q4_K_8x8_q8_K_cols(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_Q4_0:   ggml_gemv_q4_0_8x8_q8_0_cols(k, out, bs, w, cols, by, ncols, rows); break;
            case GGML_TYPE_IQ4_NL: ggml_gemv_iq4_nl_8x8_q8_0_cols(k, out, bs, w, cols, by, ncols, rows); break;
            default: abort();
        }
        return true;
    }
    return ggml_swift_mul_mat_cols(T.wtype, k, rows, ncols, out, bs, w, wrow, cols, by);
#else
    (void) T; (void) k; (void) rows; (void) w; (void) wrow; (void) cols; (void) by; (void) ncols; (void) out; (void) bs;
    abort();
#endif
}

}  // namespace

int main(int argc, char ** argv) {
    const int trials = argc > 1 ? atoi(argv[1]) : 8;
    const char * only = argc > 2 ? argv[2] : nullptr;
    swift_test_init_tables();

    // 1056: an odd number of 32-element blocks (the one-column loops' scalar tail)
    static const int64_t LENGTHS[] = {256, 576, 640, 896, 1024, 1056, 1536, 2048, 8960};
    uint64_t checked = 0, differ = 0;
    for (const Type & T : TYPES) {
        if (only && !strstr(T.name, only)) continue;
        uint64_t t_checked = 0, t_differ = 0, t_declined = 0;
        for (int64_t k : LENGTHS) {
            if (k % T.blck != 0 || k % T.ablck != 0) continue;
            for (int trial = 0; trial < trials; ++trial) {
                const int rows = T.repacked ? T.rowgroup * (1 + (int) (next_u64() % 3)) : 4 + (int) (next_u64() % 13);
                const size_t wrow = (size_t) (k / T.blck) * T.wblock;
                const size_t by = (size_t) (k / T.ablck) * T.ablock;

                std::vector<float> wf((size_t) rows * k);
                fill(wf, 0);
                std::vector<char> wq(rows * wrow + 64), wr(rows * wrow + 64);
                for (int r = 0; r < rows; ++r) quantize_weights(T.wtype, wf.data() + r*k, wq.data() + r*wrow, k);
                const char * w = wq.data();
                if (T.repacked) {
                    if (repack(T, rows, k, wq.data(), rows * wrow, wr.data()) != 0) {
                        fprintf(stderr, "%s: repack failed\n", T.name);
                        return 2;
                    }
                    w = wr.data();
                }

                // several batches of activations for these weights, 1..32 columns
                for (int set = 0; set < 4; ++set) {
                    const int ncols = 1 + (int) ((trial * 13 + set * 8 + next_u64() % 8) % 32);
                    std::vector<float> af((size_t) ncols * k);
                    fill(af, 1);
                    std::vector<char> aq(ncols * by + 64);
                    for (int c = 0; c < ncols; ++c) quantize_activations(T.atype, af.data() + c*k, aq.data() + c*by, k);

                    std::vector<float> ref((size_t) ncols * rows), out((size_t) ncols * rows, -1.0f);
                    for (int c = 0; c < ncols; ++c) one_column(T, k, rows, w, wrow, aq.data() + c*by, ref.data() + c*rows);

                    if (!multi_column(T, k, rows, w, wrow, aq.data(), by, ncols, out.data(), rows)) {
                        if (!declined(T, k)) {
                            fprintf(stderr, "%s k=%lld: no multi-column kernel\n", T.name, (long long) k);
                            return 2;
                        }
                        ++t_declined;
                        continue;
                    }

                    for (size_t i = 0; i < ref.size(); ++i) {
                        if (memcmp(&ref[i], &out[i], sizeof(float)) != 0) {
                            if (t_differ < 5) {
                                printf("  DIFF %s k=%lld rows=%d cols=%d col %zu row %zu: one-column %.9g multi-column %.9g\n",
                                       T.name, (long long) k, rows, ncols, i / rows, i % rows, ref[i], out[i]);
                            }
                            ++t_differ;
                        }
                    }
                    t_checked += ref.size();
                }
            }
        }
        printf("%-28s checked %10llu differ %llu", T.name, (unsigned long long) t_checked, (unsigned long long) t_differ);
        if (t_declined) printf(" (declined %llu batches with an odd number of blocks)", (unsigned long long) t_declined);
        printf("\n");
        checked += t_checked;
        differ += t_differ;
    }
    printf("checked %llu differ %llu\n", (unsigned long long) checked, (unsigned long long) differ);
    return differ == 0 ? 0 : 1;
}
