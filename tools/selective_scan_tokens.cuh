// The token-parallel selective scan kernel: csrc/selective_scan.cuh's kernel before the lane-per-state one replaced
// it (2026-12-07), kept out of the package for measurement (tools/scan_variants.cu times it against the shipped
// kernel in one process; tools/selective_scan_async.cuh and selective_scan_pair.cuh build on it). Not package data.
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

#include "../mambaesr_edge/csrc/selective_scan.cuh"

namespace mambaesr {

// prepare_split, then launch_segments; `segments` = 0 picks as many as fill every resident block slot of the GPU
// (occupancy API) when batch x channel blocks do not. For the measuring tools (every kernel family of
// tools/scan_variants.cu, the shipped template at other shapes included); the shipped launcher caches what this asks
// the driver (csrc/selective_scan.cuh, shipped_device).
inline cudaError_t launch_split(ScanKernel whole, ScanKernel pass1, ScanKernel pass2, ScanParams const& p, int cpb,
    int threads, int chunk, size_t smem, int segments, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    cudaError_t err = prepare_split(whole, pass1, pass2, smem);
    if (err != cudaSuccess) return err;
    if (segments <= 0) {
        int device = 0, sms = 0, per_sm = 0;
        err = cudaGetDevice(&device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pass2, threads, smem);
        if (err != cudaSuccess) return err;
        int64_t const base_blocks = int64_t(p.batch) * ((p.dim + cpb - 1) / cpb);
        segments = int(std::max<int64_t>(1, int64_t(sms) * std::max(per_sm, 1) / base_blocks));
    }
    return launch_segments(whole, pass1, pass2, p, cpb, threads, chunk, smem, segments, workspace, workspace_bytes, stream);
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

// The walk of a kCpb x kChunk tile by the block's kThreads threads (kCpb * kLanes, or half that when a half-warp
// takes two channels): element k (0 .. kElems-1) of this thread is row base_row + row_step(k), token base_tok +
// tok_step(k), with the steps compile-time constants, so one address and one shared-memory slot per thread and
// tensor serve all k. Token-fast walks give consecutive threads consecutive tokens; channel-fast walks keep one row
// per thread and give consecutive threads consecutive rows.
template <int kItems, int kCpb, int kThreadCount = kCpb * kLanes>
struct TokenTileWalk {
    static constexpr int kChunk = kLanes * kItems;
    static constexpr int kThreads = kThreadCount;
    static constexpr int kElems = kCpb * kChunk / kThreads;  // elements of the tile per thread (kItems: one channel a half-warp)
    static_assert(kLanes % kItems == 0 && (kCpb & (kCpb - 1)) == 0, "kItems divides 16; kCpb a power of two");
    static_assert((kThreads / kCpb) % kItems == 0 && kThreads % kItems == 0, "token steps keep column() a constant shift");
    int row, tok;   // this thread's first element
    bool tok_fast;

    __device__ __forceinline__ explicit TokenTileWalk(bool token_fast_walk) : tok_fast(token_fast_walk) {
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
// the tensor. Raw values: nothing uses them until store_token_tile, so the loads stay in flight meanwhile.
template <typename T, int kItems, int kCpb, int kThreads = kCpb * kLanes>
__device__ __forceinline__ void load_token_tile(T (&v)[TokenTileWalk<kItems, kCpb, kThreads>::kElems], T const* src,
    int64_t const* stride, int b, int row0, int rows_total, int t0, int length) {
    TokenTileWalk<kItems, kCpb, kThreads> const walk(token_fast(stride));
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

// Writes what load_token_tile loaded into a shared-memory tile (row r at dst + r * kRow), transformed by Op. delta' is 0
// outside the tensor (so padded tokens leave the state unchanged); bias holds the block's delta_bias (or zeros).
template <typename T, int kItems, int kCpb, int Op, int kThreads = kCpb * kLanes>
__device__ __forceinline__ void store_token_tile(float* dst, T const (&v)[TokenTileWalk<kItems, kCpb, kThreads>::kElems],
    int64_t const* stride, int row0, int rows_total, int t0, int length, float const* bias, int softplus_on) {
    TokenTileWalk<kItems, kCpb, kThreads> const walk(token_fast(stride));
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
struct TokenChunkRegs {
    T u[kItems], dt[kItems], z[kItems], b[kItems], c[kItems];
};

// Zeros in place of load_token_chunk (kPassDiagNoLoad).
template <typename T, int kItems>
__device__ __forceinline__ void zero_token_chunk(TokenChunkRegs<T, kItems>& regs) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) regs.u[k] = regs.dt[k] = regs.z[k] = regs.b[k] = regs.c[k] = T(0.0f);
}

// kOutput false (pass 1 of a split L): z and C are not needed.
template <typename T, int kItems, int kCpb, bool kOutput = true>
__device__ __forceinline__ void load_token_chunk(TokenChunkRegs<T, kItems>& regs, ScanParams const& p, int b, int c0, int t0) {
    load_token_tile<T, kItems, kCpb>(regs.u, static_cast<T const*>(p.u), p.u_stride, b, c0, p.dim, t0, p.length);
    load_token_tile<T, kItems, kCpb>(regs.dt, static_cast<T const*>(p.delta), p.delta_stride, b, c0, p.dim, t0, p.length);
    if (kOutput && p.z != nullptr) load_token_tile<T, kItems, kCpb>(regs.z, static_cast<T const*>(p.z), p.z_stride, b, c0, p.dim, t0, p.length);
    load_token_tile<T, kItems, kCpb>(regs.b, static_cast<T const*>(p.B), p.B_stride, b, 0, p.n_state, t0, p.length);
    if (kOutput) load_token_tile<T, kItems, kCpb>(regs.c, static_cast<T const*>(p.C), p.C_stride, b, 0, p.n_state, t0, p.length);
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
inline size_t token_scan_smem_bytes(int cpb, int n_state, int items, bool has_z) {
    size_t const row = size_t(kLanes) * items + kLanes + 1;
    size_t const bc_rows = size_t((n_state + cpb - 1) / cpb) * cpb;
    return sizeof(float) * ((3 + (has_z ? 1 : 0)) * cpb * row + 2 * bc_rows * row + size_t(3) * cpb * n_state + cpb);
}

template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps, int kPass = kPassWhole>
__global__ void __launch_bounds__(kCpb * kLanes, kMinWarps * 32 / (kCpb * kLanes))
token_scan_kernel(ScanParams p, SegmentArgs seg) {
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

    TokenChunkRegs<T, kItems> regs;
    float dt_total = 0.0f;  // pass 1: this lane's sum of delta' over the segment
    if (kPass == kPassDiagNoLoad) zero_token_chunk(regs);
    if (kPrefetch && k_begin < k_end && kPass != kPassDiagNoLoad) load_token_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, k_begin * kChunk);
#pragma unroll 1
    for (int k = k_begin; k < k_end; ++k) {
        int const t0 = k * kChunk;
        if (!kPrefetch && kPass != kPassDiagNoLoad) load_token_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, t0);
        store_token_tile<T, kItems, kCpb, kPlain>(s_u, regs.u, p.u_stride, c0, p.dim, t0, p.length, nullptr, 0);
        store_token_tile<T, kItems, kCpb, kDelta>(s_dt, regs.dt, p.delta_stride, c0, p.dim, t0, p.length, s_bias, p.delta_softplus);
        if (has_z) store_token_tile<T, kItems, kCpb, kSilu>(s_z, regs.z, p.z_stride, c0, p.dim, t0, p.length, nullptr, 0);
        store_token_tile<T, kItems, kCpb, kPlain>(s_b, regs.b, p.B_stride, 0, n_state, t0, p.length, nullptr, 0);
        if (kOutput) store_token_tile<T, kItems, kCpb, kPlain>(s_c, regs.c, p.C_stride, 0, n_state, t0, p.length, nullptr, 0);
#pragma unroll 1
        for (int part = 1; part < bc_parts; ++part) {  // N > kCpb: the other states of B and C
            int const row0 = part * kCpb;
            if (kPass != kPassDiagNoLoad) load_token_tile<T, kItems, kCpb>(regs.b, static_cast<T const*>(p.B), p.B_stride, b, row0, n_state, t0, p.length);
            if (kOutput && kPass != kPassDiagNoLoad) load_token_tile<T, kItems, kCpb>(regs.c, static_cast<T const*>(p.C), p.C_stride, b, row0, n_state, t0, p.length);
            store_token_tile<T, kItems, kCpb, kPlain>(s_b + row0 * kRow, regs.b, p.B_stride, row0, n_state, t0, p.length, nullptr, 0);
            if (kOutput) store_token_tile<T, kItems, kCpb, kPlain>(s_c + row0 * kRow, regs.c, p.C_stride, row0, n_state, t0, p.length, nullptr, 0);
        }
        __syncthreads();
        if (kPrefetch && k + 1 < k_end && kPass != kPassDiagNoLoad) load_token_chunk<T, kItems, kCpb, kOutput>(regs, p, b, c0, t0 + kChunk);

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
            TokenTileWalk<kItems, kCpb> const walk(token_fast(p.y_stride));
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
inline cudaError_t launch_token_scan(ScanParams const& p, cudaStream_t stream) {
    static_assert(kPass != kPassEndState && kPass != kPassReplay, "split passes go through launch_token_scan_segmented");
    size_t const smem = token_scan_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr);
    int device = 0, smem_optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > size_t(smem_optin)) return cudaErrorInvalidValue;  // n_state too large for this GPU's shared memory
    int64_t const blocks = int64_t(p.batch) * ((p.dim + kCpb - 1) / kCpb);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    auto kernel = token_scan_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPass>;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    int const n_chunks = (p.length + ChunkShape<kItems>::kChunk - 1) / ChunkShape<kItems>::kChunk;
    kernel<<<unsigned(blocks), kCpb * kLanes, smem, stream>>>(p, SegmentArgs{1, n_chunks, nullptr});
    return cudaGetLastError();
}

// launch_split for token_scan_kernel's variant (kItems, kCpb, kPrefetch, kMinWarps).
template <typename T, int kItems, int kCpb, bool kPrefetch, int kMinWarps>
inline cudaError_t launch_token_scan_segmented(ScanParams const& p, int segments, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
    return launch_split(token_scan_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassWhole>,
                        token_scan_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassEndState>,
                        token_scan_kernel<T, kItems, kCpb, kPrefetch, kMinWarps, kPassReplay>, p, kCpb,
                        kCpb * kLanes, ChunkShape<kItems>::kChunk, token_scan_smem_bytes(kCpb, p.n_state, kItems, p.z != nullptr), segments,
                        workspace, workspace_bytes, stream);
}

}  // namespace mambaesr
