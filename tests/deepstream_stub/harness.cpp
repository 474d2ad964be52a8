/*
 * Test harness for the lcie-fast multi-label parser: plays nvinfer's part on a machine without
 * DeepStream. It dlopens the built library, looks the parse function up by name (as nvinfer does
 * with parse-classifier-func-name), hands it one sample's output layer built from the command line,
 * frees every attributeLabel with free() (as nvinfer does), and prints one JSON line:
 *     {"ok": true, "attributes": [{"index": 0, "value": 2, "confidence": 0.9, "label": "car"}], "description": "car"}
 *
 * Usage: harness LIBRARY FUNCTION [options] [--] P0 P1 ...   (probabilities, strtof syntax: nan, inf)
 *   --dtype N               the layer's NvDsInferDataType value (default 0, FLOAT)
 *   --elements N            numElements and d[0] to report (default: the number of probabilities)
 *   --name NAME             the layer's name (default "probs")
 *   --decoy NAME            put a FLOAT layer NAME, of the same size and all 1.0, before the real one
 *   --classifier-threshold  the classifierThreshold argument (default 0.5)
 * Exit status: 0 when the function ran (whatever it returned), 2 on a usage or loading error.
 */
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "nvdsinfer_custom_impl.h"

namespace {

std::string jsonString(const char *text) {
    std::string out = "\"";
    for (const unsigned char *p = reinterpret_cast<const unsigned char *>(text); *p; ++p) {
        if (*p == '"' || *p == '\\') {
            out += '\\';
            out += static_cast<char>(*p);
        } else if (*p < 0x20 || *p == 0x7f) {
            char escaped[8];
            std::snprintf(escaped, sizeof escaped, "\\u%04x", *p);
            out += escaped;
        } else {
            out += static_cast<char>(*p);  // UTF-8 bytes pass through
        }
    }
    return out + "\"";
}

NvDsInferLayerInfo makeLayer(int dtype, const char *name, std::vector<float> &data, unsigned int elements) {
    NvDsInferLayerInfo layer{};
    layer.dataType = static_cast<NvDsInferDataType>(dtype);
    layer.inferDims.numDims = 1;
    layer.inferDims.d[0] = elements;
    layer.inferDims.numElements = elements;
    layer.bindingIndex = 1;
    layer.layerName = name;
    layer.buffer = data.data();
    layer.isInput = 0;
    return layer;
}

int usage(const char *why) {
    std::fprintf(stderr, "harness: %s\n", why);
    return 2;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        return usage("usage: harness LIBRARY FUNCTION [options] [--] P0 P1 ...");
    }
    int dtype = 0;
    long elements = -1;
    const char *name = "probs";
    const char *decoy = nullptr;
    float classifierThreshold = 0.5f;
    std::vector<float> probs;
    bool options = true;
    for (int i = 3; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool hasValue = i + 1 < argc;
        if (options && arg == "--") {
            options = false;
        } else if (options && arg == "--dtype" && hasValue) {
            dtype = std::atoi(argv[++i]);
        } else if (options && arg == "--elements" && hasValue) {
            elements = std::atol(argv[++i]);
        } else if (options && arg == "--name" && hasValue) {
            name = argv[++i];
        } else if (options && arg == "--decoy" && hasValue) {
            decoy = argv[++i];
        } else if (options && arg == "--classifier-threshold" && hasValue) {
            classifierThreshold = std::strtof(argv[++i], nullptr);
        } else {
            char *end = nullptr;
            probs.push_back(std::strtof(argv[i], &end));
            if (end == argv[i] || *end != '\0') {
                return usage(("not a probability: " + arg).c_str());
            }
        }
    }
    const unsigned int count = elements >= 0 ? static_cast<unsigned int>(elements) : static_cast<unsigned int>(probs.size());

    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
        return usage(dlerror());
    }
    auto parse = reinterpret_cast<NvDsInferClassiferParseCustomFunc>(dlsym(library, argv[2]));
    if (parse == nullptr) {
        return usage(dlerror());
    }

    std::vector<float> decoyData(probs.size(), 1.0f);
    std::vector<NvDsInferLayerInfo> layers;
    if (decoy != nullptr) {
        layers.push_back(makeLayer(0, decoy, decoyData, count));
    }
    layers.push_back(makeLayer(dtype, name, probs, count));
    const NvDsInferNetworkInfo network{224, 224, 3};
    std::vector<NvDsInferAttribute> attributes;
    std::string description;
    const bool ok = parse(layers, network, classifierThreshold, attributes, description);

    std::string line = std::string("{\"ok\": ") + (ok ? "true" : "false") + ", \"attributes\": [";
    for (size_t i = 0; i < attributes.size(); ++i) {
        const NvDsInferAttribute &a = attributes[i];
        char numbers[128];
        std::snprintf(numbers, sizeof numbers, "{\"index\": %u, \"value\": %u, \"confidence\": %.9g, \"label\": ",
                      a.attributeIndex, a.attributeValue, static_cast<double>(a.attributeConfidence));
        line += (i ? ", " : "") + std::string(numbers);
        line += (a.attributeLabel != nullptr ? jsonString(a.attributeLabel) : "null") + "}";
        std::free(a.attributeLabel);
    }
    line += "], \"description\": " + jsonString(description.c_str()) + "}";
    std::printf("%s\n", line.c_str());
    dlclose(library);
    return 0;
}
