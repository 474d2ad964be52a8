"""DeepStream bundles: what ``lcie-fast export-deepstream`` writes for NVIDIA's nvinfer plugin."""
