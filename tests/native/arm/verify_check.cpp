// swift-gguf patch 0003 batch-invariance check, for cross-compiled (e.g. aarch64 under qemu-user) builds.
// A verification batch of n tokens decoded with llama_swift_set_batch_invariance(ctx, 32) must give
// logits bit-identical to n one-token decodes of the same tokens at the same positions.
// usage: verify_check MODEL FA(0|1) N_THREADS N_THREADS_BATCH L1,L2,... N1,N2,... [CONTROL(0|1)]
// Prints one line per (L, n): rows differing and max |diff|, for the invariant batch and (CONTROL=1)
// for a plain batch (the negative control). Exit 0 only if every invariant comparison is bit-identical.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

static std::vector<int> parse_list(const char * s) {
    std::vector<int> v;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (!item.empty()) v.push_back(std::atoi(item.c_str()));
    }
    return v;
}

static llama_token tok_at(int i) { return (llama_token) ((i * 7919) % 20000 + 100); }

static bool decode(llama_context * ctx, int pos0, int n, bool all_logits) {
    llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        b.token[i]     = tok_at(pos0 + i);
        b.pos[i]       = pos0 + i;
        b.n_seq_id[i]  = 1;
        b.seq_id[i][0] = 0;
        b.logits[i]    = all_logits || i == n - 1;
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) std::fprintf(stderr, "llama_decode(pos0=%d, n=%d) = %d\n", pos0, n, rc);
    return rc == 0;
}

struct cmp_result { int rows_diff; double max_diff; };

static cmp_result compare(const std::vector<float> & a, const std::vector<float> & b, int n, int n_vocab) {
    cmp_result r{0, 0.0};
    for (int i = 0; i < n; ++i) {
        const float * x = a.data() + (size_t) i * n_vocab;
        const float * y = b.data() + (size_t) i * n_vocab;
        if (std::memcmp(x, y, sizeof(float) * n_vocab) != 0) r.rows_diff++;
        for (int j = 0; j < n_vocab; ++j) {
            double d = std::fabs((double) x[j] - (double) y[j]);
            if (!(d <= r.max_diff)) r.max_diff = d;  // NaN propagates as "larger"
        }
    }
    return r;
}

int main(int argc, char ** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s MODEL FA N_THREADS N_THREADS_BATCH L1,L2 N1,N2 [CONTROL]\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    const int fa = std::atoi(argv[2]);
    const int nt = std::atoi(argv[3]);
    const int ntb = std::atoi(argv[4]);
    const std::vector<int> Ls = parse_list(argv[5]);
    const std::vector<int> Ns = parse_list(argv[6]);
    const bool control = argc > 7 && std::atoi(argv[7]) != 0;

    llama_log_set([](ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
    }, nullptr);
    llama_backend_init();
    std::printf("swift abi %d\n", llama_swift_abi_version());

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.progress_callback = [](float, void *) { return true; };  // no loading dots
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) { std::fprintf(stderr, "cannot load %s\n", model_path); return 2; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 2048;
    cp.n_batch = 2048;
    cp.n_threads = nt;
    cp.n_threads_batch = ntb;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { std::fprintf(stderr, "cannot create context\n"); return 2; }
    llama_memory_t mem = llama_get_memory(ctx);

    const char * mname = std::strrchr(model_path, '/');
    mname = mname ? mname + 1 : model_path;
    int failures = 0, controls_differing = 0, controls = 0;

    for (int L : Ls) {
        llama_memory_clear(mem, true);
        if (!decode(ctx, 0, L, false)) return 2;
        for (int n : Ns) {
            std::vector<float> batch_rows((size_t) n * n_vocab), single_rows((size_t) n * n_vocab);
            for (int mode = 0; mode < (control ? 2 : 1); ++mode) {
                const bool invariant = mode == 0;
                // (a) verification batch
                if (invariant) llama_swift_set_batch_invariance(ctx, 32);
                bool ok = decode(ctx, L, n, true);
                if (invariant) llama_swift_set_batch_invariance(ctx, 0);
                if (!ok) return 2;
                for (int i = 0; i < n; ++i) {
                    std::memcpy(batch_rows.data() + (size_t) i * n_vocab, llama_get_logits_ith(ctx, i), sizeof(float) * n_vocab);
                }
                llama_memory_seq_rm(mem, 0, L, -1);
                // (b) one-token decodes
                for (int i = 0; i < n; ++i) {
                    if (!decode(ctx, L + i, 1, true)) return 2;
                    std::memcpy(single_rows.data() + (size_t) i * n_vocab, llama_get_logits_ith(ctx, 0), sizeof(float) * n_vocab);
                }
                llama_memory_seq_rm(mem, 0, L, -1);
                cmp_result r = compare(batch_rows, single_rows, n, n_vocab);
                std::printf("RESULT model=%s fa=%d threads=%d/%d L=%d n=%d mode=%s rows_differing=%d/%d max_abs_diff=%.6g\n",
                            mname, fa, nt, ntb, L, n, invariant ? "invariant" : "plain-control", r.rows_diff, n, r.max_diff);
                std::fflush(stdout);
                if (invariant && r.rows_diff != 0) failures++;
                if (!invariant) { controls++; if (r.rows_diff != 0) controls_differing++; }
            }
        }
    }
    std::printf("SUMMARY model=%s fa=%d threads=%d/%d invariant_failures=%d controls_differing=%d/%d\n",
                mname, fa, nt, ntb, failures, controls_differing, controls);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return failures == 0 ? 0 : 1;
}
