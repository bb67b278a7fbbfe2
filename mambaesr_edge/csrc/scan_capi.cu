// C entry point of the selective scan kernel, for ctypes (scan_cuda.py) and test programs: no torch, no TensorRT.
#include "selective_scan.cuh"

extern "C" {

// Bumped whenever ScanParams changes; scan_cuda.py checks it before the first call.
int32_t mambaesr_scan_abi_version() { return 1; }

// Runs the scan on `stream` (a cudaStream_t; null = the legacy default stream). Returns a cudaError_t value (0: launched).
int32_t mambaesr_selective_scan_fwd(mambaesr::ScanParams const* params, void* stream) {
    if (params == nullptr) return int32_t(cudaErrorInvalidValue);
    return int32_t(mambaesr::launch_selective_scan(*params, static_cast<cudaStream_t>(stream)));
}

// The name of a cudaError_t value, for error messages.
char const* mambaesr_cuda_error_string(int32_t code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
