// patches/0004-f16-tails.patch must not change a bit: runs upstream's and the patched
// ggml_vec_mad_f16 / ggml_vec_scale_f16 (see f16_tails_tu.cpp) on the same inputs (every bit pattern
// in a quarter of the cases, realistic attention values in the rest; lengths below, at and above
// the 128-half vector step) and counts the elements that differ (NaN payloads aside).
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

typedef uint16_t ggml_fp16_t;
float ggml_table_f32_f16[1 << 16];

void ref_mad_f16(int n, ggml_fp16_t * y, const ggml_fp16_t * x, float v);
void new_mad_f16(int n, ggml_fp16_t * y, const ggml_fp16_t * x, float v);
void ref_scale_f16(int n, ggml_fp16_t * y, float v);
void new_scale_f16(int n, ggml_fp16_t * y, float v);

static bool is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

int main(int argc, char ** argv) {
    const long iters = argc > 1 ? atol(argv[1]) : 200000;
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = _cvtsh_ss((unsigned short) i);
    std::mt19937 rng(1);
    const int lengths[] = {64, 80, 96, 40, 128, 136, 200, 256};
    long checked = 0, differ = 0;
    for (long it = 0; it < iters; ++it) {
        const int n = lengths[it % 8];
        ggml_fp16_t y0[256], x[256], a[256], b[256];
        std::normal_distribution<float> d(0.f, it % 3 ? 1.f : 1e-4f);
        for (int i = 0; i < n; ++i) {
            if (it % 4 == 0) {
                const uint32_t r = rng();
                y0[i] = r & 0xffff;
                x[i] = r >> 16;
            } else {
                y0[i] = _cvtss_sh(d(rng) * (it % 5 ? 1.f : 3e4f), 0);
                x[i] = _cvtss_sh(d(rng), 0);
            }
        }
        float v = std::uniform_real_distribution<float>(0.f, 1.f)(rng);
        if (it % 7 == 0) v = ldexpf(v, -(int) (rng() % 30));
        memcpy(a, y0, sizeof y0);
        memcpy(b, y0, sizeof y0);
        if (it & 1) { ref_mad_f16(n, a, x, v);  new_mad_f16(n, b, x, v); }
        else        { ref_scale_f16(n, a, v);   new_scale_f16(n, b, v); }
        for (int i = 0; i < n; ++i, ++checked) {
            if (a[i] != b[i] && !(is_nan(a[i]) && is_nan(b[i]))) {
                if (differ < 5) printf("n=%d i=%d y=%04x x=%04x v=%a: upstream %04x, patched %04x\n", n, i, y0[i], x[i], v, a[i], b[i]);
                ++differ;
            }
        }
    }
    printf("checked %ld elements, %ld differ\n", checked, differ);
    return differ != 0;
}
