// The few ggml-base / ggml-cpu symbols that the kernel sources of tests/test_cols_kernels.py refer to
// (ggml.c and ggml-cpu.c are not compiled into the test; the linker drops every function that needs more).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"
#include "ggml-impl.h"

float ggml_table_f32_f16[1 << 16];
float ggml_table_f32_e8m0_half[1 << 8];
float ggml_table_f32_ue4m3[1 << 8];

void swift_test_init_tables(void) {
    for (int i = 0; i < (1 << 16); ++i) {
        ggml_table_f32_f16[i] = GGML_COMPUTE_FP16_TO_FP32((ggml_fp16_t) i);
    }
    for (int i = 0; i < (1 << 8); ++i) {
        ggml_table_f32_e8m0_half[i] = GGML_E8M0_TO_FP32_HALF(i);
        ggml_table_f32_ue4m3[i] = ggml_ue4m3_to_fp32((uint8_t) i);
    }
}

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
    abort();
}

int64_t ggml_nrows(const struct ggml_tensor * tensor) {
    return tensor->ne[1]*tensor->ne[2]*tensor->ne[3];
}

// referenced by ggml-quants.c's whole-tensor quantizers, which the test does not call
size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    (void) type; (void) ne;
    ggml_abort(__FILE__, __LINE__, "ggml_row_size: not available in the test");
    return 0;
}

size_t ggml_type_size(enum ggml_type type) {
    (void) type;
    ggml_abort(__FILE__, __LINE__, "ggml_type_size: not available in the test");
    return 0;
}

const char * ggml_type_name(enum ggml_type type) {
    (void) type;
    return "?";
}
