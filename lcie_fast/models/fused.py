"""Inference-time rewrite of the label decoder and the spatial branch: one GEMM for all of
their projections of the image tokens.

Every decoder layer projects the same X_ml tokens to keys and values, and the spatial 1x1 conv
is one more linear map of those tokens. ``fuse_for_inference`` stacks all of these weights
(3 layers x (K, V) + the C spatial filters: 6D + C rows) into one matrix, so one GEMM over the
B*h*w tokens replaces seven; the decoder layers then read their keys and values as column
slices of its output, in place. The first layer's queries, a projection of the constant label
embeddings, are computed once. The original ``nn.Linear`` weights become views of the stacked
matrix, so the rewrite costs no extra memory and the state dict is unchanged.

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

    Returns from ``forward(tokens)``: L_ca (B, C, D) (or None without a decoder) and L_sp
    (B, C, h*w) (or None without the spatial branch, or when it normalises its input first:
    the model then runs its spatial branch itself).
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
        self.register_buffer("first_queries", first_queries, persistent=False)
        # not submodules: they stay registered (once) under model.decoder
        self.__dict__["_layers"] = layers
        self.__dict__["_label_embed"] = decoder.label_embed if decoder is not None else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        b = tokens.shape[0]
        d = self.dim
        projected = F.linear(tokens, self.weight.to(tokens.dtype), self.bias.to(tokens.dtype))  # (B, N, 6D + C)
        if self.key_bias is not None:
            projected = projected + self.key_bias.to(projected.dtype)
        l_ca = None
        if self._layers:
            labels = self._label_embed.expand(b, -1, -1).to(projected.dtype)  # (B, C, D)
            for i, layer in enumerate(self._layers):
                attn = layer.cross_attn
                q = self.first_queries.expand(b, -1, -1).to(projected.dtype) if i == 0 else attn.q_proj(labels)  # (B, C, D)
                keys = projected[..., 2 * i * d:(2 * i + 1) * d]  # (B, N, D), read in place
                values = projected[..., (2 * i + 1) * d:(2 * i + 2) * d]  # (B, N, D)
                labels = layer.norm1(labels + attn.attend(q, keys, values))  # (B, C, D)
                labels = layer.norm2(labels + layer.ffn(labels))  # (B, C, D)
            l_ca = labels
        l_sp = projected[..., 2 * self.num_layers * d:].transpose(1, 2) if self.has_spatial else None  # (B, C, N)
        return l_ca, l_sp


def fuse_for_inference(model: LCIE) -> LCIE:
    """Install :class:`FusedTokenProjections` on ``model`` (in place) and put it in eval mode.

    The model's outputs are unchanged up to floating-point reassociation; its state dict is
    unchanged. Returns the model.
    """
    model.eval()
    if model.decoder is None and (model.spatial is None or model.spatial.norm is not None):
        return model  # nothing to stack into one GEMM
    model.fused_projections = FusedTokenProjections(model)
    return model
