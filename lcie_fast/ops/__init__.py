"""Fused ops: each a public function with a plain-PyTorch ``*_ref`` twin and a dispatcher."""

from .attention import ATTENTION, attention, attention_ref
from .dispatch import IMPLS, FastOp, NotSupportedError, get_impl, set_impl, use_impl
from .downsample_concat import DOWNSAMPLE_CONCAT, downsample_concat, downsample_concat_ref

__all__ = [
    "ATTENTION",
    "DOWNSAMPLE_CONCAT",
    "IMPLS",
    "FastOp",
    "NotSupportedError",
    "attention",
    "attention_ref",
    "downsample_concat",
    "downsample_concat_ref",
    "get_impl",
    "set_impl",
    "use_impl",
]
