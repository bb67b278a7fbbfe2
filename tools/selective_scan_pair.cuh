// Selective scan kernel variant with two channels per half-warp: a variant of the previous, token-parallel kernel
// (selective_scan_tokens.cuh: one channel per half-warp), for measurement; not package data, not used by
// `launch_selective_scan` or the plugin (tools/scan_variants.cu).
//
// What differs from token_scan_kernel (same contract, shared-memory tiles, staging and chunk loop):
// - A block of kCpb channels has kCpb / 2 half-warps (kCpb * 8 threads); half-warp q owns channels 2q and 2q + 1.
//   Each lane scans one state of both channels at a time (two independent chains, as the two states at a time of
//   the one-channel kernel), so every B and C value it reads from shared memory serves two channels: half the
//   shared-memory loads of B and C per state and token, and the same registers for the chains.
// - The staging walks give each thread 2 * kItems elements of every tile (TokenTileWalk with kCpb * 8 threads); the
//   channel-fast walk then steps 8 tokens, hence kItems <= 8.
// The block-constant prologue (A log2(e), carry, bias) and the y store repeat token_scan_kernel's on purpose:
// moving them into shared device functions changes that kernel's PTX (checked with nvcc -ptx for sm_90: 56 to 1,500
// more lines), and these three kernels are kept as the code their recorded timings came from
// (benchmarks/scan_variants*_h100.json): a refactor would need those runs again.
#pragma once

#include "selective_scan_tokens.cuh"

namespace mambaesr {

// Steps (1) to (3) of selective_scan.cuh's header for state n of channels 0 and 1 of this half-warp's pair (x[ch][i]:
// channel ch's value at this lane's item i; carry_in / carry_out rows of N per channel).
template <int kItems, bool kReplay>
__device__ __forceinline__ void scan_state_pair(int n, int n_state, float const (&dt)[2][kItems],
    float const (&du)[2][kItems], float (&acc)[2][kItems], float const (&dt_sum)[2], float const* a_pair,
    float const* s_b, float const* s_c, int col0, float const* carry_in, float* carry_out, int lane) {
    constexpr int kRow = ChunkShape<kItems>::kRow;
    float decay[2][kItems], drive[2][kItems], prod[2], h_local[2];
    float const* b_row = s_b + n * kRow + col0;
    float const a[2] = {a_pair[n], a_pair[n_state + n]};
    h_local[0] = h_local[1] = 0.0f;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
        float const b = b_row[i];  // one shared-memory load for both channels
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            decay[ch][i] = fast_exp2(dt[ch][i] * a[ch]);
            drive[ch][i] = du[ch][i] * b;
            h_local[ch] = fmaf(decay[ch][i], h_local[ch], drive[ch][i]);
        }
    }
#pragma unroll
    for (int ch = 0; ch < 2; ++ch) prod[ch] = fast_exp2(dt_sum[ch] * a[ch]);
#pragma unroll
    for (int offset = 1; offset < kLanes; offset *= 2) {
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            float const prod_up = __shfl_up_sync(0xffffffffu, prod[ch], offset, kLanes);
            float const h_up = __shfl_up_sync(0xffffffffu, h_local[ch], offset, kLanes);
            if (lane >= offset) {
                h_local[ch] = fmaf(prod[ch], h_up, h_local[ch]);
                prod[ch] *= prod_up;
            }
        }
    }
    if constexpr (!kReplay) {
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            if (lane == kLanes - 1) carry_out[ch * n_state + n] = fmaf(prod[ch], carry_in[ch * n_state + n], h_local[ch]);
        }
    } else {
        float h[2];
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            float const carry = carry_in[ch * n_state + n];
            h[ch] = __shfl_up_sync(0xffffffffu, fmaf(prod[ch], carry, h_local[ch]), 1, kLanes);
            if (lane == 0) h[ch] = carry;
        }
        float const* c_row = s_c + n * kRow + col0;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            float const c = c_row[i];  // one shared-memory load for both channels
#pragma unroll
            for (int ch = 0; ch < 2; ++ch) {
                h[ch] = fmaf(decay[ch][i], h[ch], drive[ch][i]);
                acc[ch][i] = fmaf(h[ch], c, acc[ch][i]);
            }
        }
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            if (lane == kLanes - 1) carry_out[ch * n_state + n] = h[ch];
        }
    }
}

template <typename T, int kItems, int kCpb, int kMinWarps, int kPass = kPassWhole>
__global__ void __launch_bounds__(kCpb * kLanes / 2, kMinWarps * 32 / (kCpb * kLanes / 2))
selective_scan_pair_kernel(ScanParams p, SegmentArgs seg) {
    constexpr int kThreads = kCpb * kLanes / 2;
    constexpr int kRow = ChunkShape<kItems>::kRow;
    constexpr int kChunk = ChunkShape<kItems>::kChunk;
    constexpr int kElems = TokenTileWalk<kItems, kCpb, kThreads>::kElems;  // 2 * kItems
    constexpr bool kOutput = kPass != kPassEndState;
    extern __shared__ float smem[];
    int const n_state = p.n_state;
    int const bc_parts = (n_state + kCpb - 1) / kCpb;
    bool const has_z = kOutput && p.z != nullptr;
    float* s_u = smem;                              // the same layout as token_scan_kernel's
    float* s_dt = s_u + kCpb * kRow;
    float* s_y = s_dt + kCpb * kRow;
    float* s_b = s_y + kCpb * kRow;
    float* s_c = s_b + bc_parts * kCpb * kRow;
    float* s_a = s_c + bc_parts * kCpb * kRow;
    float* s_carry = s_a + kCpb * n_state;
    float* s_bias = s_carry + 2 * kCpb * n_state;
    float* s_z = s_bias + kCpb;

    int const n_cblocks = (p.dim + kCpb - 1) / kCpb;
    int const segments = kPass == kPassWhole ? 1 : seg.segments;
    int const row_seg = blockIdx.x / n_cblocks;
    int const b = row_seg / segments;
    int const segment = row_seg - b * segments;
    int const c0 = (blockIdx.x - row_seg * n_cblocks) * kCpb;
    int const local_c = 2 * (threadIdx.x / kLanes);  // this half-warp's first channel within the block
    int const lane = threadIdx.x % kLanes;
    int const n_chunks = (p.length + kChunk - 1) / kChunk;
    if (kPass == kPassEndState && segment == segments - 1) return;
    int const k_begin = kPass == kPassWhole ? 0 : segment * seg.chunks_per_segment;
    int const k_end = kPass == kPassWhole ? n_chunks : min(n_chunks, k_begin + seg.chunks_per_segment);

    for (int idx = threadIdx.x; idx < kCpb * n_state; idx += kThreads) {
        int const c = idx / n_state, n = idx - c * n_state;
        float const a = (c0 + c < p.dim) ? p.A[(c0 + c) * p.A_stride[0] + n * p.A_stride[1]] * 1.4426950408889634f : 0.0f;
        s_a[idx] = a;
        bool const incoming = kPass == kPassReplay && c0 + c < p.dim;  // pass 2: fold the preceding segments
        s_carry[idx] = incoming ? segment_incoming_state(seg, p.batch, p.dim, n_state, b, c0 + c, n, segment, a) : 0.0f;
    }
    if (threadIdx.x < kCpb) {
        s_bias[threadIdx.x] = (p.delta_bias != nullptr && c0 + int(threadIdx.x) < p.dim) ? p.delta_bias[c0 + threadIdx.x] : 0.0f;
    }
    float d_skip[2];
#pragma unroll
    for (int ch = 0; ch < 2; ++ch) d_skip[ch] = (p.D != nullptr && c0 + local_c + ch < p.dim) ? p.D[c0 + local_c + ch] : 0.0f;
    __syncthreads();

    float dt_total[2] = {0.0f, 0.0f};
#pragma unroll 1
    for (int k = k_begin; k < k_end; ++k) {
        int const t0 = k * kChunk;
        {
            T u[kElems], dtr[kElems], z[kElems], bb[kElems], cc[kElems];  // all loads issued before the first store
            load_token_tile<T, kItems, kCpb, kThreads>(u, static_cast<T const*>(p.u), p.u_stride, b, c0, p.dim, t0, p.length);
            load_token_tile<T, kItems, kCpb, kThreads>(dtr, static_cast<T const*>(p.delta), p.delta_stride, b, c0, p.dim, t0, p.length);
            if (has_z) load_token_tile<T, kItems, kCpb, kThreads>(z, static_cast<T const*>(p.z), p.z_stride, b, c0, p.dim, t0, p.length);
            load_token_tile<T, kItems, kCpb, kThreads>(bb, static_cast<T const*>(p.B), p.B_stride, b, 0, n_state, t0, p.length);
            if (kOutput) load_token_tile<T, kItems, kCpb, kThreads>(cc, static_cast<T const*>(p.C), p.C_stride, b, 0, n_state, t0, p.length);
            store_token_tile<T, kItems, kCpb, kPlain, kThreads>(s_u, u, p.u_stride, c0, p.dim, t0, p.length, nullptr, 0);
            store_token_tile<T, kItems, kCpb, kDelta, kThreads>(s_dt, dtr, p.delta_stride, c0, p.dim, t0, p.length, s_bias, p.delta_softplus);
            if (has_z) store_token_tile<T, kItems, kCpb, kSilu, kThreads>(s_z, z, p.z_stride, c0, p.dim, t0, p.length, nullptr, 0);
            store_token_tile<T, kItems, kCpb, kPlain, kThreads>(s_b, bb, p.B_stride, 0, n_state, t0, p.length, nullptr, 0);
            if (kOutput) store_token_tile<T, kItems, kCpb, kPlain, kThreads>(s_c, cc, p.C_stride, 0, n_state, t0, p.length, nullptr, 0);
#pragma unroll 1
            for (int part = 1; part < bc_parts; ++part) {
                int const row0 = part * kCpb;
                load_token_tile<T, kItems, kCpb, kThreads>(bb, static_cast<T const*>(p.B), p.B_stride, b, row0, n_state, t0, p.length);
                if (kOutput) load_token_tile<T, kItems, kCpb, kThreads>(cc, static_cast<T const*>(p.C), p.C_stride, b, row0, n_state, t0, p.length);
                store_token_tile<T, kItems, kCpb, kPlain, kThreads>(s_b + row0 * kRow, bb, p.B_stride, row0, n_state, t0, p.length, nullptr, 0);
                if (kOutput) store_token_tile<T, kItems, kCpb, kPlain, kThreads>(s_c + row0 * kRow, cc, p.C_stride, row0, n_state, t0, p.length, nullptr, 0);
            }
        }
        __syncthreads();

        float dt[2][kItems], du[2][kItems], acc[2][kItems], dt_sum[2];
        int const col0 = lane * (kItems + 1);
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            float const* row_u = s_u + (local_c + ch) * kRow + col0;
            float const* row_dt = s_dt + (local_c + ch) * kRow + col0;
            dt_sum[ch] = 0.0f;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                dt[ch][i] = row_dt[i];
                du[ch][i] = dt[ch][i] * row_u[i];
                acc[ch][i] = 0.0f;
                dt_sum[ch] += dt[ch][i];
            }
            dt_total[ch] += dt_sum[ch];
        }
        float const* carry_in = s_carry + ((k - k_begin) & 1) * kCpb * n_state + local_c * n_state;
        float* carry_out = s_carry + ((k - k_begin + 1) & 1) * kCpb * n_state + local_c * n_state;
        float const* a_pair = s_a + local_c * n_state;
#pragma unroll 1
        for (int n = 0; n < n_state; ++n) {
            scan_state_pair<kItems, kOutput>(n, n_state, dt, du, acc, dt_sum, a_pair, s_b, s_c, col0, carry_in, carry_out, lane);
        }

        if (kOutput) {
#pragma unroll
            for (int ch = 0; ch < 2; ++ch) {
                float const* row_u = s_u + (local_c + ch) * kRow + col0;
                float* row_y = s_y + (local_c + ch) * kRow + col0;
                float const* row_z = s_z + (local_c + ch) * kRow + col0;
#pragma unroll
                for (int i = 0; i < kItems; ++i) {
                    float v = fmaf(d_skip[ch], row_u[i], acc[ch][i]);
                    if (has_z) v *= row_z[i];
                    row_y[i] = v;
                }
            }
        }
        __syncthreads();
        if (kOutput) {
            TokenTileWalk<kItems, kCpb, kThreads> const walk(token_fast(p.y_stride));
            int64_t const s1 = opaque(p.y_stride[1]), s2 = opaque(p.y_stride[2]);
            int const row = c0 + walk.row, tok = t0 + walk.tok;
            T* y_base = static_cast<T*>(p.y) + b * p.y_stride[0] + row * s1 + tok * s2;
            float const* y_tile = s_y + walk.base_slot();
#pragma unroll
            for (int kk = 0; kk < kElems; ++kk) {
                int const dr = walk.row_step(kk), dtk = walk.tok_step(kk);
                if (row + dr < p.dim && tok + dtk < p.length) from_float(y_tile[walk.slot(kk)], y_base + dr * s1 + dtk * s2);
            }
        }
    }
    if (kPass == kPassEndState) {
        float* ws = seg.workspace;
        float const* carry_end = s_carry + ((k_end - k_begin) & 1) * kCpb * n_state + local_c * n_state;
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
#pragma unroll
            for (int offset = 1; offset < kLanes; offset *= 2) dt_total[ch] += __shfl_xor_sync(0xffffffffu, dt_total[ch], offset, kLanes);
            int const channel = c0 + local_c + ch;
            size_t const row = seg.row(b, segment, p.dim, channel);
            if (channel < p.dim) {
                for (int n = lane; n < n_state; n += kLanes) ws[row * n_state + n] = carry_end[ch * n_state + n];
                if (lane == 0) ws[seg.sums_offset(p.batch, p.dim, n_state) + row] = dt_total[ch];
            }
        }
    }
}

// launch_split for the pair kernel (kCpb channels = kCpb / 2 half-warps a block; segments as launch_token_scan_segmented).
template <typename T, int kItems, int kCpb, int kMinWarps>
inline cudaError_t launch_scan_pair(ScanParams const& p, int segments, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
    static_assert(kCpb >= 4 && kItems <= 8, "two channels a half-warp; the channel-fast walk steps 8 tokens");
    return launch_split(selective_scan_pair_kernel<T, kItems, kCpb, kMinWarps, kPassWhole>,
                        selective_scan_pair_kernel<T, kItems, kCpb, kMinWarps, kPassEndState>,
                        selective_scan_pair_kernel<T, kItems, kCpb, kMinWarps, kPassReplay>, p, kCpb,
                        kCpb * kLanes / 2, ChunkShape<kItems>::kChunk, token_scan_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr), segments,
                        workspace, workspace_bytes, stream);
}

}  // namespace mambaesr
