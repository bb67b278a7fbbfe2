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
// Work split. A block takes `cpb` channels (two per warp: one per half-warp of kLanes lanes) of one batch row
// and walks L in chunks of kChunk = kLanes * kItems tokens, carrying the state of each (channel, state) pair from
// chunk to chunk. Per chunk: the block stages its channels' u, delta' (bias + softplus applied once, here), silu(z)
// and the chunk's B and C in shared memory with coalesced loads whatever the strides; lane j of a half-warp owns
// tokens j*kItems .. j*kItems+kItems-1 of one channel; for each state n it (1) folds its kItems steps into one
// affine step (decay product P, state-from-zero H), (2) scans those 16 steps across the half-warp with shuffles
// (log2(16) = 4 rounds), (3) replays its kItems steps from the incoming state, accumulating y += C h in registers.
// So the state never leaves registers except once per chunk (the carry), and every input is read from device
// memory once and y written once: the minimal bytes.
//
// Shared-memory layout: token t = j*kItems + i of a chunk sits at column t + t / kItems (= 17 j + i), so the 16 lanes
// of a half-warp reading item i hit 16 different banks; channel rows are kRowC = 272 (= 16 mod 32) floats apart so
// the two half-warps of a warp do not collide either; B/C rows are kRowBC = 273 floats apart (odd), so the
// staging stores of token-major B/C spread over the banks.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace mambaesr {

constexpr int kLanes = 16;                          // lanes per channel (a half-warp)
constexpr int kItems = 16;                          // consecutive tokens per lane
constexpr int kChunk = kLanes * kItems;             // tokens per chunk: 256
constexpr int kRowC = kChunk + kChunk / kItems;     // 272 floats per channel row in shared memory
constexpr int kRowBC = kRowC + 1;                   // 273 floats per state row of B and C
constexpr int kMaxChannelsPerBlock = 16;            // 8 warps

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

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ void from_float(float x, float* out) { *out = x; }
__device__ __forceinline__ void from_float(float x, __half* out) { *out = __float2half_rn(x); }

__device__ __forceinline__ float fast_exp2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), as scan.stable_softplus (never exponentiates a positive number)
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

__device__ __forceinline__ int column(int t) { return t + t / kItems; }

enum TileOp { kPlain = 0, kDelta = 1, kSilu = 2 };

// Stages rows [row0, row0 + rows) x tokens [t0, t0 + kChunk) of a (batch, K, L) tensor into shared memory
// (row r at dst + r * row_stride, token t at column(t)); zeros outside the tensor. Consecutive threads walk the
// tensor's contiguous dimension, so the loads are coalesced for either layout; each thread issues kInFlight loads
// before it uses any (a loop that stored each value before the next load would wait a full memory latency per element).
constexpr int kInFlight = 8;

template <typename T, int Op>
__device__ __forceinline__ void stage_tile(float* dst, int row_stride, T const* src, int64_t const* stride, int b,
    int row0, int rows, int rows_total, int t0, int length, float const* bias, int softplus_on) {
    int const n = rows * kChunk;
    bool const token_fast = stride[2] == 1 || stride[1] != 1;
    T const* base = src + b * stride[0];
    for (int first = threadIdx.x; first < n; first += kInFlight * blockDim.x) {
        float v[kInFlight];
        int slot[kInFlight], row_of[kInFlight];
#pragma unroll
        for (int k = 0; k < kInFlight; ++k) {
            int const idx = first + k * blockDim.x;
            int r = 0, t = 0;
            if (token_fast) {
                r = idx / kChunk;
                t = idx - r * kChunk;
            } else {
                t = idx / rows;
                r = idx - t * rows;
            }
            int const row = row0 + r, tok = t0 + t;
            slot[k] = idx < n ? r * row_stride + column(t) : -1;
            row_of[k] = row;
            v[k] = (idx < n && row < rows_total && tok < length) ? to_float(base[row * stride[1] + tok * stride[2]]) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < kInFlight; ++k) {
            if (slot[k] < 0) continue;
            float x = v[k];
            if (Op == kDelta) {  // positions past the tensor stay 0 (they are never stored) but may pass through here
                if (bias != nullptr && row_of[k] < rows_total) x += bias[row_of[k]];
                if (softplus_on) x = softplus(x);
            } else if (Op == kSilu) {
                x = x / (1.0f + expf(-x));
            }
            dst[slot[k]] = x;
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(kMaxChannelsPerBlock * kLanes) selective_scan_fwd_kernel(ScanParams p, int cpb) {
    extern __shared__ float smem[];
    int const n_state = p.n_state;
    float* s_u = smem;                              // (cpb, kRowC): u, then y
    float* s_dt = s_u + cpb * kRowC;                // (cpb, kRowC): delta'
    float* s_z = s_dt + cpb * kRowC;                // (cpb, kRowC): silu(z)
    float* s_b = s_z + cpb * kRowC;                 // (N, kRowBC)
    float* s_c = s_b + n_state * kRowBC;            // (N, kRowBC)
    float* s_a = s_c + n_state * kRowBC;            // (cpb, N): A * log2(e)
    float* s_carry = s_a + cpb * n_state;           // (2, cpb, N): state entering the chunk, double-buffered

    int const n_cblocks = (p.dim + cpb - 1) / cpb;
    int const b = blockIdx.x / n_cblocks;
    int const c0 = (blockIdx.x - b * n_cblocks) * cpb;
    int const local_c = threadIdx.x / kLanes;       // this half-warp's channel within the block
    int const lane = threadIdx.x % kLanes;          // j: owns tokens lane*kItems .. + kItems - 1 of each chunk
    int const channel = c0 + local_c;
    bool const channel_ok = channel < p.dim;

    for (int idx = threadIdx.x; idx < cpb * n_state; idx += blockDim.x) {
        int const c = idx / n_state, n = idx - c * n_state;
        s_a[idx] = (c0 + c < p.dim) ? p.A[(c0 + c) * p.A_stride[0] + n * p.A_stride[1]] * 1.4426950408889634f : 0.0f;
        s_carry[idx] = 0.0f;
    }
    float const d_skip = (p.D != nullptr && channel_ok) ? p.D[channel] : 0.0f;
    T const* u = static_cast<T const*>(p.u);
    T const* delta = static_cast<T const*>(p.delta);
    T const* Bm = static_cast<T const*>(p.B);
    T const* Cm = static_cast<T const*>(p.C);
    T const* z = static_cast<T const*>(p.z);
    T* y = static_cast<T*>(p.y);
    int const rows = min(cpb, p.dim - c0);
    int const n_chunks = (p.length + kChunk - 1) / kChunk;

    for (int k = 0; k < n_chunks; ++k) {
        int const t0 = k * kChunk;
        stage_tile<T, kPlain>(s_u, kRowC, u, p.u_stride, b, c0, rows, p.dim, t0, p.length, nullptr, 0);
        stage_tile<T, kDelta>(s_dt, kRowC, delta, p.delta_stride, b, c0, rows, p.dim, t0, p.length, p.delta_bias,
            p.delta_softplus);
        if (z != nullptr) stage_tile<T, kSilu>(s_z, kRowC, z, p.z_stride, b, c0, rows, p.dim, t0, p.length, nullptr, 0);
        stage_tile<T, kPlain>(s_b, kRowBC, Bm, p.B_stride, b, 0, n_state, n_state, t0, p.length, nullptr, 0);
        stage_tile<T, kPlain>(s_c, kRowBC, Cm, p.C_stride, b, 0, n_state, n_state, t0, p.length, nullptr, 0);
        __syncthreads();

        float dt[kItems], du[kItems], acc[kItems];
        int const col0 = lane * (kItems + 1);       // column(lane * kItems)
        float const* row_u = s_u + local_c * kRowC + col0;
        float const* row_dt = s_dt + local_c * kRowC + col0;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            dt[i] = row_dt[i];
            du[i] = dt[i] * row_u[i];
            acc[i] = 0.0f;
        }
        float const* carry_in = s_carry + (k & 1) * cpb * n_state + local_c * n_state;
        float* carry_out = s_carry + ((k + 1) & 1) * cpb * n_state + local_c * n_state;
        float const* a_row = s_a + local_c * n_state;

#pragma unroll 1
        for (int n = 0; n < n_state; ++n) {
            float const a = a_row[n];
            float const* b_row = s_b + n * kRowBC + col0;
            float const* c_row = s_c + n * kRowBC + col0;
            float decay[kItems], drive[kItems];
            float prod = 1.0f, h_local = 0.0f;  // this lane's kItems steps as one: h -> prod * h + h_local
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                decay[i] = fast_exp2(dt[i] * a);
                drive[i] = du[i] * b_row[i];
                h_local = fmaf(decay[i], h_local, drive[i]);
                prod *= decay[i];
            }
            // inclusive scan of the lanes' steps across the half-warp (earlier lanes first)
#pragma unroll
            for (int offset = 1; offset < kLanes; offset *= 2) {
                float const prod_up = __shfl_up_sync(0xffffffffu, prod, offset, kLanes);
                float const h_up = __shfl_up_sync(0xffffffffu, h_local, offset, kLanes);
                if (lane >= offset) {
                    h_local = fmaf(prod, h_up, h_local);
                    prod *= prod_up;
                }
            }
            float prod_before = __shfl_up_sync(0xffffffffu, prod, 1, kLanes);
            float h_before = __shfl_up_sync(0xffffffffu, h_local, 1, kLanes);
            if (lane == 0) {
                prod_before = 1.0f;
                h_before = 0.0f;
            }
            float h = fmaf(prod_before, carry_in[n], h_before);  // the state entering this lane's first token
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                h = fmaf(decay[i], h, drive[i]);
                acc[i] = fmaf(h, c_row[i], acc[i]);
            }
            if (lane == kLanes - 1) carry_out[n] = h;  // the state at the chunk's last token
        }

        float* row_y = s_u + local_c * kRowC + col0;
        float const* row_z = s_z + local_c * kRowC + col0;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            float v = fmaf(d_skip, row_y[i], acc[i]);
            if (z != nullptr) v *= row_z[i];
            row_y[i] = v;
        }
        __syncthreads();
        // store y (rows of s_u) with the same coalesced walk as the loads
        int const n_out = rows * kChunk;
        bool const token_fast = p.y_stride[2] == 1 || p.y_stride[1] != 1;
        T* y_base = y + b * p.y_stride[0];
        for (int idx = threadIdx.x; idx < n_out; idx += blockDim.x) {
            int r, t;
            if (token_fast) {
                r = idx / kChunk;
                t = idx - r * kChunk;
            } else {
                t = idx / rows;
                r = idx - t * rows;
            }
            int const tok = t0 + t;
            if (tok < p.length) from_float(s_u[r * kRowC + column(t)], y_base + (c0 + r) * p.y_stride[1] + tok * p.y_stride[2]);
        }
        __syncthreads();
    }
    (void)channel_ok;
}

// Shared memory (bytes) of one block of `cpb` channels.
inline size_t scan_smem_bytes(int cpb, int n_state) {
    return sizeof(float) * (size_t(3) * cpb * kRowC + size_t(2) * n_state * kRowBC + size_t(3) * cpb * n_state);
}

// Launches the scan on `stream`. Returns cudaSuccess, cudaErrorInvalidValue for bad parameters (or an n_state whose
// tiles do not fit this GPU's shared memory), or the launch's error.
inline cudaError_t launch_selective_scan(ScanParams const& p, cudaStream_t stream) {
    if (p.batch < 1 || p.dim < 1 || p.length < 1 || p.n_state < 1 || p.u == nullptr || p.delta == nullptr ||
        p.A == nullptr || p.B == nullptr || p.C == nullptr || p.y == nullptr ||
        (p.dtype != kScanFloat32 && p.dtype != kScanFloat16)) {
        return cudaErrorInvalidValue;
    }
    int device = 0, sms = 0, smem_optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    // Channels per block: the choice that needs the fewest waves of resident blocks; among equals the most channels
    // (fewer B/C stagings per channel, less staging per thread).
    int cpb = 0;
    int64_t best_waves = 0;
    for (int c = kMaxChannelsPerBlock; c >= 2; c /= 2) {
        size_t const bytes = scan_smem_bytes(c, p.n_state);
        if (bytes > size_t(smem_optin)) continue;
        int per_sm = 0;
        void const* fn = p.dtype == kScanFloat32 ? (void const*)selective_scan_fwd_kernel<float>
                                                 : (void const*)selective_scan_fwd_kernel<__half>;
        err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, c * kLanes, bytes);
        if (err != cudaSuccess) return err;
        if (per_sm < 1) continue;
        int64_t const n_blocks = int64_t(p.batch) * ((p.dim + c - 1) / c);
        int64_t const waves = (n_blocks + int64_t(per_sm) * sms - 1) / (int64_t(per_sm) * sms);
        if (cpb == 0 || waves < best_waves) {
            cpb = c;
            best_waves = waves;
        }
    }
    if (cpb == 0) return cudaErrorInvalidValue;  // n_state too large for this GPU's shared memory
    size_t const smem = scan_smem_bytes(cpb, p.n_state);
    if (smem > size_t(smem_optin)) return cudaErrorInvalidValue;
    int64_t const blocks = int64_t(p.batch) * ((p.dim + cpb - 1) / cpb);
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    if (p.dtype == kScanFloat32) {
        err = cudaFuncSetAttribute(selective_scan_fwd_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (err != cudaSuccess) return err;
        selective_scan_fwd_kernel<float><<<unsigned(blocks), cpb * kLanes, smem, stream>>>(p, cpb);
    } else {
        err = cudaFuncSetAttribute(selective_scan_fwd_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (err != cudaSuccess) return err;
        selective_scan_fwd_kernel<__half><<<unsigned(blocks), cpb * kLanes, smem, stream>>>(p, cpb);
    }
    return cudaGetLastError();
}

}  // namespace mambaesr
