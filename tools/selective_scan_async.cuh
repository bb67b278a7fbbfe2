// Selective scan kernel variant with the next chunk's inputs copied into shared memory while this chunk is computed
// (cp.async, sm_80+): a variant of the previous, token-parallel kernel (selective_scan_tokens.cuh), for measurement;
// not package data, not used by `launch_selective_scan` or the plugin (tools/scan_variants.cu reaches it).
//
// What differs from token_scan_kernel (same contract, work split, shared-memory tile layout and scan steps):
// - Two stages of raw input tiles (u, delta, z, B, C as read: fp32, zero outside the tensor). While chunk k is
//   scanned from stage k & 1, chunk k + 1 is in flight into stage (k + 1) & 1: memory and arithmetic overlap inside a
//   block without the kPrefetch variant's registers (which spill at 16 warps a SM).
// - delta' (bias + softplus) and silu(z) are applied where each value is used (each (channel, token) is read once,
//   by the lane that owns it), so the copies need no staging pass through registers.
// - fp32 activations only: cp.async moves 4, 8 or 16 bytes, so a lone fp16 element cannot be copied; fp16 tiles
//   would need pairs of elements along each tensor's contiguous dimension (the tile layout would then differ by
//   layout). On sm_75 the copy is a plain load and store (same results, no overlap).
// Shared memory per block (floats): 2 stages x (u, delta, [z], B, C) tiles, the y tile, A log2(e), carry, bias.
// The block-constant prologue (A log2(e), carry, bias) and the y store repeat token_scan_kernel's on purpose:
// moving them into shared device functions changes that kernel's PTX (checked with nvcc -ptx for sm_90: 56 to 1,500
// more lines), and these three kernels are kept as the code their recorded timings came from
// (benchmarks/scan_variants*_h100.json): a refactor would need those runs again.
#pragma once

#include "selective_scan_tokens.cuh"

namespace mambaesr {

// Copies one 4-byte element global -> shared (zero when !valid; src then only needs to be a valid pointer).
__device__ __forceinline__ void copy_element_async(float* dst, float const* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned const saddr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(src), "r"(valid ? 4 : 0));
#else
    *dst = valid ? *src : 0.0f;
#endif
}

__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// This thread's share of rows [row0, row0 + kCpb) x tokens [t0, t0 + kChunk) of batch row b, copied into a raw tile
// (row r at dst + r * kRow), in the same coalesced walk as load_token_tile.
template <int kItems, int kCpb>
__device__ __forceinline__ void copy_tile_async(float* dst, float const* src, int64_t const* stride, int b, int row0,
    int rows_total, int t0, int length) {
    TokenTileWalk<kItems, kCpb> const walk(token_fast(stride));
    int64_t const s1 = opaque(stride[1]), s2 = opaque(stride[2]);
    int const row = row0 + walk.row, tok = t0 + walk.tok;
    float const* base = src + b * stride[0] + row * s1 + tok * s2;
    float* slot = dst + walk.base_slot();
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
        int const dr = walk.row_step(k), dt = walk.tok_step(k);
        bool const valid = row + dr < rows_total && tok + dt < length;
        copy_element_async(slot + walk.slot(k), valid ? base + dr * s1 + dt * s2 : src, valid);
    }
}

// Floats of one stage: u, delta, [z] tiles of kCpb rows; B and C tiles of N rows rounded up to a multiple of kCpb.
__host__ __device__ inline size_t async_stage_floats(int cpb, int n_state, int items, bool has_z) {
    size_t const row = size_t(kLanes) * items + kLanes + 1;
    size_t const bc_rows = size_t((n_state + cpb - 1) / cpb) * cpb;
    return (2 + (has_z ? 1 : 0)) * cpb * row + 2 * bc_rows * row;
}

inline size_t async_smem_bytes(int cpb, int n_state, int items, bool has_z) {
    size_t const row = size_t(kLanes) * items + kLanes + 1;
    return sizeof(float) * (2 * async_stage_floats(cpb, n_state, items, has_z) + cpb * row + size_t(3) * cpb * n_state + cpb);
}

// The tiles of one stage, at `base`: u, delta, B, C (bc_rows rows each), [z]. Computed where used (an array of
// stages indexed by chunk parity would live in local memory).
struct AsyncStage {
    float *u, *dt, *z, *b, *c;
    template <int kItems, int kCpb>
    __device__ __forceinline__ static AsyncStage at(float* base, int bc_rows) {
        constexpr int kRow = ChunkShape<kItems>::kRow;
        AsyncStage st;
        st.u = base;
        st.dt = base + kCpb * kRow;
        st.b = base + 2 * kCpb * kRow;
        st.c = st.b + bc_rows * kRow;
        st.z = st.c + bc_rows * kRow;
        return st;
    }
};

template <int kItems, int kCpb, bool kOutput>
__device__ __forceinline__ void copy_chunk_async(AsyncStage const& st, ScanParams const& p, int b, int c0, int t0) {
    copy_tile_async<kItems, kCpb>(st.u, static_cast<float const*>(p.u), p.u_stride, b, c0, p.dim, t0, p.length);
    copy_tile_async<kItems, kCpb>(st.dt, static_cast<float const*>(p.delta), p.delta_stride, b, c0, p.dim, t0, p.length);
    if (kOutput && p.z != nullptr) {
        copy_tile_async<kItems, kCpb>(st.z, static_cast<float const*>(p.z), p.z_stride, b, c0, p.dim, t0, p.length);
    }
    constexpr int kRow = ChunkShape<kItems>::kRow;
#pragma unroll 1
    for (int row0 = 0; row0 < p.n_state; row0 += kCpb) {
        copy_tile_async<kItems, kCpb>(st.b + row0 * kRow, static_cast<float const*>(p.B), p.B_stride, b, row0, p.n_state, t0, p.length);
        if (kOutput) {
            copy_tile_async<kItems, kCpb>(st.c + row0 * kRow, static_cast<float const*>(p.C), p.C_stride, b, row0, p.n_state, t0, p.length);
        }
    }
    copy_commit();
}

// kPass as token_scan_kernel (kPassWhole, or the two passes of a split L with SegmentArgs).
template <int kItems, int kCpb, int kMinWarps, int kPass = kPassWhole>
__global__ void __launch_bounds__(kCpb * kLanes, kMinWarps * 32 / (kCpb * kLanes))
selective_scan_async_kernel(ScanParams p, SegmentArgs seg) {
    constexpr int kRow = ChunkShape<kItems>::kRow;
    constexpr int kChunk = ChunkShape<kItems>::kChunk;
    constexpr bool kOutput = kPass != kPassEndState;
    extern __shared__ float smem[];
    int const n_state = p.n_state;
    int const bc_rows = (n_state + kCpb - 1) / kCpb * kCpb;
    bool const has_z = kOutput && p.z != nullptr;
    size_t const stage_floats = async_stage_floats(kCpb, n_state, kItems, p.z != nullptr);
    float* s_y = smem + 2 * stage_floats;           // (kCpb, kRow): y
    float* s_a = s_y + kCpb * kRow;                 // (kCpb, N): A * log2(e)
    float* s_carry = s_a + kCpb * n_state;          // (2, kCpb, N)
    float* s_bias = s_carry + 2 * kCpb * n_state;   // (kCpb)

    int const n_cblocks = (p.dim + kCpb - 1) / kCpb;
    int const segments = kPass == kPassWhole ? 1 : seg.segments;
    int const row_seg = blockIdx.x / n_cblocks;
    int const b = row_seg / segments;
    int const segment = row_seg - b * segments;
    int const c0 = (blockIdx.x - row_seg * n_cblocks) * kCpb;
    int const local_c = threadIdx.x / kLanes;
    int const lane = threadIdx.x % kLanes;
    int const channel = c0 + local_c;
    int const n_chunks = (p.length + kChunk - 1) / kChunk;
    if (kPass == kPassEndState && segment == segments - 1) return;
    int const k_begin = kPass == kPassWhole ? 0 : segment * seg.chunks_per_segment;
    int const k_end = kPass == kPassWhole ? n_chunks : min(n_chunks, k_begin + seg.chunks_per_segment);

    if (k_begin < k_end) copy_chunk_async<kItems, kCpb, kOutput>(AsyncStage::at<kItems, kCpb>(smem, bc_rows), p, b, c0, k_begin * kChunk);  // in flight meanwhile
    for (int idx = threadIdx.x; idx < kCpb * n_state; idx += blockDim.x) {
        int const c = idx / n_state, n = idx - c * n_state;
        float const a = (c0 + c < p.dim) ? p.A[(c0 + c) * p.A_stride[0] + n * p.A_stride[1]] * 1.4426950408889634f : 0.0f;
        s_a[idx] = a;
        bool const incoming = kPass == kPassReplay && c0 + c < p.dim;  // pass 2: fold the preceding segments
        s_carry[idx] = incoming ? segment_incoming_state(seg, p.batch, p.dim, n_state, b, c0 + c, n, segment, a) : 0.0f;
    }
    if (threadIdx.x < kCpb) {
        s_bias[threadIdx.x] = (p.delta_bias != nullptr && c0 + int(threadIdx.x) < p.dim) ? p.delta_bias[c0 + threadIdx.x] : 0.0f;
    }
    float const d_skip = (p.D != nullptr && channel < p.dim) ? p.D[channel] : 0.0f;

    float dt_total = 0.0f;
#pragma unroll 1
    for (int k = k_begin; k < k_end; ++k) {
        int const t0 = k * kChunk;
        AsyncStage const cur = AsyncStage::at<kItems, kCpb>(smem + ((k - k_begin) & 1) * stage_floats, bc_rows);
        // chunk k + 1 into the other stage (its last readers, chunk k - 1, finished before the previous barrier)
        if (k + 1 < k_end) {
            copy_chunk_async<kItems, kCpb, kOutput>(AsyncStage::at<kItems, kCpb>(smem + ((k - k_begin + 1) & 1) * stage_floats, bc_rows),
                                                    p, b, c0, t0 + kChunk);
            copy_wait<1>();  // chunk k's group has landed (this thread's part)
        } else {
            copy_wait<0>();
        }
        __syncthreads();  // everyone's part of chunk k (and, the first time, s_a, s_carry, s_bias)

        float dt[kItems], du[kItems], acc[kItems];
        float dt_sum = 0.0f;
        int const col0 = lane * (kItems + 1);
        float const* row_u = cur.u + local_c * kRow + col0;
        float const* row_dt = cur.dt + local_c * kRow + col0;
        float const bias = s_bias[local_c];
        int const tok0 = t0 + lane * kItems;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            float x = row_dt[i] + bias;  // delta' here, once per (channel, token): 0 on padded tokens
            if (p.delta_softplus) x = softplus(x);
            dt[i] = tok0 + i < p.length ? x : 0.0f;
            du[i] = dt[i] * row_u[i];
            acc[i] = 0.0f;
            dt_sum += dt[i];
        }
        dt_total += dt_sum;
        float const* carry_in = s_carry + ((k - k_begin) & 1) * kCpb * n_state + local_c * n_state;
        float* carry_out = s_carry + ((k - k_begin + 1) & 1) * kCpb * n_state + local_c * n_state;
        float const* a_row = s_a + local_c * n_state;
        int n = 0;
#pragma unroll 1
        for (; n + 2 <= n_state; n += 2) {
            scan_states<kItems, 2, kOutput>(n, dt, du, acc, dt_sum, a_row, cur.b, cur.c, col0, carry_in, carry_out, lane);
        }
        if (n < n_state) scan_states<kItems, 1, kOutput>(n, dt, du, acc, dt_sum, a_row, cur.b, cur.c, col0, carry_in, carry_out, lane);

        if (kOutput) {
            float* row_y = s_y + local_c * kRow + col0;
            float const* row_z = cur.z + local_c * kRow + col0;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                float v = fmaf(d_skip, row_u[i], acc[i]);
                if (has_z) v *= silu(row_z[i]);
                row_y[i] = v;
            }
        }
        __syncthreads();  // y complete; this stage's readers done before the next iteration's copies reuse it
        if (kOutput) {
            TokenTileWalk<kItems, kCpb> const walk(token_fast(p.y_stride));
            int64_t const s1 = opaque(p.y_stride[1]), s2 = opaque(p.y_stride[2]);
            int const row = c0 + walk.row, tok = t0 + walk.tok;
            float* y_base = static_cast<float*>(p.y) + b * p.y_stride[0] + row * s1 + tok * s2;
            float const* y_tile = s_y + walk.base_slot();
#pragma unroll
            for (int kk = 0; kk < kItems; ++kk) {
                int const dr = walk.row_step(kk), dtk = walk.tok_step(kk);
                if (row + dr < p.dim && tok + dtk < p.length) y_base[dr * s1 + dtk * s2] = y_tile[walk.slot(kk)];
            }
        }
    }
    if (kPass == kPassEndState) {
#pragma unroll
        for (int offset = 1; offset < kLanes; offset *= 2) dt_total += __shfl_xor_sync(0xffffffffu, dt_total, offset, kLanes);
        float* ws = seg.workspace;
        size_t const row = seg.row(b, segment, p.dim, channel);
        float const* carry_end = s_carry + ((k_end - k_begin) & 1) * kCpb * n_state + local_c * n_state;
        if (channel < p.dim) {
            for (int n = lane; n < n_state; n += kLanes) ws[row * n_state + n] = carry_end[n];
            if (lane == 0) ws[seg.sums_offset(p.batch, p.dim, n_state) + row] = dt_total;
        }
    }
}

// Launches the async variant for fp32 activations; L split as launch_token_scan_segmented (segments 0 = fill the GPU,
// 1 = one pass). cudaErrorInvalidValue for fp16 activations or tiles beyond this GPU's shared memory.
template <int kItems, int kCpb, int kMinWarps>
inline cudaError_t launch_scan_async(ScanParams const& p, int segments, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
    if (p.dtype != kScanFloat32) return cudaErrorInvalidValue;
    return launch_split(selective_scan_async_kernel<kItems, kCpb, kMinWarps, kPassWhole>,
                        selective_scan_async_kernel<kItems, kCpb, kMinWarps, kPassEndState>,
                        selective_scan_async_kernel<kItems, kCpb, kMinWarps, kPassReplay>, p, kCpb,
                        kCpb * kLanes, ChunkShape<kItems>::kChunk, async_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr), segments,
                        workspace, workspace_bytes, stream);
}

}  // namespace mambaesr
