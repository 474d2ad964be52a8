"""Registered model presets (DESIGN.md section 1). Each returns the preset's ModelConfig."""

from __future__ import annotations

from ..config import ModelConfig
from .registry import register_model


@register_model
def lcie_r101_448() -> ModelConfig:
    """The paper's model: ResNet-101, 448x448, MS-COCO's 80 labels (D=3584, E=3780)."""
    return ModelConfig(backbone="resnet101", img_size=448, num_classes=80)


@register_model
def lcie_r101_576() -> ModelConfig:
    """The paper's 576x576 setting (Table 1, lower half): 18x18 tokens, E=3908."""
    return ModelConfig(backbone="resnet101", img_size=576, num_classes=80)


@register_model
def lcie_effl0_448() -> ModelConfig:
    """Edge preset: EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), D=40+112+320=472."""
    return ModelConfig(backbone="tf_efficientnet_lite0", img_size=448, num_classes=80)


@register_model
def lcie_swinl_384() -> ModelConfig:
    """Table 4's Swin-L backbone at its native 384x384 (strides 8/16/32: D=384+768+1536)."""
    return ModelConfig(backbone="swin_large_patch4_window12_384", img_size=384, num_classes=80)


# Table 3's first row on the same backbones: the baseline every LCIE model should beat. Trained,
# evaluated, exported and served with the same commands (``--model baseline_effl0_448``).
BASELINE = dict(mlff=False, lcie=False, spatial=False, full=False, partial=False)


@register_model
def baseline_effl0_448() -> ModelConfig:
    """EfficientNet-Lite0 + global average pooling + one linear layer (Table 3, first row)."""
    return ModelConfig(backbone="tf_efficientnet_lite0", img_size=448, num_classes=80, **BASELINE)


@register_model
def baseline_r101_448() -> ModelConfig:
    """ResNet-101 + global average pooling + one linear layer (Table 3, first row: 79.1 mAP on COCO)."""
    return ModelConfig(backbone="resnet101", img_size=448, num_classes=80, **BASELINE)


@register_model
def lcie_tiny() -> ModelConfig:
    """A few-thousand-parameter model for tests: timm's ``test_efficientnet`` at 64x64."""
    return ModelConfig(
        backbone="test_efficientnet",
        img_size=64,
        num_classes=10,
        decoder_layers=2,
        encoder_layers=2,
        num_heads=4,
        ffn_dim=64,
    )
