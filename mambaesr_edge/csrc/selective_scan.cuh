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
// Work split. A block takes `cpb` channels (two per warp: one per half-warp of kLanes lanes) of one batch row and
// walks L in chunks of kLanes * kItems tokens, carrying the state of each (channel, state) pair from chunk to chunk.
// Per chunk: each thread loads its share of the chunk's u, delta, z, B and C tiles into registers (all loads issued
// before the first use: one memory latency per chunk, not one per tensor), then writes them to shared memory with
// delta' (bias + softplus) and silu(z) applied once; walks are coalesced for either layout of every tensor. Lane j of a
// half-warp owns tokens j*kItems .. j*kItems+kItems-1 of one channel; for each state n (two at a time, for
// independent work in flight) it (1) folds its kItems steps into one affine step h -> P h + H (P = exp2(A sum(delta'))),
// (2) scans those steps across the half-warp with shuffles (log2(16) = 4 rounds), (3) replays its kItems steps from
// the incoming state, accumulating y += C h in registers. With kPrefetch the next chunk's loads are issued before
// this chunk's arithmetic, so memory and arithmetic overlap inside a block as well as across blocks. The state never
// leaves registers except once per chunk (the carry); every input is read from device memory once and y written
// once: the minimal bytes.
//
// Shared-memory layout: token t = j*kItems + i of a chunk sits at column t + t / kItems (= (kItems+1) j + i), so the
// 16 lanes of a half-warp reading item i hit 16 different banks; rows are kRow = kChunk + kLanes + 1 floats apart
// (odd), so the channel-fast staging stores of token-major tensors (consecutive threads, consecutive rows) spread
// over the banks too; B and C rows are read by both half-warps of a warp at the same address (a broadcast).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>

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
// single-pass kernel does. Cost: pass 1 is about half a pass (no replay), so 1.5x the arithmetic of one pass, spread
// over S times as many blocks; the critical path shrinks from n_chunks chunks to about 1.5 n_chunks / S.
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

constexpr int kLanes = 16;                                // lanes per channel (a half-warp)
constexpr int kMaxChannelsPerBlock = 16;                  // 8 warps
constexpr int kMaxThreads = kMaxChannelsPerBlock * kLanes;

// Tokens per lane and the chunk and row sizes that follow from it.
template <int kItems>
struct ChunkShape {
    static constexpr int kChunk = kLanes * kItems;        // tokens per chunk
    static constexpr int kRow = kChunk + kLanes + 1;      // floats per row of a shared-memory tile (odd)
    static __device__ __forceinline__ int column(int t) { return t + t / kItems; }
};

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

// The walk of a kCpb x kChunk tile by the block's kThreads threads (kCpb * kLanes, or half that when a half-warp
// takes two channels): element k (0 .. kElems-1) of this thread is row base_row + row_step(k), token base_tok +
// tok_step(k), with the steps compile-time constants, so one address and one shared-memory slot per thread and
// tensor serve all k. Token-fast walks give consecutive threads consecutive tokens; channel-fast walks keep one row
// per thread and give consecutive threads consecutive rows.
template <int kItems, int kCpb, int kThreadCount = kCpb * kLanes>
struct TileWalk {
    static constexpr int kChunk = kLanes * kItems;
    static constexpr int kThreads = kThreadCount;
    static constexpr int kElems = kCpb * kChunk / kThreads;  // elements of the tile per thread (kItems: one channel a half-warp)
    static_assert(kLanes % kItems == 0 && (kCpb & (kCpb - 1)) == 0, "kItems divides 16; kCpb a power of two");
    static_assert((kThreads / kCpb) % kItems == 0 && kThreads % kItems == 0, "token steps keep column() a constant shift");
    int row, tok;   // this thread's first element
    bool tok_fast;

    __device__ __forceinline__ explicit TileWalk(bool token_fast_walk) : tok_fast(token_fast_walk) {
        int const tid = threadIdx.x;
        if (tok_fast) {
            row = tid / kChunk;  // 0 when the block has fewer threads than a chunk has tokens
            tok = tid % kChunk;
        } else {
            row = tid % kCpb;
            tok = tid / kCpb;
        }
    }
    __device__ __forceinline__ int row_step(int k) const {
        return tok_fast ? (k * kThreads) / kChunk : 0;
    }
    __device__ __forceinline__ int tok_step(int k) const {
        return tok_fast ? (k * kThreads) % kChunk : k * (kThreads / kCpb);
    }
    // shared-memory slot of element k: row * kRow + column(tok), as an offset from slot(0) (a multiple of kItems is
    // added to tok, so column() moves by a constant)
    __device__ __forceinline__ int slot(int k) const {
        int const t = tok_step(k);
        return row_step(k) * ChunkShape<kItems>::kRow + t + t / kItems;
    }
    __device__ __forceinline__ int base_slot() const { return row * ChunkShape<kItems>::kRow + ChunkShape<kItems>::column(tok); }
};

// A value the compiler cannot see through, so address arithmetic is redone per chunk instead of being hoisted out
// of the chunk loop into dozens of live registers.
__device__ __forceinline__ int64_t opaque(int64_t x) {
    asm volatile("" : "+l"(x));
    return x;
}

// Loads this thread's share of rows [row0, row0 + kCpb) x tokens [t0, t0 + kChunk) of batch row b; zero outside
// the tensor. Raw values: nothing uses them until store_tile, so the loads stay in flight meanwhile.
template <typename T, int kItems, int kCpb, int kThreads = kCpb * kLanes>
__device__ __forceinline__ void load_tile(T (&v)[TileWalk<kItems, kCpb, kThreads>::kElems], T const* src,
    int64_t const* stride, int b, int row0, int rows_total, int t0, int length) {
    TileWalk<kItems, kCpb, kThreads> const walk(token_fast(stride));
    int64_t const s1 = opaque(stride[1]), s2 = opaque(stride[2]);
    int const row = row0 + walk.row, tok = t0 + walk.tok;
    T const* base = src + b * stride[0] + row * s1 + tok * s2;
#pragma unroll
    for (int k = 0; k < walk.kElems; ++k) {
        int const dr = walk.row_step(k), dt = walk.tok_step(k);
        v[k] = (row + dr < rows_total && tok + dt < length) ? base[dr * s1 + dt * s2] : T(0.0f);
    }
}

enum TileOp { kPlain = 0, kDelta = 1, kSilu = 2 };

// Writes what load_tile loaded into a shared-memory tile (row r at dst + r * kRow), transformed by Op. delta' is 0
// outside the tensor (so padded tokens leave the state unchanged); bias holds the block's delta_bias (or zeros).
template <typename T, int kItems, int kCpb, int Op, int kThreads = kCpb * kLanes>
__device__ __forceinline__ void store_tile(float* dst, T const (&v)[TileWalk<kItems, kCpb, kThreads>::kElems],
    int64_t const* stride, int row0, int rows_total, int t0, int length, float const* bias, int softplus_on) {
    TileWalk<kItems, kCpb, kThreads> const walk(token_fast(stride));
    float* base = dst + walk.base_slot();
#pragma unroll
    for (int k = 0; k < walk.kElems; ++k) {
        float x = to_float(v[k]);
        if (Op == kDelta) {
            int const r = walk.row + walk.row_step(k);
            if (row0 + r < rows_total && t0 + walk.tok + walk.tok_step(k) < length) {
                x += bias[r];
                if (softplus_on) x = softplus(x);
            } else {
                x = 0.0f;
            }
        } else if (Op == kSilu) {
            x = silu(x);
        }
        base[walk.slot(k)] = x;
    }
}

// One chunk's raw inputs for this thread (kItems each of u, delta, z, B, C).
template <typename T, int kItems>
struct ChunkRegs {
    T u[kItems], dt[kItems], z[kItems], b[kItems], c[kItems];
};

// Zeros in place of load_chunk (kPassDiagNoLoad).
template <typename T, int kItems>
__device__ __forceinline__ void zero_chunk(ChunkRegs<T, kItems>& regs) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) regs.u[k] = regs.dt[k] = regs.z[k] = regs.b[k] = regs.c[k] = T(0.0f);
}

// kOutput false (pass 1 of a split L): z and C are not needed.
template <typename T, int kItems, int kCpb, bool kOutput = true>
__device__ __forceinline__ void load_chunk(ChunkRegs<T, kItems>& regs, ScanParams const& p, int b, int c0, int t0) {
    load_tile<T, kItems, kCpb>(regs.u, static_cast<T const*>(p.u), p.u_stride, b, c0, p.dim, t0, p.length);
    load_tile<T, kItems, kCpb>(regs.dt, static_cast<T const*>(p.delta), p.delta_stride, b, c0, p.dim, t0, p.length);
    if (kOutput && p.z != nullptr) load_tile<T, kItems, kCpb>(regs.z, static_cast<T const*>(p.z), p.z_stride, b, c0, p.dim, t0, p.length);
    load_tile<T, kItems, kCpb>(regs.b, static_cast<T const*>(p.B), p.B_stride, b, 0, p.n_state, t0, p.length);
    if (kOutput) load_tile<T, kItems, kCpb>(regs.c, static_cast<T const*>(p.C), p.C_stride, b, 0, p.n_state, t0, p.length);
}

// Steps (1) to (3) of the header for states n0 .. n0 + S - 1 of this lane's channel: S independent chains at once.
// kReplay false (pass 1 of a split L): steps (1) and (2) only; the last lane's inclusive step applied to the carry is
// the state at the chunk's end, and no y is accumulated.
template <int kItems, int S, bool kReplay = true>
__device__ __forceinline__ void scan_states(int n0, float const (&dt)[kItems], float const (&du)[kItems],
    float (&acc)[kItems], float dt_sum, float const* a_row, float const* s_b, float const* s_c, int col0,
    float const* carry_in, float* carry_out, int lane) {
    constexpr int kRow = ChunkShape<kItems>::kRow;
    float decay[S][kItems], drive[S][kItems], prod[S], h_local[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        float const a = a_row[n0 + s];
        float const* b_row = s_b + (n0 + s) * kRow + col0;
        h_local[s] = 0.0f;  // this lane's kItems steps as one: h -> prod * h + h_local
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            decay[s][i] = fast_exp2(dt[i] * a);
            drive[s][i] = du[i] * b_row[i];
            h_local[s] = fmaf(decay[s][i], h_local[s], drive[s][i]);
        }
        prod[s] = fast_exp2(dt_sum * a);
    }
    // inclusive scan of the lanes' steps across the half-warp (earlier lanes first)
#pragma unroll
    for (int offset = 1; offset < kLanes; offset *= 2) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            float const prod_up = __shfl_up_sync(0xffffffffu, prod[s], offset, kLanes);
            float const h_up = __shfl_up_sync(0xffffffffu, h_local[s], offset, kLanes);
            if (lane >= offset) {
                h_local[s] = fmaf(prod[s], h_up, h_local[s]);
                prod[s] *= prod_up;
            }
        }
    }
    if constexpr (!kReplay) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            if (lane == kLanes - 1) carry_out[n0 + s] = fmaf(prod[s], carry_in[n0 + s], h_local[s]);
        }
    } else {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            float const carry = carry_in[n0 + s];
            // the state after this lane's last token; the next lane starts from it, lane 0 from the carry
            float h = __shfl_up_sync(0xffffffffu, fmaf(prod[s], carry, h_local[s]), 1, kLanes);
            if (lane == 0) h = carry;
            float const* c_row = s_c + (n0 + s) * kRow + col0;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                h = fmaf(decay[s][i], h, drive[s][i]);
                acc[i] = fmaf(h, c_row[i], acc[i]);
            }
            if (lane == kLanes - 1) carry_out[n0 + s] = h;  // the state at the chunk's last token
        }
    }
}

// Shared memory (floats): u, delta', y, [silu(z)] tiles of cpb rows; B and C tiles of N rows rounded up to a
// multiple of cpb; A * log2(e) (cpb, N); the carry (2, cpb, N); delta_bias (cpb).
inline size_t scan_smem_bytes(int cpb, int n_state, int items, bool has_z) {
    size_t const row = size_t(kLanes) * items + kLanes + 1;
    size_t const bc_rows = size_t((n_state + cpb - 1) / cpb) * cpb;
    return sizeof(float) * ((3 + (has_z ? 1 : 0)) * cpb * row + 2 * bc_rows * row + size_t(3) * cpb * n_state + cpb);
}

template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps, int kPass = kPassWhole>
__global__ void __launch_bounds__(kCpb * kLanes, kMinWarps * 32 / (kCpb * kLanes))
selective_scan_fwd_kernel(ScanParams p, SegmentArgs seg) {
    using Shape = ChunkShape<kItems>;
    constexpr int kRow = Shape::kRow;
    constexpr int kChunk = Shape::kChunk;
    constexpr bool kOutput = kPass != kPassEndState;  // pass 1 writes end states, not y
    extern __shared__ float smem[];
    int const n_state = p.n_state;
    int const bc_parts = (n_state + kCpb - 1) / kCpb;
    bool const has_z = kOutput && p.z != nullptr;
    float* s_u = smem;                              // (kCpb, kRow): u
    float* s_dt = s_u + kCpb * kRow;                // (kCpb, kRow): delta'
    float* s_y = s_dt + kCpb * kRow;                // (kCpb, kRow): y
    float* s_b = s_y + kCpb * kRow;                 // (bc_parts * kCpb, kRow)
    float* s_c = s_b + bc_parts * kCpb * kRow;      // (bc_parts * kCpb, kRow)
    float* s_a = s_c + bc_parts * kCpb * kRow;      // (kCpb, N): A * log2(e)
    float* s_carry = s_a + kCpb * n_state;          // (2, kCpb, N): state entering the chunk, double-buffered
    float* s_bias = s_carry + 2 * kCpb * n_state;   // (kCpb): delta_bias
    float* s_z = s_bias + kCpb;                     // (kCpb, kRow): silu(z), when z is given

    // block index = (batch row * S + segment) * channel blocks + channel block (S = 1: as the unsplit kernel)
    int const n_cblocks = (p.dim + kCpb - 1) / kCpb;
    int const segments = kPass == kPassWhole ? 1 : seg.segments;  // compile-time 1 for the one-pass kernel
    int const row_seg = blockIdx.x / n_cblocks;
    int const b = row_seg / segments;
    int const segment = row_seg - b * segments;
    int const c0 = (blockIdx.x - row_seg * n_cblocks) * kCpb;
    int const local_c = threadIdx.x / kLanes;       // this half-warp's channel within the block
    int const lane = threadIdx.x % kLanes;          // j: owns tokens lane*kItems .. + kItems - 1 of each chunk
    int const channel = c0 + local_c;
    int const n_chunks = (p.length + kChunk - 1) / kChunk;
    if (kPass == kPassEndState && segment == segments - 1) return;  // nothing follows the last segment
    int const k_begin = kPass == kPassWhole ? 0 : segment * seg.chunks_per_segment;
    int const k_end = kPass == kPassWhole ? n_chunks : min(n_chunks, k_begin + seg.chunks_per_segment);

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
    __syncthreads();

    ChunkRegs<T, kItems> regs;
    float dt_total = 0.0f;  // pass 1: this lane's sum of delta' over the segment
    if (kPass == kPassDiagNoLoad) zero_chunk(regs);
    if (kPrefetch && k_begin < k_end && kPass != kPassDiagNoLoad) load_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, k_begin * kChunk);
#pragma unroll 1
    for (int k = k_begin; k < k_end; ++k) {
        int const t0 = k * kChunk;
        if (!kPrefetch && kPass != kPassDiagNoLoad) load_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, t0);
        store_tile<T, kItems, kCpb, kPlain>(s_u, regs.u, p.u_stride, c0, p.dim, t0, p.length, nullptr, 0);
        store_tile<T, kItems, kCpb, kDelta>(s_dt, regs.dt, p.delta_stride, c0, p.dim, t0, p.length, s_bias, p.delta_softplus);
        if (has_z) store_tile<T, kItems, kCpb, kSilu>(s_z, regs.z, p.z_stride, c0, p.dim, t0, p.length, nullptr, 0);
        store_tile<T, kItems, kCpb, kPlain>(s_b, regs.b, p.B_stride, 0, n_state, t0, p.length, nullptr, 0);
        if (kOutput) store_tile<T, kItems, kCpb, kPlain>(s_c, regs.c, p.C_stride, 0, n_state, t0, p.length, nullptr, 0);
#pragma unroll 1
        for (int part = 1; part < bc_parts; ++part) {  // N > kCpb: the other states of B and C
            int const row0 = part * kCpb;
            if (kPass != kPassDiagNoLoad) load_tile<T, kItems, kCpb>(regs.b, static_cast<T const*>(p.B), p.B_stride, b, row0, n_state, t0, p.length);
            if (kOutput && kPass != kPassDiagNoLoad) load_tile<T, kItems, kCpb>(regs.c, static_cast<T const*>(p.C), p.C_stride, b, row0, n_state, t0, p.length);
            store_tile<T, kItems, kCpb, kPlain>(s_b + row0 * kRow, regs.b, p.B_stride, row0, n_state, t0, p.length, nullptr, 0);
            if (kOutput) store_tile<T, kItems, kCpb, kPlain>(s_c + row0 * kRow, regs.c, p.C_stride, row0, n_state, t0, p.length, nullptr, 0);
        }
        __syncthreads();
        if (kPrefetch && k + 1 < k_end && kPass != kPassDiagNoLoad) load_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, t0 + kChunk);

        float dt[kItems], du[kItems], acc[kItems];
        float dt_sum = 0.0f;
        int const col0 = lane * (kItems + 1);       // column(lane * kItems)
        float const* row_u = s_u + local_c * kRow + col0;
        float const* row_dt = s_dt + local_c * kRow + col0;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            dt[i] = row_dt[i];
            du[i] = dt[i] * row_u[i];
            acc[i] = 0.0f;
            dt_sum += dt[i];
        }
        dt_total += dt_sum;
        float const* carry_in = s_carry + ((k - k_begin) & 1) * kCpb * n_state + local_c * n_state;
        float* carry_out = s_carry + ((k - k_begin + 1) & 1) * kCpb * n_state + local_c * n_state;
        float const* a_row = s_a + local_c * n_state;
        int n = kPass == kPassDiagNoScan ? n_state : 0;
#pragma unroll 1
        for (; n + 2 <= n_state; n += 2) {
            scan_states<kItems, 2, kOutput>(n, dt, du, acc, dt_sum, a_row, s_b, s_c, col0, carry_in, carry_out, lane);
        }
        if (n < n_state) scan_states<kItems, 1, kOutput>(n, dt, du, acc, dt_sum, a_row, s_b, s_c, col0, carry_in, carry_out, lane);

        if (kOutput) {
            float* row_y = s_y + local_c * kRow + col0;
            float const* row_z = s_z + local_c * kRow + col0;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                float v = fmaf(d_skip, row_u[i], acc[i]);
                if (has_z) v *= row_z[i];
                row_y[i] = v;
            }
        }
        __syncthreads();
        if (kOutput) {
            // y (the rows of s_y) with the same coalesced walk as the loads; the next chunk's staging does not touch s_y
            TileWalk<kItems, kCpb> const walk(token_fast(p.y_stride));
            int64_t const s1 = opaque(p.y_stride[1]), s2 = opaque(p.y_stride[2]);
            int const row = c0 + walk.row, tok = t0 + walk.tok;
            T* y_base = static_cast<T*>(p.y) + b * p.y_stride[0] + row * s1 + tok * s2;
            float const* y_tile = s_y + walk.base_slot();
#pragma unroll
            for (int kk = 0; kk < kItems; ++kk) {
                int const dr = walk.row_step(kk), dtk = walk.tok_step(kk);
                if (row + dr < p.dim && tok + dtk < p.length) from_float(y_tile[walk.slot(kk)], y_base + dr * s1 + dtk * s2);
            }
        }
    }
    if (kPass == kPassEndState) {
        // the segment's end state (the last chunk's carry_out, visible after the loop's last barrier) and sum of delta'
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

// Launches one kernel variant: kCpb channels per block (a power of two, 2 .. kMaxChannelsPerBlock), kItems tokens
// per lane, with or without prefetching the next chunk.
template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps, int kPass = kPassWhole>
inline cudaError_t launch_scan_variant(ScanParams const& p, cudaStream_t stream) {
    static_assert(kPass != kPassEndState && kPass != kPassReplay, "split passes go through launch_scan_segmented");
    size_t const smem = scan_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr);
    int device = 0, smem_optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > size_t(smem_optin)) return cudaErrorInvalidValue;  // n_state too large for this GPU's shared memory
    int64_t const blocks = int64_t(p.batch) * ((p.dim + kCpb - 1) / kCpb);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    auto kernel = selective_scan_fwd_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPass>;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    int const n_chunks = (p.length + ChunkShape<kItems>::kChunk - 1) / ChunkShape<kItems>::kChunk;
    kernel<<<unsigned(blocks), kCpb * kLanes, smem, stream>>>(p, SegmentArgs{1, n_chunks, nullptr});
    return cudaGetLastError();
}

using ScanKernel = void (*)(ScanParams, SegmentArgs);

// Launches a kernel family (blocks of `cpb` channels and `threads` threads) with L split into segments (SegmentArgs):
// `whole` (one pass) when S comes out as 1, else `pass1` then `pass2` on `stream`. `segments` = 0 picks as many as fill every resident block slot of the GPU
// (occupancy API) when batch x channel blocks do not, at most one per chunk; n = at most n. `workspace` (device,
// `workspace_bytes`) holds segment_workspace_floats(batch, dim, N, S) floats; too small -> cudaErrorInvalidValue.
inline cudaError_t launch_split(ScanKernel whole, ScanKernel pass1, ScanKernel pass2, ScanParams const& p, int cpb,
    int threads, int chunk, size_t smem, int segments, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    int device = 0, smem_optin = 0, sms = 0, per_sm = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    if (smem > size_t(smem_optin)) return cudaErrorInvalidValue;  // n_state too large for this GPU's shared memory
    for (ScanKernel kernel : {whole, pass1, pass2}) {
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (err != cudaSuccess) return err;
    }
    int64_t const base_blocks = int64_t(p.batch) * ((p.dim + cpb - 1) / cpb);
    int const n_chunks = (p.length + chunk - 1) / chunk;
    if (segments <= 0) {
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pass2, threads, smem);
        if (err != cudaSuccess) return err;
        segments = int(std::max<int64_t>(1, int64_t(sms) * std::max(per_sm, 1) / base_blocks));
    }
    segments = std::min(segments, n_chunks);
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
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    pass2<<<unsigned(blocks), threads, smem, stream>>>(p, args);
    return cudaGetLastError();
}

// launch_split for selective_scan_fwd_kernel's variant (kItems, kCpb, kPrefetch, kMinWarps).
template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps>
inline cudaError_t launch_scan_segmented(ScanParams const& p, int segments, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
    return launch_split(selective_scan_fwd_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassWhole>,
                        selective_scan_fwd_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassEndState>,
                        selective_scan_fwd_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassReplay>, p, kCpb,
                        kCpb * kLanes, ChunkShape<kItems>::kChunk, scan_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr), segments,
                        workspace, workspace_bytes, stream);
}

inline bool valid_params(ScanParams const& p) {
    return p.batch >= 1 && p.dim >= 1 && p.length >= 1 && p.n_state >= 1 && p.u != nullptr && p.delta != nullptr &&
           p.A != nullptr && p.B != nullptr && p.C != nullptr && p.y != nullptr &&
           (p.dtype == kScanFloat32 || p.dtype == kScanFloat16);
}

// ---- The shipped launcher (launch_selective_scan: scan_capi.cu, scan_plugin.cu) and its split policy ----

// POLICY: how many segments launch_selective_scan cuts L into for these shapes, on a GPU of `sms` SMs that holds
// `blocks_per_sm` blocks of the launcher's kernel each (occupancy API). Host-only arithmetic, no device call.
//
// Fill the GPU: S = sms * blocks_per_sm / (batch * ceil(dim / 16)) segments when that is at least kMinSplit, else 1
// (one pass). Measured on the H100 (benchmarks/scan_variants_h100.json, `python3 tools/scan_variants_gpu.py`,
// dim 120, N 16, L 4096, the shipped 8-token / 16-channel / 16-warp kernel): batch 1 (S = 16 after the chunk cap)
// 0.027 ms against 0.222 ms in one pass; batch 8 (S = 4 or 8 by occupancy: 0.156 / 0.161) against 0.224; batch 32
// (S = 1 or 2: one pass) unchanged, 0.369.
// Two segments were slower than one pass at both batch 8 (0.229) and 32 (0.485): the second pass re-reads the inputs,
// so a split pays only when it at least quadruples the blocks. The workspace (selective_scan_workspace_bytes)
// follows from this function; the plugin's getWorkspaceSize takes the largest need over its profile's batch and
// channel ranges at the longest L, so the need must not fall as L grows: S does not depend on L, and
// split_workspace_bytes caps it at one segment per chunk, which only rises with L (tests/test_csrc.py checks both).
constexpr int kMinSplit = 4;

inline int selective_scan_segments(int batch, int dim, int n_state, int length, int sms, int blocks_per_sm) {
    (void)n_state, (void)length;
#ifdef MAMBAESR_TEST_SEGMENTS  // test builds only (tests/test_csrc.py): a forced count through the plugin's workspace
    (void)batch, (void)dim, (void)sms, (void)blocks_per_sm;
    return MAMBAESR_TEST_SEGMENTS;
#else
    int64_t const blocks = int64_t(batch) * ((dim + 15) / 16);
    int64_t const fill = int64_t(sms) * std::max(blocks_per_sm, 1) / std::max<int64_t>(blocks, 1);
    return fill >= kMinSplit ? int(std::min<int64_t>(fill, 1 << 20)) : 1;
#endif
}

// Workspace bytes for L cut into `segments` (0 when 1). Segments are capped at one per 128-token chunk (the shortest
// chunk of any variant), so this bounds what launch_split needs for every variant's chunk length.
inline size_t split_workspace_bytes(int batch, int dim, int n_state, int length, int segments) {
    int const shortest_chunk = kLanes * 8;
    int const capped = std::min(segments, (length + shortest_chunk - 1) / shortest_chunk);
    return capped > 1 ? sizeof(float) * segment_workspace_floats(batch, dim, n_state, capped) : 0;
}

// Workspace bytes launch_selective_scan needs under the policy for these shapes (0 when it does not split).
inline size_t selective_scan_workspace_bytes(int batch, int dim, int n_state, int length, int sms, int blocks_per_sm) {
    return split_workspace_bytes(batch, dim, n_state, length, selective_scan_segments(batch, dim, n_state, length, sms, blocks_per_sm));
}

// One variant of the kernel template as a type, for the launcher's dispatch (no prefetch in any shipped variant).
template <typename T_, int kItems_, int kCpb_, int kMinWarps_>
struct ShippedVariant {
    using T = T_;
    static constexpr int kItems = kItems_, kCpb = kCpb_, kMinWarps = kMinWarps_;
};

// Calls visit(ShippedVariant<...>{}, sms) with the variant the launcher runs for p's shapes and dtype on the current
// device: 8 tokens a lane, 16 channels a block, 16 warps per SM resident, the fastest measured at every batch once
// small batches split L (selective_scan_segments; before the split, 16 tokens a lane won at small batches, where the
// chunks' sequence was the critical path). Smaller blocks only when N's tiles do not fit otherwise.
template <typename Visit>
inline cudaError_t visit_shipped_variant(ScanParams const& p, Visit&& visit) {
    int device = 0, sms = 0, smem_optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    bool const has_z = p.z != nullptr;
    auto pick = [&](auto dtype) -> cudaError_t {
        using T = decltype(dtype);
        if (scan_smem_bytes(16, p.n_state, 8, has_z) <= size_t(smem_optin)) return visit(ShippedVariant<T, 8, 16, 16>{}, sms);
        return visit(ShippedVariant<T, 8, 4, 16>{}, sms);
    };
    return p.dtype == kScanFloat32 ? pick(float{}) : pick(__half{});
}

// The segment count for variant V: `forced` when > 0 (tests), else the policy with V's resident blocks per SM.
template <class V>
inline cudaError_t shipped_segments(V, ScanParams const& p, int sms, int forced, int* segments) {
    if (forced > 0) {
        *segments = forced;
        return cudaSuccess;
    }
    auto kernel = selective_scan_fwd_kernel<typename V::T, V::kItems, V::kCpb, false, V::kMinWarps, kPassReplay>;
    size_t const smem = scan_smem_bytes(V::kCpb, p.n_state, V::kItems, p.z != nullptr);
    int per_sm = 0;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, V::kCpb * kLanes, smem);
    if (err != cudaSuccess) return err;
    *segments = selective_scan_segments(p.batch, p.dim, p.n_state, p.length, sms, per_sm);
    return cudaSuccess;
}

// Workspace bytes launch_selective_scan(p, ..., segments) needs on the current device: p's shapes, dtype and whether
// z is given are read, its data pointers are not. `segments` as launch_selective_scan's.
inline cudaError_t selective_scan_workspace_query(ScanParams const& p, int segments, size_t* bytes) {
    *bytes = 0;
    if (p.batch < 1 || p.dim < 1 || p.length < 1 || p.n_state < 1) return cudaErrorInvalidValue;
    return visit_shipped_variant(p, [&](auto variant, int sms) -> cudaError_t {
        int count = 1;
        cudaError_t const err = shipped_segments(variant, p, sms, segments, &count);
        if (err == cudaSuccess) *bytes = split_workspace_bytes(p.batch, p.dim, p.n_state, p.length, count);
        return err;
    });
}

// Launches the scan on `stream`. `workspace` (device memory, `workspace_bytes`) may be null/0 when
// selective_scan_workspace_query gives 0 (the policy does not split these shapes). `segments`: 0 = the policy (every shipped caller);
// > 0 forces that many (tests of the split path). Returns cudaSuccess, cudaErrorInvalidValue for bad parameters, an
// n_state whose tiles do not fit this GPU's shared memory, or a workspace smaller than the query's bytes; or the
// launch's error.
inline cudaError_t launch_selective_scan(ScanParams const& p, void* workspace, size_t workspace_bytes, cudaStream_t stream,
    int segments = 0) {
    if (!valid_params(p)) return cudaErrorInvalidValue;
    return visit_shipped_variant(p, [&](auto variant, int sms) -> cudaError_t {
        using V = decltype(variant);
        int count = 1;
        cudaError_t const err = shipped_segments(variant, p, sms, segments, &count);
        if (err != cudaSuccess) return err;
        if (count <= 1) return launch_scan_variant<typename V::T, V::kItems, V::kCpb, false, V::kMinWarps>(p, stream);
        size_t const need = split_workspace_bytes(p.batch, p.dim, p.n_state, p.length, count);
        if (need > 0 && (workspace == nullptr || workspace_bytes < need)) return cudaErrorInvalidValue;
        return launch_scan_segmented<typename V::T, V::kItems, V::kCpb, false, V::kMinWarps>(p, count, workspace,
                                                                                              workspace_bytes, stream);
    });
}

}  // namespace mambaesr
