// Forward selective scan (Mamba's S6 recurrence), inference only: the `selective_scan` contract of scan.py.
//
//     delta' = softplus(delta + delta_bias)      (each step optional)
//     h_t    = exp(delta'_t A) h_{t-1} + delta'_t u_t B_t        h_{-1} = 0
//     y_t    = (C_t . h_t + D u_t) * silu(z_t)   (D and z optional)
//
// Shapes: u, delta, z, y (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,). Every tensor of
// shape (batch, K, L) is read through its three element strides, so the model's own memory layouts (u channel-major,
// delta and z token-major, B and C token-major with a row stride) are read as they are: no transpose around it.
// u, delta, B, C, z and y share one dtype (fp32 or fp16); A, D and delta_bias are fp32; all maths in fp32.
//
// Work split: one lane per state. A block takes kCpb channels of one batch row; a group of kGroup lanes takes one
// channel, and lane l of the group owns states n = l, l + kGroup, ... (kStates of them; N <= kGroup * kStates,
// states past N padded with zeros, which stay zero). Each lane walks every token of the block's L range in order,
// its states in registers the whole way:
//     h_n = exp2(delta'_t a_n) h_n + (delta'_t u_t) B_{t,n}      (a_n = A_n log2(e): one FFMA per token on the chain)
//     p_t = sum over the lane's states of C_{t,n} h_n
// and the group sums p_t over its lanes: every kGroup tokens each lane writes its kGroup partial sums to a small
// shared buffer and reads back one token's column, so lane i finishes token i of the group, y = (sum + D u) silu(z).
// No scan across lanes and no replay: per (token, state) one exp2, two multiplies and two FMAs, and the only serial
// dependency is the FFMA on h. Per chunk of kTok tokens the block stages u, delta' (bias + softplus), delta' u,
// silu(z), B and C in shared memory (coalesced walks for either layout of every tensor: token-fast, consecutive
// threads on consecutive tokens, unless the channels are contiguous), issues the next chunk's loads into registers
// before this chunk's arithmetic (kPrefetch), and writes the y tile with the same coalesced walk. Every input is read
// from device memory once and y written once: the minimal bytes.
//
// Shared memory (floats): u, delta', delta' u, silu(z), y tiles (kCpb rows of kTok + 4: 16-byte aligned rows, read
// four tokens at a time by the group's lanes, a broadcast); B/C tile as [token][lane][state j][B, C] (a group reads
// its token's row, the other groups of the warp the same addresses); per channel a reduction buffer of kGroup rows of
// kGroup + 4 floats, channels kGroup floats apart so that the groups of a warp use distinct banks.
//
// Measured (tools/scan_variants_gpu.py, benchmarks/scan_variants_lanes_h100.json): this kernel replaced a
// token-parallel one (lanes own tokens, a shuffle scan across lanes then a replay; tools/selective_scan_tokens.cuh)
// that was latency-bound; reducing the groups' partial sums with shuffles instead of shared memory was slower.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>

namespace mambaesr {

enum ScanDType : int32_t { kScanFloat32 = 0, kScanFloat16 = 1 };

// Everything one launch needs. Element strides (not bytes). Optional pointers are null when absent.
struct ScanParams {
    int32_t batch, dim, length, n_state;
    int32_t dtype;           // ScanDType of u, delta, B, C, z, y
    int32_t delta_softplus;  // 0 or 1
    void const* u;
    void const* delta;
    float const* A;
    void const* B;
    void const* C;
    float const* D;           // may be null
    void const* z;            // may be null
    float const* delta_bias;  // may be null
    void* y;
    int64_t u_stride[3], delta_stride[3], A_stride[2], B_stride[3], C_stride[3], z_stride[3], y_stride[3];
};

// L split into segments, for small batches (batch x channel blocks fewer than the GPU holds): S segments per (batch
// row, channel block) run as S blocks in two launches. Pass 1 (kPassEndState) runs each segment but the last from a
// zero state, without C, z or y, and writes its end state H (batch, S, dim, N) and its sum of delta' Sd (batch, S,
// dim) to `workspace` (the segment's decay product is exp2(A log2(e) Sd)). Pass 2 (kPassReplay) folds the preceding
// segments into its incoming state, h = exp2(A log2(e) Sd_s) h + H_s for s < its own, then runs its chunks as the
// single-pass kernel does. Cost: pass 1 skips C, z, y and the sums over lanes, but re-reads u, delta and B, so a
// split costs up to twice one pass's work, spread over S times as many blocks: for small batches.
//
// Two more values are diagnostics for tools/scan_variants_gpu.py, wrong results by design, never launched otherwise:
// kPassDiagNoLoad (one pass with zeros in place of the global loads: the time without memory latency) and
// kPassDiagNoScan (one pass without the scan steps: the time of staging and y alone).
enum ScanPass { kPassWhole = 0, kPassEndState = 1, kPassReplay = 2, kPassDiagNoLoad = 3, kPassDiagNoScan = 4 };

struct SegmentArgs {
    int32_t segments;            // S (1: the whole L in one block, kPassWhole)
    int32_t chunks_per_segment;  // chunks of one segment (the last may have fewer)
    float* workspace;            // H then Sd, as above; null for kPassWhole

    // (batch row b, segment s, channel): its row of H (times N) and its entry of Sd (after sums_offset)
    __host__ __device__ size_t row(int b, int s, int dim, int channel) const { return (size_t(b) * segments + s) * dim + channel; }
    __host__ __device__ size_t sums_offset(int batch, int dim, int n_state) const { return size_t(batch) * segments * dim * n_state; }
};

inline size_t segment_workspace_floats(int batch, int dim, int n_state, int segments) {
    return size_t(batch) * segments * dim * (n_state + 1);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ void from_float(float x, float* out) { *out = x; }
__device__ __forceinline__ void from_float(float x, __half* out) { *out = __float2half_rn(x); }

__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// Pass 2: the state entering `segment` of (batch row b, channel, state n), the preceding segments' (decay, end state)
// folded in order (a = A log2(e)). Unrolled so that several segments' loads are in flight before the chain uses them.
__device__ __forceinline__ float segment_incoming_state(SegmentArgs const& seg, int batch, int dim, int n_state, int b,
    int channel, int n, int segment, float a) {
    float const* ws_end = seg.workspace;                                  // (batch, S, dim, N)
    float const* ws_sum = seg.workspace + seg.sums_offset(batch, dim, n_state);  // (batch, S, dim)
    float h = 0.0f;
#pragma unroll 8
    for (int s = 0; s < segment; ++s) {
        size_t const row = seg.row(b, s, dim, channel);
        h = fmaf(fast_exp2(a * ws_sum[row]), h, ws_end[row * n_state + n]);
    }
    return h;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), as scan.stable_softplus (never exponentiates a positive number)
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(__expf(-fabsf(x))); }

__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// A (batch, K, L) tensor is walked token-fast (consecutive threads, consecutive tokens) unless its channels are the
// contiguous dimension.
__device__ __forceinline__ bool token_fast(int64_t const* stride) { return stride[2] == 1 || stride[1] != 1; }

// The kernel's compile-time shape: kCpb channels a block, kTok tokens a chunk, kGroup lanes a channel, kStates states
// a lane.
template <int kCpb, int kTok, int kGroup, int kStates>
struct ScanShape {
    static constexpr int kThreads = kCpb * kGroup;
    static constexpr int kPadStates = kGroup * kStates;           // N rounded up
    static constexpr int kRow = kTok + 4;                         // floats per channel row (16-byte aligned rows)
    static constexpr int kBCRow = 2 * kPadStates;                 // floats per token of the B/C tile
    static constexpr int kRedRow = kGroup + 4;                    // floats per lane row of a reduction buffer
    static constexpr int kRedRegion = kGroup * kRedRow + kGroup;  // floats per channel's reduction buffer
    static_assert(kGroup == 4 || kGroup == 8 || kGroup == 16, "4, 8 or 16 lanes a channel");
    static_assert((kGroup * kRedRow) % 32 == 0 && kTok % kGroup == 0 && kTok % 4 == 0, "bank layout");
    static_assert((kCpb * kTok) % kThreads == 0 && (kPadStates * kTok) % kThreads == 0, "whole tiles per thread");
    static constexpr int kChannelElems = kCpb * kTok / kThreads;      // per thread, per channel tile
    static constexpr int kStateElems = kPadStates * kTok / kThreads;  // per thread, per B or C tile
    static constexpr int kSmemFloats = 5 * kCpb * kRow + kTok * kBCRow + kCpb * kRedRegion;
    static constexpr size_t kSmemBytes = sizeof(float) * size_t(kSmemFloats);
};

// Element k of this thread in a kRows x kTok tile walked by kThreads threads: token-fast (consecutive threads,
// consecutive tokens) or channel-fast (consecutive threads, consecutive rows: the rows are the contiguous dimension).
// (A channel-fast walk of 8 rows x 4 tokens a warp, free of the 2-way bank conflicts this one has on kTok + 4 rows,
// measured no faster: benchmarks/scan_variants_spread_h100.json, "sp1" against "sp0".)
template <int kRows, int kTok, int kThreads>
struct TileWalk {
    static __device__ __forceinline__ int row(bool tok_fast, int k) {
        int const e = int(threadIdx.x) + k * kThreads;
        return tok_fast ? e / kTok : e % kRows;
    }
    static __device__ __forceinline__ int tok(bool tok_fast, int k) {
        int const e = int(threadIdx.x) + k * kThreads;
        return tok_fast ? e % kTok : e / kRows;
    }
};

// This thread's elements of rows [row0, row0 + kRows) x tokens [t0, t0 + kTok) of batch row b; zero outside the
// tensor. Raw values: nothing uses them until they are staged, so the loads stay in flight meanwhile.
template <typename T, int kRows, int kTok, int kThreads, int kElems>
__device__ __forceinline__ void load_tile(T (&v)[kElems], T const* src, int64_t const* stride, int b, int row0,
    int rows_total, int t0, int length) {
    using W = TileWalk<kRows, kTok, kThreads>;
    bool const tf = token_fast(stride);
    T const* base = src + b * stride[0];
#pragma unroll
    for (int k = 0; k < kElems; ++k) {
        int const r = row0 + W::row(tf, k), t = t0 + W::tok(tf, k);
        v[k] = (r < rows_total && t < length) ? base[r * stride[1] + t * stride[2]] : T(0.0f);
    }
}

// One chunk's raw inputs for this thread.
template <typename T, int kChannelElems, int kStateElems>
struct ChunkRegs {
    T u[kChannelElems], dt[kChannelElems], z[kChannelElems], b[kStateElems], c[kStateElems];
};

template <typename T, int kCpb, int kTok, int kGroup, int kStates, bool kPrefetch, int kMinBlocks, int kPass = kPassWhole>
__global__ void __launch_bounds__(kCpb * kGroup, kMinBlocks)
selective_scan_fwd_kernel(ScanParams p, SegmentArgs seg) {
    using Shape = ScanShape<kCpb, kTok, kGroup, kStates>;
    constexpr int kThreads = Shape::kThreads, kRow = Shape::kRow, kBCRow = Shape::kBCRow, kPad = Shape::kPadStates;
    constexpr int kCE = Shape::kChannelElems, kSE = Shape::kStateElems;
    using ChannelWalk = TileWalk<kCpb, kTok, kThreads>;  // u, delta, z, y
    using StateWalk = TileWalk<kPad, kTok, kThreads>;    // B, C
    constexpr bool kOutput = kPass != kPassEndState;  // pass 1 writes end states, not y
    extern __shared__ float4 smem4[];
    float* s_u = reinterpret_cast<float*>(smem4);  // (kCpb, kRow): u
    float* s_dt = s_u + kCpb * kRow;                // delta'
    float* s_du = s_dt + kCpb * kRow;               // delta' u
    float* s_z = s_du + kCpb * kRow;                // silu(z)
    float* s_y = s_z + kCpb * kRow;                 // y
    float* s_bc = s_y + kCpb * kRow;                // (kTok, kGroup, kStates, 2): B, C
    float* s_red = s_bc + kTok * kBCRow;            // (kCpb, kRedRegion): the groups' partial sums

    // block index = (batch row * S + segment) * channel blocks + channel block (S = 1: one pass)
    int const n_cblocks = (p.dim + kCpb - 1) / kCpb;
    int const segments = kPass == kPassWhole ? 1 : seg.segments;
    int const row_seg = blockIdx.x / n_cblocks;
    int const b = row_seg / segments;
    int const segment = row_seg - b * segments;
    int const c0 = (blockIdx.x - row_seg * n_cblocks) * kCpb;
    int const local_c = threadIdx.x / kGroup;  // this group's channel within the block
    int const lane = threadIdx.x % kGroup;     // owns states lane, lane + kGroup, ...
    int const channel = c0 + local_c;
    int const n_state = p.n_state;
    int const n_chunks = (p.length + kTok - 1) / kTok;
    if (kPass == kPassEndState && segment == segments - 1) return;  // nothing follows the last segment
    int const k_begin = kPass == kPassWhole ? 0 : segment * seg.chunks_per_segment;
    int const k_end = kPass == kPassWhole ? n_chunks : min(n_chunks, k_begin + seg.chunks_per_segment);

    float a[kStates], h[kStates];  // a_n = A_n log2(e); h: the state, in registers from the first token to the last
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
        int const n = lane + j * kGroup;
        bool const real = channel < p.dim && n < n_state;
        a[j] = real ? p.A[channel * p.A_stride[0] + n * p.A_stride[1]] * 1.4426950408889634f : 0.0f;
        bool const incoming = kPass == kPassReplay && real;  // pass 2: fold the preceding segments
        h[j] = incoming ? segment_incoming_state(seg, p.batch, p.dim, n_state, b, channel, n, segment, a[j]) : 0.0f;
    }
    float const d_skip = (kOutput && p.D != nullptr && channel < p.dim) ? p.D[channel] : 0.0f;
    bool const has_z = kOutput && p.z != nullptr;
    bool const u_tf = token_fast(p.u_stride), dt_tf = token_fast(p.delta_stride), z_tf = token_fast(p.z_stride);
    bool const b_tf = token_fast(p.B_stride), c_tf = token_fast(p.C_stride);
    float bias[kCE];  // delta_bias of this thread's delta elements
#pragma unroll
    for (int k = 0; k < kCE; ++k) {
        int const c = c0 + ChannelWalk::row(dt_tf, k);
        bias[k] = (p.delta_bias != nullptr && c < p.dim) ? p.delta_bias[c] : 0.0f;
    }

    ChunkRegs<T, kCE, kSE> regs;
    auto load_chunk = [&](int t0) {
        load_tile<T, kCpb, kTok, kThreads>(regs.u, static_cast<T const*>(p.u), p.u_stride, b, c0, p.dim, t0, p.length);
        load_tile<T, kCpb, kTok, kThreads>(regs.dt, static_cast<T const*>(p.delta), p.delta_stride, b, c0, p.dim, t0, p.length);
        if (has_z) load_tile<T, kCpb, kTok, kThreads>(regs.z, static_cast<T const*>(p.z), p.z_stride, b, c0, p.dim, t0, p.length);
        load_tile<T, kPad, kTok, kThreads>(regs.b, static_cast<T const*>(p.B), p.B_stride, b, 0, n_state, t0, p.length);
        if (kOutput) load_tile<T, kPad, kTok, kThreads>(regs.c, static_cast<T const*>(p.C), p.C_stride, b, 0, n_state, t0, p.length);
    };
    if (kPass == kPassDiagNoLoad) {
#pragma unroll
        for (int k = 0; k < kCE; ++k) regs.u[k] = regs.dt[k] = regs.z[k] = T(0.0f);
#pragma unroll
        for (int k = 0; k < kSE; ++k) regs.b[k] = regs.c[k] = T(0.0f);
    }
    bool const loads = kPass != kPassDiagNoLoad;
    if (kPrefetch && loads && k_begin < k_end) load_chunk(k_begin * kTok);
    float dt_total = 0.0f;  // pass 1: the segment's sum of delta' (every lane of a group sees every token)

#pragma unroll 1
    for (int k = k_begin; k < k_end; ++k) {
        int const t0 = k * kTok;
        if (!kPrefetch && loads) load_chunk(t0);
        // staging, 1: u (delta' u needs it at the delta walk's slots)
#pragma unroll
        for (int e = 0; e < kCE; ++e) s_u[ChannelWalk::row(u_tf, e) * kRow + ChannelWalk::tok(u_tf, e)] = to_float(regs.u[e]);
        __syncthreads();
        // staging, 2: delta' (zero outside the tensor, so padded tokens leave the state unchanged), delta' u, silu(z),
        // B and C (rows past N are zeros: load_tile's)
#pragma unroll
        for (int e = 0; e < kCE; ++e) {
            int const r = ChannelWalk::row(dt_tf, e), t = ChannelWalk::tok(dt_tf, e);
            float x = 0.0f;
            if (c0 + r < p.dim && t0 + t < p.length) {
                x = to_float(regs.dt[e]) + bias[e];
                if (p.delta_softplus) x = softplus(x);
            }
            s_dt[r * kRow + t] = x;
            s_du[r * kRow + t] = x * s_u[r * kRow + t];
        }
        if (has_z) {
#pragma unroll
            for (int e = 0; e < kCE; ++e) s_z[ChannelWalk::row(z_tf, e) * kRow + ChannelWalk::tok(z_tf, e)] = silu(to_float(regs.z[e]));
        }
#pragma unroll
        for (int e = 0; e < kSE; ++e) {
            int const n = StateWalk::row(b_tf, e);
            s_bc[StateWalk::tok(b_tf, e) * kBCRow + (n % kGroup) * 2 * kStates + 2 * (n / kGroup)] = to_float(regs.b[e]);
        }
        if (kOutput) {
#pragma unroll
            for (int e = 0; e < kSE; ++e) {
                int const n = StateWalk::row(c_tf, e);
                s_bc[StateWalk::tok(c_tf, e) * kBCRow + (n % kGroup) * 2 * kStates + 2 * (n / kGroup) + 1] = to_float(regs.c[e]);
            }
        }
        __syncthreads();
        if (kPrefetch && loads && k + 1 < k_end) load_chunk(t0 + kTok);

        float const* row_dt = s_dt + local_c * kRow;
        float const* row_du = s_du + local_c * kRow;
        float* red = s_red + local_c * Shape::kRedRegion;
#pragma unroll 1
        for (int g = 0; g < kTok; g += kGroup) {  // kGroup tokens at a time
            float part[kGroup];                   // this lane's share of each token's C . h
#pragma unroll
            for (int i = 0; i < kGroup; i += 4) {
                float4 const dt4 = *reinterpret_cast<float4 const*>(row_dt + g + i);  // (4,) delta'
                float4 const du4 = *reinterpret_cast<float4 const*>(row_du + g + i);  // (4,) delta' u
                float const dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[4] = {du4.x, du4.y, du4.z, du4.w};
#pragma unroll
                for (int ii = 0; ii < 4; ++ii) {
                    float const* bc = s_bc + (g + i + ii) * kBCRow + lane * 2 * kStates;  // (kStates, 2) B, C
                    float acc = 0.0f;
                    if (kPass == kPassEndState) dt_total += dts[ii];
#pragma unroll
                    for (int j = 0; j < kStates; ++j) {
                        float2 const v = *reinterpret_cast<float2 const*>(bc + 2 * j);
                        if (kPass != kPassDiagNoScan) h[j] = fmaf(fast_exp2(dts[ii] * a[j]), h[j], dus[ii] * v.x);
                        acc = fmaf(h[j], v.y, acc);
                    }
                    part[i + ii] = acc;
                }
            }
            if (kOutput) {
                // the group's sum over its lanes, token by token: each lane writes its row of partial sums, then lane
                // i sums column i (token g + i) over the group's rows and finishes that token's y
#pragma unroll
                for (int i = 0; i < kGroup; i += 4) {
                    *reinterpret_cast<float4*>(red + lane * Shape::kRedRow + i) = make_float4(part[i], part[i + 1], part[i + 2], part[i + 3]);
                }
                __syncwarp();
                float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int l = 0; l < kGroup; ++l) sum[l % 4] += red[l * Shape::kRedRow + lane];
                __syncwarp();  // before the next group of tokens overwrites the rows
                int const t = g + lane;
                float v = fmaf(d_skip, s_u[local_c * kRow + t], (sum[0] + sum[1]) + (sum[2] + sum[3]));
                if (has_z) v *= s_z[local_c * kRow + t];
                s_y[local_c * kRow + t] = v;
            }
        }
        __syncthreads();
        if (kOutput) {
            // y with the same coalesced walk as the loads; the next chunk's staging does not touch s_y
            bool const y_tf = token_fast(p.y_stride);
            T* y = static_cast<T*>(p.y) + b * p.y_stride[0];
#pragma unroll
            for (int e = 0; e < kCE; ++e) {
                int const r = ChannelWalk::row(y_tf, e), t = ChannelWalk::tok(y_tf, e);
                if (c0 + r < p.dim && t0 + t < p.length) from_float(s_y[r * kRow + t], y + (c0 + r) * p.y_stride[1] + (t0 + t) * p.y_stride[2]);
            }
        }
    }
    if (kPass == kPassEndState && channel < p.dim) {  // the segment's end state and sum of delta'
        size_t const row = seg.row(b, segment, p.dim, channel);
#pragma unroll
        for (int j = 0; j < kStates; ++j) {
            int const n = lane + j * kGroup;
            if (n < n_state) seg.workspace[row * n_state + n] = h[j];
        }
        if (lane == 0) seg.workspace[seg.sums_offset(p.batch, p.dim, n_state) + row] = dt_total;
    }
}

using ScanKernel = void (*)(ScanParams, SegmentArgs);

// Sets the shared-memory size of a kernel family's three passes (one pass, pass 1, pass 2 of a split L); refuses a
// size past this GPU's opt-in limit (cudaErrorInvalidValue: N's tiles do not fit).
inline cudaError_t prepare_split(ScanKernel whole, ScanKernel pass1, ScanKernel pass2, size_t smem) {
    int device = 0, smem_optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > size_t(smem_optin)) return cudaErrorInvalidValue;
    for (ScanKernel kernel : {whole, pass1, pass2}) {
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
}

// Launches a prepared kernel family (blocks of `cpb` channels and `threads` threads, `chunk` tokens a chunk) with L
// in `segments` segments (>= 1; at most one per chunk, none empty): `whole` when that leaves one, else `pass1` then
// `pass2` on `stream`. `workspace` (device, `workspace_bytes`) holds segment_workspace_floats(batch, dim, N, S)
// floats; too small -> cudaErrorInvalidValue. No driver call but the launches.
inline cudaError_t launch_segments(ScanKernel whole, ScanKernel pass1, ScanKernel pass2, ScanParams const& p, int cpb,
    int threads, int chunk, size_t smem, int segments, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    int64_t const base_blocks = int64_t(p.batch) * ((p.dim + cpb - 1) / cpb);
    int const n_chunks = (p.length + chunk - 1) / chunk;
    segments = std::max(1, std::min(segments, n_chunks));
    int const per_segment = (n_chunks + segments - 1) / segments;
    segments = (n_chunks + per_segment - 1) / per_segment;  // no empty segment
    int64_t const blocks = base_blocks * segments;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    if (segments == 1) {
        whole<<<unsigned(blocks), threads, smem, stream>>>(p, SegmentArgs{1, n_chunks, nullptr});
        return cudaGetLastError();
    }
    if (workspace == nullptr || workspace_bytes < sizeof(float) * segment_workspace_floats(p.batch, p.dim, p.n_state, segments)) {
        return cudaErrorInvalidValue;
    }
    SegmentArgs const args{segments, per_segment, static_cast<float*>(workspace)};
    pass1<<<unsigned(blocks), threads, smem, stream>>>(p, args);
    cudaError_t const err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    pass2<<<unsigned(blocks), threads, smem, stream>>>(p, args);
    return cudaGetLastError();
}

inline bool valid_params(ScanParams const& p) {
    return p.batch >= 1 && p.dim >= 1 && p.length >= 1 && p.n_state >= 1 && p.u != nullptr && p.delta != nullptr &&
           p.A != nullptr && p.B != nullptr && p.C != nullptr && p.y != nullptr &&
           (p.dtype == kScanFloat32 || p.dtype == kScanFloat16);
}

// ---- The shipped launcher (launch_selective_scan: scan_capi.cu, scan_plugin.cu) and its split policy ----

// The shipped shape: 16 channels a block (256 threads), 64-token chunks, 16 lanes a channel, and 1, 2 or 4 states a
// lane by N (so N <= 64). Two blocks a SM resident (the register cap). Measured against the alternatives
// (tools/scan_variants_gpu.py, benchmarks/scan_variants_lanes_h100.json): 32- and 128-token chunks, 8 channels a
// block, 8 lanes a channel with 2 states each were slower.
constexpr int kShippedChannels = 16, kShippedTokens = 64, kShippedGroup = 16, kShippedMinBlocks = 2;
constexpr int kMaxStates = 4 * kShippedGroup;  // the largest N the launcher takes

template <int kStates>
using ShippedShape = ScanShape<kShippedChannels, kShippedTokens, kShippedGroup, kStates>;

template <typename T, int kStates, int kPass>
inline ScanKernel shipped_kernel() {
    return selective_scan_fwd_kernel<T, kShippedChannels, kShippedTokens, kShippedGroup, kStates, true, kShippedMinBlocks, kPass>;
}

// POLICY: how many segments launch_selective_scan cuts L into for these shapes, on a GPU of `sms` SMs that holds
// `blocks_per_sm` blocks of the launcher's kernel each (occupancy API). Host-only arithmetic, no device call.
//
// Fill the GPU: S = sms * blocks_per_sm / (batch * ceil(dim / 16)) segments when that is at least kMinSplit, else 1
// (one pass). Measured on the H100 (benchmarks/scan_variants_lanes_h100.json, `python3 tools/scan_variants_gpu.py`,
// dim 120, N 16, L 4096, this kernel, fp32): batch 1 (S = 33, capped at 64 chunks) 0.028 ms; batch 8 (S = 4) 0.140
// against 0.184 with 2 segments; batch 32 one pass 0.333 against 0.431 with 2. The second pass re-reads the inputs,
// so a split pays only when it at least quadruples the blocks (at batch 16, 4 segments gained 5% over 2: not taken).
// The workspace (selective_scan_workspace_bytes) follows from this function; the plugin's getWorkspaceSize takes the
// largest need over its profile's batch and channel ranges at the longest L, so the need must not fall as L grows:
// S does not depend on L, and split_workspace_bytes caps it at one segment per chunk, which only rises with L
// (tests/test_csrc.py checks both).
constexpr int kMinSplit = 4;

inline int selective_scan_segments(int batch, int dim, int n_state, int length, int sms, int blocks_per_sm) {
    (void)n_state, (void)length;
#ifdef MAMBAESR_TEST_SEGMENTS  // test builds only (tests/test_csrc.py): a forced count through the plugin's workspace
    (void)batch, (void)dim, (void)sms, (void)blocks_per_sm;
    return MAMBAESR_TEST_SEGMENTS;
#else
    int64_t const blocks = int64_t(batch) * ((dim + kShippedChannels - 1) / kShippedChannels);
    int64_t const fill = int64_t(sms) * std::max(blocks_per_sm, 1) / std::max<int64_t>(blocks, 1);
    return fill >= kMinSplit ? int(std::min<int64_t>(fill, 1 << 20)) : 1;
#endif
}

// Workspace bytes for L cut into `segments` (0 when 1). Segments are capped at one per chunk, as launch_segments does.
inline size_t split_workspace_bytes(int batch, int dim, int n_state, int length, int segments) {
    int const capped = std::min(segments, (length + kShippedTokens - 1) / kShippedTokens);
    return capped > 1 ? sizeof(float) * segment_workspace_floats(batch, dim, n_state, capped) : 0;
}

// Workspace bytes launch_selective_scan needs under the policy for these shapes (0 when it does not split).
inline size_t selective_scan_workspace_bytes(int batch, int dim, int n_state, int length, int sms, int blocks_per_sm) {
    return split_workspace_bytes(batch, dim, n_state, length, selective_scan_segments(batch, dim, n_state, length, sms, blocks_per_sm));
}

// One instance of the shipped kernel as a type, for the launcher's dispatch.
template <typename T_, int kStates_>
struct ShippedVariant {
    using T = T_;
    static constexpr int kStates = kStates_;
};

// Calls visit(ShippedVariant<T, kStates>{}) with the instance for p's dtype and N (kStates = N / 16 rounded up to 1, 2
// or 4); cudaErrorInvalidValue for N > kMaxStates.
template <typename Visit>
inline cudaError_t visit_shipped_variant(ScanParams const& p, Visit&& visit) {
    if (p.n_state > kMaxStates) return cudaErrorInvalidValue;
    auto pick = [&](auto dtype) -> cudaError_t {
        using T = decltype(dtype);
        if (p.n_state <= kShippedGroup) return visit(ShippedVariant<T, 1>{});
        if (p.n_state <= 2 * kShippedGroup) return visit(ShippedVariant<T, 2>{});
        return visit(ShippedVariant<T, 4>{});
    };
    return p.dtype == kScanFloat32 ? pick(float{}) : pick(__half{});
}

// What the launcher needs from the driver for variant V on the current device: its SM count and V's resident blocks per
// SM (with V's passes prepared first). Asked once per device and variant, then cached: at small batches the host is
// the bottleneck and the occupancy query costs more than the launch (devices past the cache's size are asked on every
// call; a race only asks twice). The shared-memory attribute itself is set again before every launch
// (launch_selective_scan), so a context created later on the same device still gets it.
struct ShippedDevice {
    int sms, blocks_per_sm;
};

template <class V>
inline cudaError_t shipped_device(V, ShippedDevice* out) {
    constexpr int kCachedDevices = 64;
    static std::atomic<int64_t> cache[kCachedDevices];  // sms << 32 | blocks_per_sm; 0 = not asked yet
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    int64_t const known = device < kCachedDevices ? cache[device].load(std::memory_order_acquire) : 0;
    if (known != 0) {
        *out = ShippedDevice{int(known >> 32), int(known & 0xffffffff)};
        return cudaSuccess;
    }
    ScanKernel const pass2 = shipped_kernel<typename V::T, V::kStates, kPassReplay>();
    size_t const smem = ShippedShape<V::kStates>::kSmemBytes;
    err = prepare_split(shipped_kernel<typename V::T, V::kStates, kPassWhole>(),
                        shipped_kernel<typename V::T, V::kStates, kPassEndState>(), pass2, smem);
    int sms = 0, per_sm = 0;
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pass2, kShippedChannels * kShippedGroup, smem);
    if (err != cudaSuccess) return err;
    *out = ShippedDevice{sms, std::max(per_sm, 1)};
    if (device < kCachedDevices) cache[device].store(int64_t(sms) << 32 | int64_t(out->blocks_per_sm), std::memory_order_release);
    return cudaSuccess;
}

// The segment count for variant V: `forced` when > 0 (tests), else the policy with V's resident blocks per SM.
template <class V>
inline cudaError_t shipped_segments(V variant, ScanParams const& p, int forced, int* segments) {
    ShippedDevice device{};
    cudaError_t const err = shipped_device(variant, &device);
    if (err != cudaSuccess) return err;
    *segments = forced > 0 ? forced : selective_scan_segments(p.batch, p.dim, p.n_state, p.length, device.sms, device.blocks_per_sm);
    return cudaSuccess;
}

// Workspace bytes launch_selective_scan(p, ..., segments) needs on the current device: p's shapes and dtype are
// read, its data pointers are not. `segments` as launch_selective_scan's.
inline cudaError_t selective_scan_workspace_query(ScanParams const& p, int segments, size_t* bytes) {
    *bytes = 0;
    if (p.batch < 1 || p.dim < 1 || p.length < 1 || p.n_state < 1) return cudaErrorInvalidValue;
    return visit_shipped_variant(p, [&](auto variant) -> cudaError_t {
        int count = 1;
        cudaError_t const err = shipped_segments(variant, p, segments, &count);
        if (err == cudaSuccess) *bytes = split_workspace_bytes(p.batch, p.dim, p.n_state, p.length, count);
        return err;
    });
}

// Launches the scan on `stream`. `workspace` (device memory, `workspace_bytes`) may be null/0 when
// selective_scan_workspace_query gives 0 (the policy does not split these shapes). `segments`: 0 = the policy (every
// shipped caller); > 0 forces that many (tests of the split path). Returns cudaSuccess, cudaErrorInvalidValue for bad
// parameters, N > kMaxStates, tiles that do not fit this GPU's shared memory, or a workspace smaller than the query's
// bytes; or the launch's error.
inline cudaError_t launch_selective_scan(ScanParams const& p, void* workspace, size_t workspace_bytes, cudaStream_t stream,
    int segments = 0) {
    if (!valid_params(p)) return cudaErrorInvalidValue;
    return visit_shipped_variant(p, [&](auto variant) -> cudaError_t {
        using V = decltype(variant);
        int count = 1;
        cudaError_t const err = shipped_segments(variant, p, segments, &count);
        if (err != cudaSuccess) return err;
        size_t const need = split_workspace_bytes(p.batch, p.dim, p.n_state, p.length, count);
        if (need > 0 && (workspace == nullptr || workspace_bytes < need)) return cudaErrorInvalidValue;
        size_t const smem = ShippedShape<V::kStates>::kSmemBytes;
        cudaError_t const prepared = prepare_split(shipped_kernel<typename V::T, V::kStates, kPassWhole>(),
                                                   shipped_kernel<typename V::T, V::kStates, kPassEndState>(),
                                                   shipped_kernel<typename V::T, V::kStates, kPassReplay>(), smem);
        if (prepared != cudaSuccess) return prepared;
        return launch_segments(shipped_kernel<typename V::T, V::kStates, kPassWhole>(),
                               shipped_kernel<typename V::T, V::kStates, kPassEndState>(),
                               shipped_kernel<typename V::T, V::kStates, kPassReplay>(), p, kShippedChannels,
                               kShippedChannels * kShippedGroup, kShippedTokens, smem, count, workspace, workspace_bytes, stream);
    });
}

}  // namespace mambaesr
