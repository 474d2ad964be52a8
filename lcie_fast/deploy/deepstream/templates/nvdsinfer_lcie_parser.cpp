/*
 * Multi-label classifier parser for DeepStream's Gst-nvinfer, emitted by lcie-fast.
 *
 * Why it exists: nvinfer's built-in classifier parser keeps only the best class of each output
 * layer, so the model's C-way sigmoid output would give at most one tag per frame or object. This
 * parser keeps every class whose probability reaches that class's own threshold.
 *
 * Use it from the nvinfer config ([property] group):
 *     parse-classifier-func-name=NvDsInferParseCustomLcieMultiLabel
 *     custom-lib-path=parser/libnvdsinfer_lcie_parser.so
 * after building it here with `make CUDA_VER=<your CUDA version>`.
 *
 * Contract (the settings are baked into lcie_parser_config.h by lcie-fast; edit them there and run
 * make again to change them):
 *  - Input: the output layer named lcie::kOutputLayer ("probs" by default; the only output layer
 *    when there is just one), FLOAT, one sample: nvinfer calls the parser once per frame or object
 *    and the batch is not part of inferDims, so numElements must equal the number of labels. The
 *    values are probabilities: the graph applies the sigmoid itself.
 *  - A class is kept when its probability is finite and >= its threshold lcie::kThresholds[c].
 *    NaN and infinities are never kept.
 *  - classifierThreshold (the config's classifier-threshold) is ignored: the per-class thresholds
 *    chosen at export are the calibrated ones, and one global value would silently override them.
 *  - Kept classes are ordered by probability, highest first, ties by class index, then cut to the
 *    lcie::kTopK best (0 keeps all).
 *  - Each kept class becomes one NvDsInferAttribute: attributeIndex 0 (the model has one output
 *    layer), attributeValue = class index, attributeConfidence = probability, attributeLabel = a
 *    strdup'ed copy of the label (nvinfer takes ownership and frees it).
 *  - descString: the kept labels, best first, joined by lcie::kDescriptionSeparator (", ": labels
 *    may hold spaces). It stays empty when nothing is kept, and nvinfer then attaches nothing.
 *  - A missing layer, a data type other than FLOAT (export the graph with FLOAT inputs and outputs)
 *    or an element count other than the number of labels: one line on stderr, return false.
 */

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "nvdsinfer_custom_impl.h"

#include "lcie_parser_config.h"

namespace {

const char *const kLogPrefix = "lcie-fast multi-label parser";

// By value, not by enumerator: INT64 and UINT8 do not exist in older DeepStream headers.
const char *dataTypeName(int type) {
    switch (type) {
        case 0: return "FLOAT";
        case 1: return "HALF";
        case 2: return "INT8";
        case 3: return "INT32";
        case 4: return "INT64";
        case 5: return "UINT8";
        default: return "an unknown type";
    }
}

const char *layerNameOf(NvDsInferLayerInfo const &layer) {
    return layer.layerName != nullptr ? layer.layerName : "(unnamed)";
}

// The layer named lcie::kOutputLayer, else the only layer there is; nullptr after saying why not.
const NvDsInferLayerInfo *findLayer(std::vector<NvDsInferLayerInfo> const &layers) {
    for (NvDsInferLayerInfo const &layer : layers) {
        if (layer.layerName != nullptr && std::strcmp(layer.layerName, lcie::kOutputLayer) == 0) {
            return &layer;
        }
    }
    if (layers.size() == 1) {
        return &layers[0];
    }
    std::string names;
    for (NvDsInferLayerInfo const &layer : layers) {
        names += names.empty() ? "" : ", ";
        names += layerNameOf(layer);
    }
    std::fprintf(stderr, "%s: no output layer named '%s' among the %zu output layers [%s]; set output-blob-names=%s\n",
                 kLogPrefix, lcie::kOutputLayer, layers.size(), names.c_str(), lcie::kOutputLayer);
    return nullptr;
}

// Why nvinfer's layer cannot be read as lcie::kNumClasses floats, or an empty string.
std::string layerProblem(NvDsInferLayerInfo const &layer) {
    char line[512];
    const int type = static_cast<int>(layer.dataType);
    if (layer.dataType != FLOAT) {
        std::snprintf(line, sizeof line,
                      "output layer '%s' has data type %s (%d), and this parser reads FLOAT only: export the graph "
                      "with FLOAT (fp32) inputs and outputs (FP16 or INT8 inside the graph is fine)",
                      layerNameOf(layer), dataTypeName(type), type);
        return line;
    }
    const NvDsInferDims &dims = layer.inferDims;
    if (dims.numElements != lcie::kNumClasses) {
        std::string shape;
        for (unsigned int i = 0; i < dims.numDims && i < NVDSINFER_MAX_DIMS; ++i) {
            shape += (i ? "x" : "") + std::to_string(dims.d[i]);
        }
        std::snprintf(line, sizeof line,
                      "output layer '%s' has %u elements (dims %s), but %u labels are built in: rebuild this "
                      "parser for the model nvinfer runs (lcie-fast export-deepstream)",
                      layerNameOf(layer), dims.numElements, shape.empty() ? "none" : shape.c_str(),
                      lcie::kNumClasses);
        return line;
    }
    if (layer.buffer == nullptr) {
        std::snprintf(line, sizeof line, "output layer '%s' has no host buffer", layerNameOf(layer));
        return line;
    }
    return "";
}

void freeLabels(std::vector<NvDsInferAttribute> &attributes) {
    for (NvDsInferAttribute &attribute : attributes) {
        // const_cast: attributeLabel is const char * in DeepStream 5.x headers, char * later.
        std::free(const_cast<char *>(attribute.attributeLabel));
    }
}

}  // namespace

extern "C" bool NvDsInferParseCustomLcieMultiLabel(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
                                                   NvDsInferNetworkInfo const & /* networkInfo */,
                                                   float /* classifierThreshold: ignored, see above */,
                                                   std::vector<NvDsInferAttribute> &attrList,
                                                   std::string &descString) {
    const NvDsInferLayerInfo *layer = findLayer(outputLayersInfo);
    if (layer == nullptr) {
        return false;
    }
    const std::string problem = layerProblem(*layer);
    if (!problem.empty()) {
        std::fprintf(stderr, "%s: %s\n", kLogPrefix, problem.c_str());
        return false;
    }
    const float *probs = static_cast<const float *>(layer->buffer);  // (C,) one sample

    std::vector<unsigned int> kept;
    for (unsigned int c = 0; c < lcie::kNumClasses; ++c) {
        if (std::isfinite(probs[c]) && probs[c] >= lcie::kThresholds[c]) {
            kept.push_back(c);
        }
    }
    std::stable_sort(kept.begin(), kept.end(), [probs](unsigned int a, unsigned int b) { return probs[a] > probs[b]; });
    if (lcie::kTopK != 0 && kept.size() > lcie::kTopK) {
        kept.resize(lcie::kTopK);
    }

    std::vector<NvDsInferAttribute> attributes;
    std::string description;
    for (unsigned int c : kept) {
        NvDsInferAttribute attribute{};
        attribute.attributeIndex = 0;
        attribute.attributeValue = c;
        attribute.attributeConfidence = probs[c];
        attribute.attributeLabel = strdup(lcie::kLabels[c]);
        if (attribute.attributeLabel == nullptr) {
            freeLabels(attributes);
            std::fprintf(stderr, "%s: out of memory copying a label\n", kLogPrefix);
            return false;
        }
        attributes.push_back(attribute);
        description += description.empty() ? "" : lcie::kDescriptionSeparator;
        description += lcie::kLabels[c];
    }
    attrList.insert(attrList.end(), attributes.begin(), attributes.end());
    if (!description.empty()) {
        descString += descString.empty() ? "" : lcie::kDescriptionSeparator;
        descString += description;
    }
    return true;
}

CHECK_CUSTOM_CLASSIFIER_PARSE_FUNC_PROTOTYPE(NvDsInferParseCustomLcieMultiLabel);
