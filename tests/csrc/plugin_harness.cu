// Test harness for the TensorRT scan plugin, without TensorRT: it loads the plugin library with dlopen, takes the
// creator from `getCreators`, and drives the plugin through its own interface the way TensorRT would.
//
//   plugin_harness LIB info              creator identity and field names
//   plugin_harness LIB check             fields, serialisation round trip, output shapes, format combinations (no GPU)
//   plugin_harness LIB run SPEC          + getWorkspaceSize and enqueue on device buffers (GPU): SPEC names the fields,
//                                        tensors and files; prints "ok workspace BYTES" then "ok run"
//
// SPEC (text, one item per line):
//   fields DELTA_SOFTPLUS HAS_D HAS_Z HAS_DELTA_BIAS TM_U TM_DELTA TM_Z TM_B TM_C TM_Y
//   dtype 0|1                             (0 fp32, 1 fp16: u, delta, B, C, z, y)
//   input RANK D0 [D1 [D2]] PATH          (in the plugin's input order; A, D, delta_bias are fp32)
//   output D0 D1 D2 PATH
// Prints "ok ..." lines; any failure prints "FAIL ..." and exits 1. Compiled by tests/test_csrc.py with nvcc.
#include <NvInferRuntime.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

#define REQUIRE(cond, msg)                                  \
    do {                                                    \
        if (!(cond)) {                                      \
            std::printf("FAIL %s (%s)\n", msg, #cond);      \
            std::exit(1);                                   \
        }                                                   \
    } while (0)

// --- a stub IExprBuilder: TensorRT 10's IDimensionExpr / IExprBuilder forward to apiv::V* implementations ---
class ConstImpl : public apiv::VDimensionExpr {
public:
    explicit ConstImpl(int64_t v) : value(v) {}
    bool isConstant() const override { return true; }
    int64_t getConstantValue() const override { return value; }
    bool isSizeTensor() const override { return false; }
    int64_t value;
};

class StubExpr : public IDimensionExpr {
public:
    explicit StubExpr(int64_t v) : impl(v) { mImpl = &impl; }
    ~StubExpr() noexcept override = default;
    ConstImpl impl;
};

class StubBuilderImpl : public apiv::VExprBuilder {
public:
    IDimensionExpr const* constant(int64_t value) override {
        exprs.emplace_back(new StubExpr(value));
        return exprs.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
        int64_t const x = a.getConstantValue(), y = b.getConstantValue();
        switch (op) {
        case DimensionOperation::kSUM: return constant(x + y);
        case DimensionOperation::kPROD: return constant(x * y);
        case DimensionOperation::kMAX: return constant(x > y ? x : y);
        case DimensionOperation::kMIN: return constant(x < y ? x : y);
        case DimensionOperation::kSUB: return constant(x - y);
        case DimensionOperation::kEQUAL: return constant(x == y);
        case DimensionOperation::kLESS: return constant(x < y);
        case DimensionOperation::kFLOOR_DIV: return constant(x / y);
        case DimensionOperation::kCEIL_DIV: return constant((x + y - 1) / y);
        }
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
        return nullptr;
    }
    std::vector<std::unique_ptr<StubExpr>> exprs;
};

class StubBuilder : public IExprBuilder {
public:
    StubBuilder() { mImpl = &impl; }
    ~StubBuilder() noexcept override = default;
    StubBuilderImpl impl;
};

// --- helpers ---
struct Fields {
    int32_t softplus = 0, has_D = 0, has_z = 0, has_bias = 0;
    int32_t tm[6] = {0, 0, 0, 0, 0, 0};
    std::vector<PluginField> table() {
        return {PluginField("delta_softplus", &softplus, PluginFieldType::kINT32, 1),
            PluginField("has_D", &has_D, PluginFieldType::kINT32, 1),
            PluginField("has_z", &has_z, PluginFieldType::kINT32, 1),
            PluginField("has_delta_bias", &has_bias, PluginFieldType::kINT32, 1),
            PluginField("token_major", tm, PluginFieldType::kINT32, 6)};
    }
};

IPluginCreatorV3One* load_creator(char const* lib) {
    void* handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    REQUIRE(handle != nullptr, dlerror());
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
    REQUIRE(get_creators != nullptr, "getCreators is exported");
    REQUIRE(set_logger_finder != nullptr, "setLoggerFinder is exported");
    set_logger_finder(nullptr);  // no finder: the plugin logs to stderr
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = get_creators(n);
    REQUIRE(n == 1 && creators != nullptr && creators[0] != nullptr, "one creator");
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    REQUIRE(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, "the creator is an IPluginCreatorV3One");
    return static_cast<IPluginCreatorV3One*>(creators[0]);
}

IPluginV3* create(IPluginCreatorV3One* creator, std::vector<PluginField> const& fields, TensorRTPhase phase) {
    PluginFieldCollection fc{int32_t(fields.size()), fields.data()};
    return creator->createPlugin("scan", &fc, phase);
}

// The serialised fields as bytes (name, type, length, data), to compare two plugins.
std::string serialised(IPluginV3* plugin) {
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    std::string out;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        REQUIRE(f.type == PluginFieldType::kINT32, "serialised fields are INT32");
        out += std::string(f.name) + ":" + std::to_string(f.length) + ":";
        out.append(static_cast<char const*>(f.data), sizeof(int32_t) * f.length);
        out += ";";
    }
    return out;
}

// Creates a plugin from `fields`, round-trips it through getFieldsToSerialize, returns the deserialised one.
IPluginV3* round_trip(IPluginCreatorV3One* creator, Fields& f) {
    IPluginV3* built = create(creator, f.table(), TensorRTPhase::kBUILD);
    REQUIRE(built != nullptr, "createPlugin from fields");
    auto* runtime = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    std::vector<PluginField> copy(fc->fields, fc->fields + fc->nbFields);
    IPluginV3* restored = creator->createPlugin("scan", fc, TensorRTPhase::kRUNTIME);
    REQUIRE(restored != nullptr, "createPlugin from serialised fields");
    REQUIRE(serialised(built) == serialised(restored), "fields survive serialise/deserialise");
    IPluginV3* attached = runtime->attachToContext(nullptr);
    REQUIRE(attached != nullptr && serialised(attached) == serialised(built), "attachToContext keeps the fields");
    delete attached;
    delete built;
    std::printf("ok round_trip %s\n", serialised(restored).size() > 0 ? "fields" : "empty");
    return restored;
}

DimsExprs expr_dims(StubBuilder& builder, std::vector<int64_t> const& dims) {
    DimsExprs e{};
    e.nbDims = int32_t(dims.size());
    for (size_t k = 0; k < dims.size(); ++k) e.d[k] = builder.constant(dims[k]);
    return e;
}

void info(IPluginCreatorV3One* creator) {
    std::printf("creator %s %s %s\n", creator->getPluginName(), creator->getPluginVersion(), creator->getPluginNamespace());
    PluginFieldCollection const* names = creator->getFieldNames();
    for (int32_t i = 0; i < names->nbFields; ++i) {
        std::printf("field %s %d %d\n", names->fields[i].name, int(names->fields[i].type), names->fields[i].length);
    }
}

void check(IPluginCreatorV3One* creator) {
    Fields f;
    f.softplus = 1;
    f.has_D = 1;
    f.has_z = 1;
    f.has_bias = 1;
    int32_t const tm[6] = {0, 1, 1, 1, 1, 1};  // the model's layouts: u (b, dim, L), the rest (b, L, K)
    std::memcpy(f.tm, tm, sizeof(tm));
    IPluginV3* plugin = round_trip(creator, f);
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    REQUIRE(std::strcmp(core->getPluginName(), creator->getPluginName()) == 0, "plugin and creator names agree");
    REQUIRE(build->getNbOutputs() == 1, "one output");
    StubBuilder builder;
    // u (2, 6, 300), delta (2, 300, 6), A (6, 16), B, C (2, 300, 16), D (6), z (2, 300, 6), delta_bias (6)
    std::vector<std::vector<int64_t>> shapes = {{2, 6, 300}, {2, 300, 6}, {6, 16}, {2, 300, 16}, {2, 300, 16}, {6}, {2, 300, 6}, {6}};
    std::vector<DimsExprs> inputs;
    for (auto const& s : shapes) inputs.push_back(expr_dims(builder, s));
    DimsExprs out{};
    REQUIRE(build->getOutputShapes(inputs.data(), 8, nullptr, 0, &out, 1, builder) == 0, "getOutputShapes");
    REQUIRE(out.nbDims == 3 && out.d[0]->getConstantValue() == 2 && out.d[1]->getConstantValue() == 300 &&
            out.d[2]->getConstantValue() == 6, "y is (batch, L, dim) when token_major[y] and u is (batch, dim, L)");
    REQUIRE(build->getOutputShapes(inputs.data(), 7, nullptr, 0, &out, 1, builder) != 0, "a missing input is refused");
    std::printf("ok output_shapes 2 300 6\n");
    DataType types_in[8] = {DataType::kHALF};
    DataType type_out = DataType::kFLOAT;
    REQUIRE(build->getOutputDataTypes(&type_out, 1, types_in, 8) == 0 && type_out == DataType::kHALF, "y has u's type");
    // format combinations: activations fp32 or fp16 alike, parameters fp32, linear only
    std::vector<DynamicPluginTensorDesc> io(9);
    for (auto& d : io) {
        d.desc.format = TensorFormat::kLINEAR;
        d.desc.type = DataType::kHALF;
    }
    io[2].desc.type = io[5].desc.type = io[7].desc.type = DataType::kFLOAT;
    for (int32_t pos = 0; pos < 9; ++pos) REQUIRE(build->supportsFormatCombination(pos, io.data(), 8, 1), "fp16 combination");
    io[8].desc.type = DataType::kFLOAT;
    REQUIRE(!build->supportsFormatCombination(8, io.data(), 8, 1), "y must match u's type");
    io[8].desc.type = DataType::kHALF;
    io[2].desc.type = DataType::kHALF;
    REQUIRE(!build->supportsFormatCombination(2, io.data(), 8, 1), "A must be fp32");
    io[2].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kHWC8;
    REQUIRE(!build->supportsFormatCombination(0, io.data(), 8, 1), "linear only");
    io[0].desc.format = TensorFormat::kLINEAR;
    io[0].desc.type = DataType::kINT8;
    REQUIRE(!build->supportsFormatCombination(0, io.data(), 8, 1), "no int8");
    std::printf("ok formats\n");
    // bad fields are refused
    int32_t two = 2;
    std::vector<PluginField> bad = {PluginField("delta_softplus", &two, PluginFieldType::kINT32, 1)};
    REQUIRE(create(creator, bad, TensorRTPhase::kBUILD) == nullptr, "a flag of 2 is refused");
    bad = {PluginField("no_such_field", &two, PluginFieldType::kINT32, 1)};
    REQUIRE(create(creator, bad, TensorRTPhase::kBUILD) == nullptr, "an unknown field is refused");
    std::printf("ok bad_fields\n");
    delete plugin;
}

size_t dtype_size(DataType t) { return t == DataType::kHALF ? 2 : 4; }

void run(IPluginCreatorV3One* creator, char const* spec_path) {
    std::ifstream spec(spec_path);
    REQUIRE(spec.good(), "spec file opens");
    Fields f;
    int32_t dtype = 0;
    struct Tensor {
        std::vector<int64_t> dims;
        std::string path;
    };
    std::vector<Tensor> ins;
    Tensor out;
    std::string line;
    while (std::getline(spec, line)) {
        std::istringstream s(line);
        std::string key;
        s >> key;
        if (key == "fields") {
            s >> f.softplus >> f.has_D >> f.has_z >> f.has_bias;
            for (int k = 0; k < 6; ++k) s >> f.tm[k];
        } else if (key == "dtype") {
            s >> dtype;
        } else if (key == "input") {
            int rank = 0;
            s >> rank;
            Tensor t;
            t.dims.resize(rank);
            for (auto& d : t.dims) s >> d;
            s >> t.path;
            ins.push_back(t);
        } else if (key == "output") {
            out.dims.resize(3);
            for (auto& d : out.dims) s >> d;
            s >> out.path;
        }
    }
    IPluginV3* plugin = round_trip(creator, f);
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    int32_t const nb = int32_t(ins.size());
    StubBuilder builder;
    std::vector<DimsExprs> in_exprs;
    for (auto const& t : ins) in_exprs.push_back(expr_dims(builder, t.dims));
    DimsExprs out_expr{};
    REQUIRE(build->getOutputShapes(in_exprs.data(), nb, nullptr, 0, &out_expr, 1, builder) == 0, "getOutputShapes");
    for (int k = 0; k < 3; ++k) REQUIRE(out_expr.d[k]->getConstantValue() == out.dims[k], "output shape as expected");
    DataType const act = dtype == 1 ? DataType::kHALF : DataType::kFLOAT;
    std::vector<DynamicPluginTensorDesc> io(nb + 1);
    for (int32_t i = 0; i <= nb; ++i) {
        auto const& dims = i < nb ? ins[i].dims : out.dims;
        io[i].desc.format = TensorFormat::kLINEAR;
        io[i].desc.dims.nbDims = int32_t(dims.size());
        for (size_t k = 0; k < dims.size(); ++k) io[i].desc.dims.d[k] = dims[k];
        io[i].min = io[i].max = io[i].opt = io[i].desc.dims;
        bool const parameter = i == 2 || (i < nb && dims.size() == 1);
        io[i].desc.type = parameter ? DataType::kFLOAT : act;
    }
    for (int32_t pos = 0; pos <= nb; ++pos) REQUIRE(build->supportsFormatCombination(pos, io.data(), nb, 1), "format supported");
    REQUIRE(build->configurePlugin(io.data(), nb, &io[nb], 1) == 0, "configurePlugin");
    std::vector<PluginTensorDesc> descs(nb + 1);
    for (int32_t i = 0; i <= nb; ++i) descs[i] = io[i].desc;
    REQUIRE(runtime->onShapeChange(descs.data(), nb, &descs[nb], 1) == 0, "onShapeChange");
    std::vector<void*> device(nb + 1, nullptr);
    std::vector<size_t> bytes(nb + 1);
    for (int32_t i = 0; i <= nb; ++i) {
        size_t n = 1;
        for (int64_t d : (i < nb ? ins[i].dims : out.dims)) n *= size_t(d);
        bytes[i] = n * dtype_size(descs[i].type);
        REQUIRE(cudaMalloc(&device[i], bytes[i]) == cudaSuccess, "cudaMalloc");
        if (i < nb) {
            std::vector<char> host(bytes[i]);
            std::ifstream file(ins[i].path, std::ios::binary);
            REQUIRE(file.read(host.data(), std::streamsize(bytes[i])).good(), "input file holds the tensor");
            REQUIRE(cudaMemcpy(device[i], host.data(), bytes[i], cudaMemcpyHostToDevice) == cudaSuccess, "copy in");
        } else {
            REQUIRE(cudaMemset(device[i], 0xff, bytes[i]) == cudaSuccess, "poison y (NaN)");
        }
    }
    cudaStream_t stream;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess, "stream");
    // the workspace TensorRT would give: getWorkspaceSize's bytes for the profile (here min = max = these shapes)
    size_t const workspace_bytes = build->getWorkspaceSize(io.data(), nb, &io[nb], 1);
    void* workspace = nullptr;
    if (workspace_bytes > 0) {
        REQUIRE(cudaMalloc(&workspace, workspace_bytes) == cudaSuccess, "cudaMalloc workspace");
        REQUIRE(cudaMemset(workspace, 0xff, workspace_bytes) == cudaSuccess, "poison the workspace (NaN)");
    }
    std::printf("ok workspace %zu\n", workspace_bytes);
    REQUIRE(runtime->enqueue(descs.data(), &descs[nb], device.data(), &device[nb], workspace, stream) == 0, "enqueue");
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess, "the kernel ran");
    std::vector<char> host(bytes[nb]);
    REQUIRE(cudaMemcpy(host.data(), device[nb], bytes[nb], cudaMemcpyDeviceToHost) == cudaSuccess, "copy out");
    std::ofstream file(out.path, std::ios::binary);
    file.write(host.data(), std::streamsize(bytes[nb]));
    REQUIRE(file.good(), "y written");
    for (void* p : device) cudaFree(p);
    cudaFree(workspace);
    cudaStreamDestroy(stream);
    delete plugin;
    std::printf("ok run\n");
}

int main(int argc, char** argv) {
    REQUIRE(argc >= 3, "usage: plugin_harness LIB info|check|run [SPEC]");
    IPluginCreatorV3One* creator = load_creator(argv[1]);
    std::string const mode = argv[2];
    if (mode == "info") info(creator);
    else if (mode == "check") check(creator);
    else if (mode == "run" && argc >= 4) run(creator, argv[3]);
    else REQUIRE(false, "unknown mode");
    return 0;
}
