// C entry point of the selective scan kernel, for ctypes (scan_cuda.py) and test programs: no torch, no TensorRT.
#include "selective_scan.cuh"

extern "C" {

// Bumped whenever ScanParams or an entry point's signature changes; scan_cuda.py checks it before the first call.
int32_t mambaesr_scan_abi_version() { return 3; }

// The largest N (state size) the launcher takes (kMaxStates); larger N is refused with cudaErrorInvalidValue.
int32_t mambaesr_scan_max_states() { return mambaesr::kMaxStates; }

// Bytes of device workspace mambaesr_selective_scan_fwd needs for params' shapes on the current device (its data
// pointers are not read), written to *bytes; 0 when the policy does not split L. `segments` as there. Returns a cudaError_t value.
int32_t mambaesr_scan_workspace_bytes(mambaesr::ScanParams const* params, int32_t segments, uint64_t* bytes) {
    if (params == nullptr || bytes == nullptr) return int32_t(cudaErrorInvalidValue);
    size_t need = 0;
    cudaError_t const err = mambaesr::selective_scan_workspace_query(*params, segments, &need);
    *bytes = need;
    return int32_t(err);
}

// The policy's workspace bytes for these shapes on a GPU of `sms` SMs holding `blocks_per_sm` of the launcher's
// blocks each: host arithmetic only, so CPU tests can read the policy (selective_scan_workspace_bytes).
int64_t mambaesr_scan_policy_workspace_bytes(int32_t batch, int32_t dim, int32_t n_state, int32_t length, int32_t sms,
    int32_t blocks_per_sm) {
    return int64_t(mambaesr::selective_scan_workspace_bytes(batch, dim, n_state, length, sms, blocks_per_sm));
}

// Workspace bytes for L cut into `segments` (split_workspace_bytes): what a forced segment count needs.
int64_t mambaesr_scan_split_workspace_bytes(int32_t batch, int32_t dim, int32_t n_state, int32_t length, int32_t segments) {
    return int64_t(mambaesr::split_workspace_bytes(batch, dim, n_state, length, segments));
}

// Runs the scan on `stream` (a cudaStream_t; null = the legacy default stream). `workspace` (device, `workspace_bytes`)
// as mambaesr_scan_workspace_bytes says (null/0 when that is 0). `segments`: 0 = the launcher's policy; > 0 forces
// that many segments (tests of the split path). Returns a cudaError_t value (0: launched).
int32_t mambaesr_selective_scan_fwd(mambaesr::ScanParams const* params, void* stream, int32_t segments, void* workspace,
    uint64_t workspace_bytes) {
    if (params == nullptr) return int32_t(cudaErrorInvalidValue);
    return int32_t(mambaesr::launch_selective_scan(*params, workspace, size_t(workspace_bytes),
                                                   static_cast<cudaStream_t>(stream), segments));
}

// The name of a cudaError_t value, for error messages.
char const* mambaesr_cuda_error_string(int32_t code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
