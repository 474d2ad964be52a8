/*
 * Test stub of DeepStream's nvdsinfer.h, written in this repository from the documented fields of
 * the DeepStream SDK API reference (NvDsInferDims, NvDsInferDataType, NvDsInferLayerInfo,
 * NvDsInferNetworkInfo, NvDsInferAttribute), not copied from NVIDIA's header.
 *
 * It declares only what the lcie-fast multi-label parser and its test harness use, with the
 * documented names, types and member order, so the parser compiles on a machine without DeepStream.
 * That checks the source against the documented API; it does not check the ABI (layout, enum
 * values, calling convention) of a real DeepStream release: only a build against
 * $(DS_PATH)/sources/includes on a DeepStream machine does.
 */
#ifndef LCIE_STUB_NVDSINFER_H
#define LCIE_STUB_NVDSINFER_H

#ifdef __cplusplus
extern "C" {
#endif

#define NVDSINFER_MAX_DIMS 8

/* The shape of one layer; for nvinfer's output layers the batch is not one of the dimensions. */
typedef struct {
    unsigned int numDims;                /* how many of d[] are used */
    unsigned int d[NVDSINFER_MAX_DIMS];  /* size along each dimension */
    unsigned int numElements;            /* product of the used sizes */
} NvDsInferDims;

/* Element type of a layer (INT64 and UINT8 appeared in later 7.x/8.x releases). */
typedef enum {
    FLOAT = 0,
    HALF = 1,
    INT8 = 2,
    INT32 = 3,
    INT64 = 4,
    UINT8 = 5
} NvDsInferDataType;

/* One input or output layer of the network as nvinfer hands it to a parser. */
typedef struct {
    NvDsInferDataType dataType;
    union {
        NvDsInferDims inferDims; /* the real header also has a deprecated alias `dims` here */
    };
    int bindingIndex;            /* TensorRT binding index */
    const char *layerName;
    void *buffer;                /* host copy of the layer's data for one frame or object */
    int isInput;                 /* nonzero for an input layer */
} NvDsInferLayerInfo;

/* Input resolution of the network. */
typedef struct {
    unsigned int width;
    unsigned int height;
    unsigned int channels;
} NvDsInferNetworkInfo;

/* One classified attribute. nvinfer takes ownership of attributeLabel and releases it with free(),
 * so a parser allocates it on the heap (strdup). */
typedef struct {
    unsigned int attributeIndex;  /* which output layer (classifier head) it came from */
    unsigned int attributeValue;  /* class index within that layer */
    float attributeConfidence;
    char *attributeLabel;
} NvDsInferAttribute;

#ifdef __cplusplus
}
#endif

#endif /* LCIE_STUB_NVDSINFER_H */
