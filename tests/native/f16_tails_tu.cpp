// One translation unit per ggml tree: compiled once against upstream's vec.h (-DSIDE=ref) and once
// against the patched one (-DSIDE=new), so the check compares the two libraries' own inline code.
#include "vec.h"

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)

void CAT(SIDE, mad_f16)(int n, ggml_fp16_t * y, const ggml_fp16_t * x, float v) { ggml_vec_mad_f16(n, y, x, v); }
void CAT(SIDE, scale_f16)(int n, ggml_fp16_t * y, float v) { ggml_vec_scale_f16(n, y, v); }
