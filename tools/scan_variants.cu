// Measurement entry point (tools/scan_variants_gpu.py builds it; not package data, not shipped): shapes of the
// shipped kernel (mambaesr_edge/csrc/selective_scan.cuh, "lanes": one lane per state) and of the token-parallel
// kernel it replaced (tools/selective_scan_tokens.cuh and the async / pair variants built on it) behind one C
// function, picked by id, so one process can check and time them all. Variant 0 is the committed launcher
// (`launch_selective_scan`), whatever it picks.
#include "selective_scan_async.cuh"
#include "selective_scan_pair.cuh"

using namespace mambaesr;

namespace {

// One row per variant: its name and its launchers for fp32 / fp16 activations. Names: whole = one pass over L per
// block; split = L in segments over more blocks when the batch leaves SMs idle; async = cp.async staging and pair =
// two channels a half-warp, both of which split L the same way; i tokens a lane, c channels a block, pf prefetch
// into registers, w warps a SM the register cap aims at; diag = a whole kernel without its loads or its scan steps,
// timed only, to tell memory latency from arithmetic latency (these are the token-parallel kernel's); lanes = the
// shipped kernel's template at the shape its name gives (see lanes below).
using Launcher = cudaError_t (*)(ScanParams const&, int segments, void* workspace, size_t bytes, cudaStream_t);

template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps>
cudaError_t whole(ScanParams const& p, int, void*, size_t, cudaStream_t s) {
    return launch_token_scan<T, kItems, kCpb, kPrefetch, kMinWarps>(p, s);
}

template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps>
cudaError_t split(ScanParams const& p, int segments, void* ws, size_t bytes, cudaStream_t s) {
    return launch_token_scan_segmented<T, kItems, kCpb, kPrefetch, kMinWarps>(p, segments, ws, bytes, s);
}

// cp.async staging (selective_scan_async.cuh): fp32 only; fp16 calls return cudaErrorInvalidValue (reported as n/a).
template <int kItems, int kCpb, int kMinWarps>
cudaError_t async_fp32(ScanParams const& p, int segments, void* ws, size_t bytes, cudaStream_t s) {
    return launch_scan_async<kItems, kCpb, kMinWarps>(p, segments, ws, bytes, s);
}

// Two channels a half-warp (selective_scan_pair.cuh), L split as the split variants.
template <typename T, int kItems, int kCpb, int kMinWarps>
cudaError_t pair(ScanParams const& p, int segments, void* ws, size_t bytes, cudaStream_t s) {
    return launch_scan_pair<T, kItems, kCpb, kMinWarps>(p, segments, ws, bytes, s);
}

// Diagnostics (wrong results by design; the script times them without checking): the whole (I, C, no, W) kernel
// without its global loads, or without its scan steps.
template <typename T, int kItems, int kCpb, int kMinWarps, int kPass>
cudaError_t diagnostic(ScanParams const& p, int, void*, size_t, cudaStream_t s) {
    return launch_token_scan<T, kItems, kCpb, false, kMinWarps, kPass>(p, s);
}

// The shipped kernel's template at other shapes (kCpb channels a block, kTok tokens a chunk, kGroup lanes a channel,
// kStates states a lane, prefetch, blocks a SM the register cap aims at), L split as the split variants.
template <typename T, int kCpb, int kTok, int kGroup, int kStates, bool kPrefetch, int kMinBlocks, int kPass>
ScanKernel lanes_kernel() {
    return selective_scan_fwd_kernel<T, kCpb, kTok, kGroup, kStates, kPrefetch, kMinBlocks, kPass>;
}

template <typename T, int kCpb, int kTok, int kGroup, int kStates, bool kPrefetch, int kMinBlocks>
cudaError_t lanes(ScanParams const& p, int segments, void* ws, size_t bytes, cudaStream_t s) {
    using Shape = ScanShape<kCpb, kTok, kGroup, kStates>;
    if (p.n_state > Shape::kPadStates) return cudaErrorInvalidValue;
    return launch_split(lanes_kernel<T, kCpb, kTok, kGroup, kStates, kPrefetch, kMinBlocks, kPassWhole>(),
                        lanes_kernel<T, kCpb, kTok, kGroup, kStates, kPrefetch, kMinBlocks, kPassEndState>(),
                        lanes_kernel<T, kCpb, kTok, kGroup, kStates, kPrefetch, kMinBlocks, kPassReplay>(), p, kCpb,
                        Shape::kThreads, kTok, Shape::kSmemBytes, segments, ws, bytes, s);
}

// Its diagnostics: one pass without the global loads, or without the scan steps (wrong results by design).
template <typename T, int kCpb, int kTok, int kGroup, int kStates, bool kPrefetch, int kMinBlocks, int kPass>
cudaError_t lanes_diag(ScanParams const& p, int, void* ws, size_t bytes, cudaStream_t s) {
    using Shape = ScanShape<kCpb, kTok, kGroup, kStates>;
    if (p.n_state > Shape::kPadStates) return cudaErrorInvalidValue;
    ScanKernel const kernel = lanes_kernel<T, kCpb, kTok, kGroup, kStates, kPrefetch, kMinBlocks, kPass>();
    return launch_split(kernel, kernel, kernel, p, kCpb, Shape::kThreads, kTok, Shape::kSmemBytes, 1, ws, bytes, s);
}

// the policy (segments 0), with the workspace the script allocates for any split
cudaError_t committed(ScanParams const& p, int, void* ws, size_t bytes, cudaStream_t s) { return launch_selective_scan(p, ws, bytes, s); }

struct Variant {
    char const* name;
    Launcher fp32, fp16;
};

#define WHOLE(I, C, P, W) {"whole i" #I " c" #C " pf" #P " w" #W, whole<float, I, C, P, W>, whole<__half, I, C, P, W>}
#define ASYNC(I, C, W) {"async i" #I " c" #C " w" #W, async_fp32<I, C, W>, async_fp32<I, C, W>}
#define PAIR(I, C, W) {"pair i" #I " c" #C " w" #W, pair<float, I, C, W>, pair<__half, I, C, W>}
#define DIAG(I, C, W, PASS, WHAT) \
    {"diag " WHAT " i" #I " c" #C " w" #W, diagnostic<float, I, C, W, PASS>, diagnostic<__half, I, C, W, PASS>}
#define LANES(C, TOK, G, S, P, MB) \
    {"lanes c" #C " t" #TOK " g" #G " s" #S " pf" #P " b" #MB, lanes<float, C, TOK, G, S, P, MB>, lanes<__half, C, TOK, G, S, P, MB>}
#define LANES_DIAG(C, TOK, G, S, P, MB, PASS, WHAT) \
    {"diag lanes " WHAT " c" #C " t" #TOK " g" #G " s" #S " pf" #P " b" #MB, lanes_diag<float, C, TOK, G, S, P, MB, PASS>, \
     lanes_diag<__half, C, TOK, G, S, P, MB, PASS>}
#define SPLIT(I, C, P, W) {"split i" #I " c" #C " pf" #P " w" #W, split<float, I, C, P, W>, split<__half, I, C, P, W>}

Variant const kVariants[] = {
    {"launcher", committed, committed},
    WHOLE(16, 16, 0, 8),
    WHOLE(8, 16, 0, 16),
    SPLIT(16, 16, 0, 8),
    SPLIT(8, 16, 0, 16),
    SPLIT(8, 16, 1, 8),
    SPLIT(8, 8, 0, 16),
    ASYNC(8, 16, 16),
    ASYNC(16, 16, 8),
    PAIR(8, 16, 8),
    PAIR(8, 16, 12),  // spills about 150 bytes in the staging (80 loads in flight); pass 1 does not
    DIAG(8, 16, 16, kPassDiagNoLoad, "noload"),
    DIAG(8, 16, 16, kPassDiagNoScan, "noscan"),
    DIAG(16, 16, 8, kPassDiagNoLoad, "noload"),
    DIAG(16, 16, 8, kPassDiagNoScan, "noscan"),
    LANES(16, 64, 16, 1, 1, 2),  // the shipped shape (N <= 16)
    LANES(16, 64, 16, 1, 0, 2),
    LANES(16, 32, 16, 1, 1, 2),
    LANES(16, 128, 16, 1, 1, 2),
    LANES(8, 64, 16, 1, 1, 4),
    LANES(16, 64, 8, 2, 1, 2),
    LANES_DIAG(16, 64, 16, 1, 1, 2, kPassDiagNoLoad, "noload"),
    LANES_DIAG(16, 64, 16, 1, 1, 2, kPassDiagNoScan, "noscan"),
};

}  // namespace

extern "C" {

int32_t mambaesr_scan_variant_count() { return int32_t(sizeof(kVariants) / sizeof(kVariants[0])); }

char const* mambaesr_scan_variant_name(int32_t id) {
    return id >= 0 && id < mambaesr_scan_variant_count() ? kVariants[id].name : nullptr;
}

// Floats of workspace any split variant needs at most: one segment per chunk of the shortest chunk (32 tokens).
int64_t mambaesr_scan_variant_workspace_bytes(int32_t batch, int32_t dim, int32_t length, int32_t n_state) {
    int const segments = (length + 31) / 32;  // the lanes variants' shortest chunk
    return int64_t(sizeof(float) * segment_workspace_floats(batch, dim, n_state, segments));
}

// Runs variant `id`; segments: 0 = the variant's own choice (split variants fill the GPU), n = at most n segments.
int32_t mambaesr_scan_variant(ScanParams const* params, void* stream, int32_t id, int32_t segments, void* workspace,
    int64_t workspace_bytes) {
    if (params == nullptr || id < 0 || id >= mambaesr_scan_variant_count() || !valid_params(*params)) {
        return int32_t(cudaErrorInvalidValue);
    }
    Launcher const launch = params->dtype == kScanFloat16 ? kVariants[id].fp16 : kVariants[id].fp32;
    return int32_t(launch(*params, segments, workspace, size_t(workspace_bytes), static_cast<cudaStream_t>(stream)));
}

}  // extern "C"
