// TensorRT plugin (IPluginV3, TensorRT >= 10.0) running the selective scan kernel of selective_scan.cuh.
//
// Identity (what an ONNX node names to be mapped here; see csrc/README.md):
//   op_type / plugin name  "MambaESRSelectiveScan",  plugin_version "1",  plugin_namespace "mambaesr_edge"
// Fields (all INT32):
//   delta_softplus                  0/1: delta' = softplus(delta + delta_bias)
//   has_D, has_z, has_delta_bias    0/1: which optional inputs follow A, B, C
//   token_major[6]                  for u, delta, z, B, C, y: 0 = the tensor is (batch, K, L), 1 = it is (batch, L, K)
// Inputs, in this order: u, delta, A (dim, N), B, C, [D (dim,)], [z], [delta_bias (dim,)]; output y.
// u, delta, B, C, z, y: linear FLOAT or HALF, all the same; A, D, delta_bias: linear FLOAT.
//
// Loaded without linking libnvinfer: the library exports TensorRT 10's entry points `getCreators` and
// `setLoggerFinder` (trtexec --dynamicPlugins=lib.so, IPluginRegistry::loadLibrary). No state is kept between
// calls beyond the fields: enqueue derives every size and stride from the tensor descriptors it is given.
// Workspace: getWorkspaceSize declares what the launcher's split policy (selective_scan_segments) needs at most over
// the profile (it splits small batches only), enqueue hands TensorRT's workspace to the launcher.
#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "selective_scan.cuh"

namespace mambaesr {
namespace {

using namespace nvinfer1;

char const* const kPluginName = "MambaESRSelectiveScan";
char const* const kPluginVersion = "1";
char const* const kPluginNamespace = "mambaesr_edge";

enum Tensor { kU = 0, kDelta = 1, kZ = 2, kB = 3, kC = 4, kY = 5, kLayoutCount = 6 };

ILoggerFinder* gLoggerFinder = nullptr;

void log_error(std::string const& message) {
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    std::string const text = std::string(kPluginName) + ": " + message;
    if (logger != nullptr) {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    } else {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

struct ScanFields {
    int32_t delta_softplus = 0;
    int32_t has_D = 0;
    int32_t has_z = 0;
    int32_t has_delta_bias = 0;
    int32_t token_major[kLayoutCount] = {0, 0, 0, 0, 0, 0};

    int32_t nb_inputs() const { return 5 + has_D + has_z + has_delta_bias; }
    int32_t index_D() const { return has_D ? 5 : -1; }
    int32_t index_z() const { return has_z ? 5 + has_D : -1; }
    int32_t index_delta_bias() const { return has_delta_bias ? 5 + has_D + has_z : -1; }
    bool is_parameter(int32_t pos) const { return pos == 2 || pos == index_D() || pos == index_delta_bias(); }
};

// The field table, pointing at `fields` (serialisation) or at nothing (the creator's list of names).
std::vector<PluginField> field_table(ScanFields* fields) {
    auto ptr = [fields](int32_t* member) -> void const* { return fields != nullptr ? member : nullptr; };
    ScanFields* f = fields;
    return {
        PluginField("delta_softplus", ptr(f ? &f->delta_softplus : nullptr), PluginFieldType::kINT32, 1),
        PluginField("has_D", ptr(f ? &f->has_D : nullptr), PluginFieldType::kINT32, 1),
        PluginField("has_z", ptr(f ? &f->has_z : nullptr), PluginFieldType::kINT32, 1),
        PluginField("has_delta_bias", ptr(f ? &f->has_delta_bias : nullptr), PluginFieldType::kINT32, 1),
        PluginField("token_major", ptr(f ? f->token_major : nullptr), PluginFieldType::kINT32, kLayoutCount),
    };
}

// Reads fields from a collection; false (and a logged reason) on an unknown name, wrong type/length or value.
bool parse_fields(PluginFieldCollection const* fc, ScanFields& out) {
    if (fc == nullptr) return true;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& field = fc->fields[i];
        std::string const name = field.name != nullptr ? field.name : "";
        int32_t* target = nullptr;
        int32_t length = 1;
        if (name == "delta_softplus") target = &out.delta_softplus;
        else if (name == "has_D") target = &out.has_D;
        else if (name == "has_z") target = &out.has_z;
        else if (name == "has_delta_bias") target = &out.has_delta_bias;
        else if (name == "token_major") {
            target = out.token_major;
            length = kLayoutCount;
        } else {
            log_error("unknown field '" + name + "'");
            return false;
        }
        if (field.type != PluginFieldType::kINT32 || field.length != length || field.data == nullptr) {
            log_error("field '" + name + "' must be INT32 of length " + std::to_string(length));
            return false;
        }
        std::memcpy(target, field.data, sizeof(int32_t) * length);
        for (int32_t k = 0; k < length; ++k) {
            if (target[k] != 0 && target[k] != 1) {
                log_error("field '" + name + "' must hold 0 or 1");
                return false;
            }
        }
    }
    return true;
}

// The scan's shapes (batch, dim, L, N), dtype and z presence from the plugin's inputs (data pointers left null).
ScanParams shape_params(ScanFields const& fields, Dims const& u_dims, Dims const& a_dims, DataType type) {
    ScanParams p{};
    bool const tm_u = fields.token_major[kU] != 0;
    p.batch = int32_t(u_dims.d[0]);
    p.dim = int32_t(tm_u ? u_dims.d[2] : u_dims.d[1]);
    p.length = int32_t(tm_u ? u_dims.d[1] : u_dims.d[2]);
    p.n_state = int32_t(a_dims.d[1]);
    p.dtype = type == DataType::kHALF ? kScanFloat16 : kScanFloat32;
    return p;
}

// Element strides of the contract view (batch, K, L) of a contiguous tensor given as (batch, K, L) or (batch, L, K).
void view_strides(Dims const& dims, bool token_major, int64_t* stride) {
    stride[0] = int64_t(dims.d[1]) * dims.d[2];
    stride[1] = token_major ? 1 : dims.d[2];
    stride[2] = token_major ? dims.d[2] : 1;
}

class ScanPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit ScanPlugin(ScanFields const& fields) : mFields(fields) { refreshFieldTable(); }
    ScanPlugin(ScanPlugin const& other) : mFields(other.mFields) { refreshFieldTable(); }
    ~ScanPlugin() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override { return new (std::nothrow) ScanPlugin(*this); }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override {
        if (nbInputs != mFields.nb_inputs() || nbOutputs != 1) {
            log_error("expected " + std::to_string(mFields.nb_inputs()) + " inputs and 1 output, got " +
                std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
            return -1;
        }
        for (int32_t i = 0; i < nbInputs; ++i) {
            int32_t const rank = in[i].desc.dims.nbDims;
            int32_t const want = i == 2 ? 2 : (mFields.is_parameter(i) ? 1 : 3);
            if (rank != want) {
                log_error("input " + std::to_string(i) + " must have rank " + std::to_string(want));
                return -1;
            }
        }
        (void)out;
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs < 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        (void)shapeInputs;
        (void)nbShapeInputs;
        (void)exprBuilder;
        if (nbInputs != mFields.nb_inputs() || nbOutputs != 1 || inputs[kU].nbDims != 3) return -1;
        outputs[0] = inputs[kU];  // y has u's batch, channels and length; only the order of the last two may differ
        if (mFields.token_major[kY] != mFields.token_major[kU]) {
            outputs[0].d[1] = inputs[kU].d[2];
            outputs[0].d[2] = inputs[kU].d[1];
        }
        return 0;
    }

    // The most workspace any shape of the profile needs: the policy may split small batches only (the need falls as
    // batch grows), so every batch and channel count of the profile is tried at the longest L (the need must not fall
    // as L grows: selective_scan_segments says so). 0 when the query fails (no GPU: logged); enqueue then refuses a split.
    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const* outputs,
        int32_t nbOutputs) const noexcept override {
        (void)outputs;
        if (nbInputs != mFields.nb_inputs() || nbOutputs != 1 || inputs[kU].max.nbDims != 3) return 0;
        ScanParams p = shape_params(mFields, inputs[kU].max, inputs[2].max, inputs[kU].desc.type);
        ScanParams const low = shape_params(mFields, inputs[kU].min, inputs[2].min, inputs[kU].desc.type);
        int32_t const max_batch = p.batch, max_dim = p.dim;
        size_t most = 0;
        for (p.batch = std::max(low.batch, 1); p.batch <= max_batch; ++p.batch) {
            for (p.dim = std::max(low.dim, 1); p.dim <= max_dim; ++p.dim) {
                size_t bytes = 0;
                cudaError_t const err = selective_scan_workspace_query(p, 0, &bytes);
                if (err != cudaSuccess) {
                    log_error(std::string("workspace query failed: ") + cudaGetErrorString(err));
                    return 0;
                }
                most = std::max(most, bytes);
            }
        }
        return most;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override {
        if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR) return false;
        if (pos < nbInputs && mFields.is_parameter(pos)) return desc.type == DataType::kFLOAT;
        if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        return desc.type == inOut[0].desc.type;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override {
        (void)in;
        (void)out;
        return (nbInputs == mFields.nb_inputs() && nbOutputs == 1) ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        bool const tm_u = mFields.token_major[kU] != 0;
        Dims const& u_dims = inputDesc[kU].dims;
        ScanParams p = shape_params(mFields, u_dims, inputDesc[2].dims, inputDesc[kU].type);
        p.delta_softplus = mFields.delta_softplus;
        p.u = inputs[0];
        p.delta = inputs[1];
        p.A = static_cast<float const*>(inputs[2]);
        p.B = inputs[3];
        p.C = inputs[4];
        p.D = mFields.has_D ? static_cast<float const*>(inputs[mFields.index_D()]) : nullptr;
        p.z = mFields.has_z ? inputs[mFields.index_z()] : nullptr;
        p.delta_bias = mFields.has_delta_bias ? static_cast<float const*>(inputs[mFields.index_delta_bias()]) : nullptr;
        p.y = outputs[0];
        view_strides(u_dims, tm_u, p.u_stride);
        view_strides(inputDesc[1].dims, mFields.token_major[kDelta] != 0, p.delta_stride);
        view_strides(inputDesc[3].dims, mFields.token_major[kB] != 0, p.B_stride);
        view_strides(inputDesc[4].dims, mFields.token_major[kC] != 0, p.C_stride);
        if (mFields.has_z) view_strides(inputDesc[mFields.index_z()].dims, mFields.token_major[kZ] != 0, p.z_stride);
        view_strides(outputDesc[0].dims, mFields.token_major[kY] != 0, p.y_stride);
        p.A_stride[0] = p.n_state;
        p.A_stride[1] = 1;
        // TensorRT's workspace holds getWorkspaceSize's bytes, the most over the profile: at least this shape's need
        size_t need = 0;
        cudaError_t err = selective_scan_workspace_query(p, 0, &need);
        if (err == cudaSuccess && need > 0 && workspace == nullptr) {
            log_error("the scan needs " + std::to_string(need) + " bytes of workspace and TensorRT gave none");
            return -1;
        }
        if (err == cudaSuccess) err = launch_selective_scan(p, workspace, need, stream);
        if (err != cudaSuccess) {
            log_error(std::string("kernel launch failed: ") + cudaGetErrorString(err));
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override {
        (void)context;
        return clone();
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mCollection; }

private:
    void refreshFieldTable() {
        mTable = field_table(&mFields);
        mCollection.nbFields = int32_t(mTable.size());
        mCollection.fields = mTable.data();
    }

    ScanFields mFields;
    std::vector<PluginField> mTable;
    PluginFieldCollection mCollection{};
};

class ScanPluginCreator : public IPluginCreatorV3One {
public:
    ScanPluginCreator() : mTable(field_table(nullptr)) {
        mCollection.nbFields = int32_t(mTable.size());
        mCollection.fields = mTable.data();
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override {
        (void)name;
        (void)phase;
        ScanFields fields;
        if (!parse_fields(fc, fields)) return nullptr;
        return new (std::nothrow) ScanPlugin(fields);
    }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<PluginField> mTable;
    PluginFieldCollection mCollection{};
};

}  // namespace
}  // namespace mambaesr

extern "C" {

// TensorRT 10's library entry points (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    mambaesr::gLoggerFinder = finder;
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static mambaesr::ScanPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

}  // extern "C"
