"""Inference-time rewrite of the token projections of the label decoder and the spatial branch:
one GEMM for all of them.

Every decoder layer projects the same X_ml tokens to keys and values, and the spatial 1x1 conv
is one more linear map of those tokens. ``fuse_for_inference`` stacks all of these weights
(3 layers x (K, V) + the C spatial filters: 6D + C rows) into one matrix, so one GEMM over the
B*h*w tokens replaces seven; the decoder layers then read their keys and values as column
slices of its output, in place. The first layer's queries, a projection of the constant label
embeddings, are computed once. The original ``nn.Linear`` weights become views of the stacked
matrix, so the rewrite costs no extra memory and the state dict is unchanged.

Only :meth:`LCIE.label_features <lcie_fast.models.lcie.LCIE.label_features>` is replaced (by
:class:`FusedLCIE`); the decoder layers, heads and encoder run their own code.

Call it after moving the model to its device and dtype, in eval mode; training and export use
the unfused model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lcie import LCIE


class FusedTokenProjections(nn.Module):
    """All token projections of the decoder and spatial branch of ``model`` as one GEMM.

    Args:
        model: The LCIE model; its decoder's key/value ``nn.Linear`` weights become views of
            the stacked matrix (in place, values unchanged).

    Buffers (not saved in the state dict): ``weight`` (6D + C, D) and ``bias`` (6D + C,), the
    stacked projections; ``key_bias`` (h*w, 6D + C) or None, the position code's share of the
    keys; ``first_queries`` (C, D) or None, the first layer's projection of the label embeddings.
    """

    def __init__(self, model: LCIE) -> None:
        super().__init__()
        decoder, spatial = model.decoder, model.spatial
        layers = list(decoder.layers) if decoder is not None else []
        linears = [proj for layer in layers for proj in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
        weights = [lin.weight.detach() for lin in linears]
        biases = [lin.bias.detach() for lin in linears]
        # a spatial branch that normalises its input first cannot share the raw-token GEMM
        fuse_spatial = spatial is not None and spatial.norm is None
        if fuse_spatial:
            weights.append(spatial.conv.weight.detach().flatten(1))  # (C, D)
            biases.append(spatial.conv.bias.detach())
        weight = torch.cat(weights)  # (6D + C, D)
        bias = torch.cat(biases)  # (6D + C,)
        # the Linear layers now read views of the stacked matrix: one copy of each weight
        offset = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight.data = weight[offset:offset + rows]
            lin.bias.data = bias[offset:offset + rows]
            offset += rows
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.dim = model.dim
        self.num_layers = len(layers)
        self.has_spatial = fuse_spatial
        key_bias = None
        if decoder is not None and decoder.pos is not None:
            # keys see tokens + pos: (tokens + pos) W^T = tokens W^T + pos W^T; add the second term
            with torch.no_grad():
                key_bias = torch.zeros(decoder.pos.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device)
                for i, layer in enumerate(layers):
                    d = self.dim
                    key_bias[:, 2 * i * d:(2 * i + 1) * d] = decoder.pos.to(weight.dtype) @ layer.cross_attn.k_proj.weight.T
        self.register_buffer("key_bias", key_bias, persistent=False)  # (h*w, 6D + C) or None
        first_queries = None
        if layers:
            with torch.no_grad():
                first_queries = layers[0].cross_attn.q_proj(decoder.label_embed.detach())  # (C, D)
        self.register_buffer("first_queries", first_queries, persistent=False)  # (C, D) or None

    def forward(self, tokens: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """Image tokens (B, N, D) -> (per decoder layer (keys, values) (B, N, D), L_sp (B, C, N)).

        The keys and values are column slices of one GEMM output, read in place. L_sp is None
        without a spatial branch, or when it normalises its input first (the model then runs
        its spatial branch itself).
        """
        d = self.dim
        projected = F.linear(tokens, self.weight.to(tokens.dtype), self.bias.to(tokens.dtype))  # (B, N, 6D + C)
        if self.key_bias is not None:
            projected = projected + self.key_bias.to(projected.dtype)
        keys_values = [
            (projected[..., 2 * i * d:(2 * i + 1) * d], projected[..., (2 * i + 1) * d:(2 * i + 2) * d])
            for i in range(self.num_layers)
        ]  # per layer (B, N, D), (B, N, D)
        l_sp = projected[..., 2 * self.num_layers * d:].transpose(1, 2) if self.has_spatial else None  # (B, C, N)
        return keys_values, l_sp


class FusedLCIE(LCIE):
    """An LCIE model whose token projections run as one GEMM in eval mode (see the module doc).

    Made by :func:`fuse_for_inference` from a built model, never constructed directly. In train
    mode it runs the plain LCIE path (the stacked spatial filters and first queries are copies
    that training would leave stale).
    """

    fused_projections: FusedTokenProjections

    def label_features(
        self, tokens: torch.Tensor, x_ml: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As :meth:`LCIE.label_features`, the projections of ``tokens`` (B, h*w, D) by one GEMM."""
        if self.training:
            return super().label_features(tokens, x_ml)
        projections = self.fused_projections
        keys_values, l_sp = projections(tokens)  # per layer (B, h*w, D) x 2; (B, C, h*w) or None
        l_ca = None
        if self.decoder is not None:
            l_ca = self.decoder.decode(keys_values, tokens.shape[0], projections.first_queries)  # (B, C, D), eq. 2
        if l_sp is None and self.spatial is not None:  # a normalised spatial input is not fused
            l_sp = self.spatial(x_ml)  # (B, C, h*w), eq. 4
        return l_ca, l_sp


def fuse_for_inference(model: LCIE) -> LCIE:
    """Turn ``model`` (in place) into a :class:`FusedLCIE` and put it in eval mode.

    The model's outputs are unchanged up to floating-point reassociation; its state dict is
    unchanged. Returns the model.
    """
    model.eval()
    if model.decoder is None and (model.spatial is None or model.spatial.norm is not None):
        return model  # nothing to stack into one GEMM
    model.fused_projections = FusedTokenProjections(model)
    # in place, as torch.nn.utils.parametrize swaps a module's class: callers keep their reference
    model.__class__ = FusedLCIE
    return model


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution.

    ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is one convolution with scaled
    weights and a new bias, so the BatchNorm pass over the activations (a quarter of the CPU
    time of the EfficientNet backbone in eager mode) disappears; ONNX Runtime does the same to
    the exported graph. A timm ``BatchNormAct2d`` keeps its dropout and activation. Pairs are
    found by running ``example`` (default: one zero image at the model's input size) and
    matching each BatchNorm's input tensor to the output of the convolution that produced it.

    Only for inference (the model is put in eval mode); in place. Returns how many were folded.
    """
    model.eval()
    if example is None:
        size = model.config.img_size if getattr(model, "config", None) is not None else 224
        parameter = next(model.parameters())
        example = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    produced_by: dict[int, nn.Conv2d] = {}
    pairs: list[tuple[nn.Conv2d, str, nn.BatchNorm2d]] = []
    names = {module: name for name, module in model.named_modules()}

    def after_conv(conv, _inputs, output):
        produced_by[id(output)] = (conv, output)

    def before_bn(bn, inputs):
        source = produced_by.get(id(inputs[0]))
        if source is not None and source[1] is inputs[0] and bn.track_running_stats and bn.running_var is not None:
            pairs.append((source[0], names[bn], bn))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    convs = [conv for conv, _, _ in pairs]
    folded = 0
    for conv, name, bn in pairs:
        if convs.count(conv) != 1:  # a convolution read by two BatchNorms cannot take both
            continue
        folded += 1
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        rest = [child for child_name, child in bn.named_children() if child_name in ("drop", "act")]
        replacement = nn.Sequential(*rest) if rest else nn.Identity()
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, replacement)
    return folded
