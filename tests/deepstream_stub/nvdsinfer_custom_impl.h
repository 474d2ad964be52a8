/*
 * Test stub of DeepStream's nvdsinfer_custom_impl.h, written in this repository from the documented
 * classifier parser API of the DeepStream SDK API reference (the NvDsInferClassiferParseCustomFunc
 * typedef, NVIDIA's spelling, and the CHECK_CUSTOM_CLASSIFIER_PARSE_FUNC_PROTOTYPE macro), not copied
 * from NVIDIA's header. The real header also pulls in TensorRT (NvInfer.h) and declares the detector,
 * instance-mask and engine-builder hooks; none of them is needed here.
 *
 * Compiling against this stub checks the parser against the documented signature; the ABI is only
 * checked by building against a real DeepStream install ($(DS_PATH)/sources/includes).
 */
#ifndef LCIE_STUB_NVDSINFER_CUSTOM_IMPL_H
#define LCIE_STUB_NVDSINFER_CUSTOM_IMPL_H

#include <string>
#include <vector>

#include "nvdsinfer.h"

/* The classifier parse function nvinfer looks up by parse-classifier-func-name in custom-lib-path.
 * classifierThreshold is the config's classifier-threshold; descString becomes the object's
 * classifier description (nvinfer attaches no classifier metadata when it stays empty). */
typedef bool (*NvDsInferClassiferParseCustomFunc)(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
                                                   NvDsInferNetworkInfo const &networkInfo,
                                                   float classifierThreshold,
                                                   std::vector<NvDsInferAttribute> &attrList,
                                                   std::string &descString);

/* Fails to compile unless customParseFunc has exactly the type above, and declares it extern "C"
 * (the unmangled name nvinfer passes to dlsym). */
#define CHECK_CUSTOM_CLASSIFIER_PARSE_FUNC_PROTOTYPE(customParseFunc)                                    \
    [[maybe_unused]] static const NvDsInferClassiferParseCustomFunc lcieStubCheck_##customParseFunc =   \
        customParseFunc;                                                                                 \
    extern "C" bool customParseFunc(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,             \
                                    NvDsInferNetworkInfo const &networkInfo, float classifierThreshold,  \
                                    std::vector<NvDsInferAttribute> &attrList, std::string &descString)

#endif /* LCIE_STUB_NVDSINFER_CUSTOM_IMPL_H */
