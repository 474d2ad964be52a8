"""The LCIE multi-label recogniser (Chen et al., ECCV 2024, section 3), in one file.

Reading order: building blocks (heads, attention, FFN), the label decoder (LCIE, eq. 2-3),
the spatial branch (eq. 4-5), the correlation encoder (eq. 7-10), the model (eq. 1-11), and
``build`` at the bottom, the only place that reads a :class:`~lcie_fast.config.ModelConfig`.
The loss (eq. 12-13) is in :mod:`lcie_fast.models.losses`; the inference rewrite of the token
projections in :mod:`lcie_fast.models.fused`.

Shapes: B batch, C labels, D = sum of the fused backbone channels, h*w image tokens
(h = w = img_size / 32), E = D + h*w the width of a fused label token (eq. 6).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import ops
from ..config import ModelConfig, PreprocessConfig
from ..errors import InvalidInputError
from .backbone import Backbone


class GroupLinear(nn.Module):
    """Per-class ("group-wise") linear heads: y[b, c] = <W[c], x[b, c]> + b[c].

    Args:
        num_classes: C.
        dim: Width of each class token.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, dim) -> (B, C)."""
        return (tokens * self.weight).sum(dim=-1) + self.bias  # (B, C)


class Attention(nn.Module):
    """Multi-head attention with separate Q, K, V, output projections (no bias-free tricks).

    Separate projections keep every weight visible to the inference rewrite that fuses the
    key/value projections of all decoder layers into one GEMM, and to INT8 quantisation.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise InvalidInputError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query (B, Lq, dim), key and value (B, Lk, dim) -> (B, Lq, dim)."""
        q = self.q_proj(query)  # (B, Lq, dim)
        k = self.k_proj(key)  # (B, Lk, dim)
        v = self.v_proj(value)  # (B, Lk, dim)
        return self.attend(q, k, v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected q (B, Lq, dim), k and v (B, Lk, dim) -> (B, Lq, dim)."""
        b, lq, dim = q.shape
        heads = self.num_heads
        q = q.view(b, lq, heads, dim // heads).transpose(1, 2)  # (B, H, Lq, Dh)
        k = k.view(b, k.shape[1], heads, dim // heads).transpose(1, 2)  # (B, H, Lk, Dh)
        v = v.view(b, v.shape[1], heads, dim // heads).transpose(1, 2)  # (B, H, Lk, Dh)
        out = ops.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, H, Lq, Dh)
        out = out.transpose(1, 2).reshape(b, lq, dim)  # (B, Lq, dim)
        return self.out_proj(out)  # (B, Lq, dim)


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.ReLU() if activation == "relu" else nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class DecoderLayer(nn.Module):
    """LCIE layer: cross-attention (labels attend to image tokens) then FFN, post-norm.

    No self-attention among labels (paper 3.3): label correlations are left to the encoder.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self, labels: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One layer on image tokens already projected to this layer's keys and values.

        Args:
            labels: Label tokens (B, C, D).
            keys, values: ``k_proj`` and ``v_proj`` of the image tokens (B, N, D), any strides.
            queries: ``q_proj(labels)`` (B, C, D) when the caller has it already.

        Returns:
            Label tokens (B, C, D).
        """
        attn = self.cross_attn
        queries = attn.q_proj(labels) if queries is None else queries  # (B, C, D)
        labels = self.norm1(labels + self.dropout1(attn.attend(queries, keys, values)))  # (B, C, D)
        return self.norm2(labels + self.dropout2(self.ffn(labels)))  # (B, C, D)


class LabelDecoder(nn.Module):
    """Latent context information embedding (eq. 2): label embeddings query the image tokens.

    Args:
        num_classes: C; one learnable embedding per label.
        dim: D, the width of the fused image tokens.
        num_layers, num_heads, ffn_dim, dropout, activation: Transformer sizes.
        num_tokens: h*w, for the optional fixed sine position code on the keys.
        token_hw: (h, w) of the token grid, used only with ``pos_embed="sine"``.
        pos_embed: ``"none"`` or ``"sine"``.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        activation: str,
        token_hw: tuple[int, int],
        pos_embed: str = "none",
    ) -> None:
        super().__init__()
        self.label_embed = nn.Parameter(torch.randn(num_classes, dim))  # (C, D), as DETR's queries
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )
        pos = sine_position_code(*token_hw, dim) if pos_embed == "sine" else None
        self.register_buffer("pos", pos, persistent=False)  # (h*w, D) or None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, h*w, D) -> context-aware categorical features L_ca (B, C, D) (eq. 2)."""
        return self.decode(self.project(tokens), tokens.shape[0])  # (B, C, D)

    def project(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Image tokens (B, h*w, D) -> every layer's (keys, values), each (B, h*w, D)."""
        keys = tokens if self.pos is None else tokens + self.pos.to(tokens.dtype)  # (B, h*w, D)
        return [(layer.cross_attn.k_proj(keys), layer.cross_attn.v_proj(tokens)) for layer in self.layers]

    def decode(
        self,
        keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
        batch: int,
        first_queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layers on image tokens already projected (by :meth:`project` or the fused GEMM).

        Args:
            keys_values: One (keys, values) pair (B, h*w, D) per layer, any strides.
            batch: B.
            first_queries: The first layer's ``q_proj(label_embed)`` (C, D), if precomputed:
                it does not depend on the image.

        Returns:
            L_ca (B, C, D).
        """
        if len(keys_values) != len(self.layers):
            raise ValueError(f"expected keys and values for {len(self.layers)} layers, got {len(keys_values)}")
        labels = self.label_embed.expand(batch, -1, -1)  # (B, C, D), L_eb
        for i, (layer, (keys, values)) in enumerate(zip(self.layers, keys_values)):
            queries = None
            if i == 0 and first_queries is not None:
                queries = first_queries.expand(batch, -1, -1).to(keys.dtype)  # (B, C, D)
            labels = layer(labels, keys, values, queries)  # (B, C, D)
        return labels


def sine_position_code(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine code (DETR / Query2Label style) for an h x w grid -> (h*w, dim)."""
    if dim % 4:
        raise InvalidInputError(f"a 2-D sine position code needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 * math.pi  # (h,)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 * math.pi  # (w,)
    y = ys[:, None, None] * omega  # (h, 1, dim/4)
    x = xs[None, :, None] * omega  # (1, w, dim/4)
    code = torch.cat(
        [y.sin().expand(h, w, -1), y.cos().expand(h, w, -1), x.sin().expand(h, w, -1), x.cos().expand(h, w, -1)],
        dim=-1,
    )  # (h, w, dim)
    return code.reshape(h * w, dim)


class SpatialBranch(nn.Module):
    """Class-aware spatial features (eq. 4): a 1x1 conv D -> C; the model max-pools them (eq. 5).

    Args:
        dim: D.
        num_classes: C.
        norm: Layer-normalise each image token over its D channels before the conv (the
            backbone levels fused by MLFF differ in scale); off in the paper.
    """

    def __init__(self, dim: int, num_classes: int, norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, x_ml: torch.Tensor) -> torch.Tensor:
        """X_ml (B, D, h, w) -> L_sp (B, C, h*w)."""
        if self.norm is not None:
            x_ml = self.norm(x_ml.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, h, w), normalised over D
        return self.conv(x_ml).flatten(2)  # (B, C, h*w)


class EncoderLayer(nn.Module):
    """Standard post-norm Transformer encoder layer: self-attention then FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, L, E)."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x)))  # (B, L, E)
        return self.norm2(x + self.dropout2(self.ffn(x)))  # (B, L, E)


class CorrelationEncoder(nn.Module):
    """Label correlation encoder (eq. 7 and 9): a stack of encoder layers over label tokens."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, L, E)."""
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens


class PartialLabelBranch(nn.Module):
    """Partial-label correlation (eq. 9-10), training only.

    Drops ``num_dropped`` of the C fused label tokens at random (independently per image),
    prepends a learnable inference token, runs the encoder, and maps the inference token's
    output through its own linear E -> C head.

    Args:
        dim: E.
        num_classes: C.
        mask_ratio: Fraction of the C label tokens dropped.
        encoder: The correlation encoder to run.
        shared: ``encoder`` is the full-label path's (registered there): it is held here as a
            plain reference, so its weights appear once in ``state_dict()``, under ``encoder.``.
            Otherwise it is this branch's own submodule (``partial.encoder.``).
    """

    def __init__(
        self, dim: int, num_classes: int, mask_ratio: float, encoder: CorrelationEncoder, *, shared: bool
    ) -> None:
        super().__init__()
        # rounded half up; at least one label token always stays
        self.num_dropped = min(int(mask_ratio * num_classes + 0.5), num_classes - 1)
        self.infer_token = nn.Parameter(torch.zeros(1, 1, dim).normal_(std=0.02))  # (1, 1, E)
        self.shared = shared
        if shared:
            # a plain attribute, not a submodule: Module.__setattr__ would register it a second time
            object.__setattr__(self, "encoder", encoder)
        else:
            self.encoder = encoder
        self.head = nn.Linear(dim, num_classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused label tokens L (B, C, E) -> inference logits y_infer (B, C)."""
        b, c, e = fused.shape
        keep = c - self.num_dropped
        order = torch.rand(b, c, device=fused.device).argsort(dim=1)[:, :keep]  # (B, keep)
        masked = fused.gather(1, order.unsqueeze(-1).expand(-1, -1, e))  # (B, keep, E), L_mask
        tokens = torch.cat([self.infer_token.expand(b, -1, -1).to(masked.dtype), masked], dim=1)  # (B, 1+keep, E)
        inferred = self.encoder(tokens)[:, 0]  # (B, E), L_inf, eq. 9
        return self.head(inferred)  # (B, C), y_infer, eq. 10


class TrainOutput(NamedTuple):
    """What the model returns in train mode: final logits y and the partial branch's y_infer."""

    logits: torch.Tensor
    infer_logits: torch.Tensor | None


class LCIE(nn.Module):
    """LCIE: backbone -> MLFF -> {label decoder, spatial branch} -> fusion -> encoder -> y.

    Every module of the paper's Table 3 can be switched off. With neither ``lcie`` nor
    ``spatial`` the head is the baseline: global average pooling and one linear layer.

    Args:
        backbone: Feature extractor returning [X3, X4, X5] (or deeper levels last).
        num_classes: C.
        img_size: Square input side the model is built for (fixes h*w and E).
        mlff, lcie, spatial, full, partial, share_encoder: Table 3 switches.
        decoder_layers, encoder_layers, num_heads, ffn_dim, dropout, activation: sizes.
        decoder_pos_embed: ``"none"`` or ``"sine"`` (keys of the label decoder).
        mask_ratio: Fraction of label tokens dropped by the partial branch.
        branch_init: ``"zero"`` starts the spatial conv, the y_co head and the gain of
            ``fused_norm`` at zero (with the label decoder on, the model starts as the LCIE row:
            y = y_ca); ``"paper"`` keeps their random initialisation.
        spatial_norm: LayerNorm over the D channels of X_ml before the spatial conv.
        fused_norm: LayerNorm on the spatial half of each fused label token (eq. 6).

    ``forward(x) = forward_head(forward_features(x))`` returns logits (B, C) in eval mode and
    :class:`TrainOutput` in train mode; the partial branch never runs in eval mode and never
    reaches an exported graph.

    Attributes:
        config: The resolved ModelConfig, set by :func:`build` (None for a model built directly).
        preset: The registered preset name (``"custom"`` unless a builder names it).
    """

    config: ModelConfig | None
    preset: str

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        img_size: int,
        *,
        mlff: bool = True,
        lcie: bool = True,
        spatial: bool = True,
        full: bool = True,
        partial: bool = True,
        share_encoder: bool = True,
        decoder_layers: int = 3,
        encoder_layers: int = 3,
        num_heads: int = 4,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        decoder_pos_embed: str = "none",
        mask_ratio: float = 0.1,
        branch_init: str = "zero",
        spatial_norm: bool = False,
        fused_norm: bool = False,
    ) -> None:
        super().__init__()
        self.config = None
        self.preset = "custom"
        self.backbone = backbone
        channels = backbone.feature_info.channels()
        reduction = backbone.feature_info.reduction()[-1]
        self.mlff = mlff
        self.num_classes = num_classes
        self.img_size = img_size
        self.token_hw = (math.ceil(img_size / reduction), math.ceil(img_size / reduction))
        self.dim = sum(channels) if mlff else channels[-1]  # D
        num_tokens = self.token_hw[0] * self.token_hw[1]  # h*w
        self.fused_dim = (self.dim if lcie else 0) + (num_tokens if spatial else 0)  # E
        if (full or partial) and self.fused_dim % num_heads:
            raise InvalidInputError(
                f"the fused label width E = {self.fused_dim} (D = {self.dim if lcie else 0} + h*w = "
                f"{num_tokens if spatial else 0} at img_size {img_size}) is not divisible by num_heads={num_heads}; "
                f"choose an img_size whose token count makes it divisible, or another num_heads"
            )

        self.decoder = (
            LabelDecoder(num_classes, self.dim, decoder_layers, num_heads, ffn_dim, dropout, activation,
                         self.token_hw, decoder_pos_embed)
            if lcie else None
        )
        self.head_ca = GroupLinear(num_classes, self.dim) if lcie else None
        self.spatial = SpatialBranch(self.dim, num_classes, norm=spatial_norm) if spatial else None
        # only where the fused token feeds an encoder, so every parameter receives a gradient
        self.fused_norm = nn.LayerNorm(num_tokens) if fused_norm and spatial and (full or partial) else None
        self.baseline_head = nn.Linear(self.dim, num_classes) if not (lcie or spatial) else None

        encoder_args = (self.fused_dim, encoder_layers, num_heads, ffn_dim, dropout, activation)
        self.encoder = CorrelationEncoder(*encoder_args) if full else None
        self.head_co = GroupLinear(num_classes, self.fused_dim) if full else None
        self.partial = None
        if partial:
            shared = share_encoder and self.encoder is not None
            self.partial = PartialLabelBranch(
                self.fused_dim, num_classes, mask_ratio, self.encoder if shared else CorrelationEncoder(*encoder_args),
                shared=shared,
            )
        self._reset_transformer_parameters()
        if branch_init == "zero":
            self._zero_branch_outputs()
        self.register_load_state_dict_pre_hook(_drop_shared_encoder_copy)

    def _reset_transformer_parameters(self) -> None:
        # Xavier on every Transformer matrix, as DETR and Query2Label initialise theirs.
        for module in (self.decoder, self.encoder, self.partial):
            if module is None:
                continue
            for name, param in module.named_parameters():
                if param.dim() > 1 and name.endswith("weight") and "label_embed" not in name and "infer_token" not in name:
                    nn.init.xavier_uniform_(param)

    def _zero_branch_outputs(self) -> None:
        # y_sp = max of a zero map and y_co = a zero head: the model starts as without them
        # (y = y_ca). Gradients still flow (amax spreads its gradient over tied maxima, the zero
        # head's weight sees L_co), so each branch grows only as far as it lowers the loss. The
        # fused spatial half starts at zero too: its LayerNorm's gain starts at zero, or the norm
        # would blow the first, nearly constant maps of the zero conv up to unit scale.
        modules = (self.spatial.conv if self.spatial is not None else None, self.head_co, self.fused_norm)
        for module in modules:
            if module is not None:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone and MLFF: the features :meth:`forward_head` reads.

        Args:
            images: Images (B, 3, H, W), or image tokens (B, h*w, D) this method returned
                before (a frozen backbone's cached features), passed through.

        Returns:
            ``(tokens, x_ml)``: image tokens (B, h*w, D) and X_ml (B, D, h, w), the same values.
        """
        if images.dim() == 3:  # cached image tokens
            return images, self.tokens_to_map(images)  # (B, h*w, D), (B, D, h, w)
        features = self.backbone(images)  # [X3, X4, X5]
        levels = features if self.mlff else features[-1:]
        tokens, x_ml = ops.downsample_concat(*levels)  # (B, h*w, D), (B, D, h, w), eq. 1
        if tuple(x_ml.shape[-2:]) != self.token_hw:
            raise InvalidInputError(
                f"this model is built for {self.img_size}x{self.img_size} inputs "
                f"({self.token_hw[0]}x{self.token_hw[1]} image tokens); got images of "
                f"{tuple(images.shape[-2:])} giving {tuple(x_ml.shape[-2:])} tokens"
            )
        return tokens, x_ml

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, h*w, D) -> X_ml (B, D, h, w), a channels-last view of the same values."""
        b, n, d = tokens.shape
        if (n, d) != (self.token_hw[0] * self.token_hw[1], self.dim):
            raise InvalidInputError(
                f"expected images (B, 3, {self.img_size}, {self.img_size}) or image tokens "
                f"(B, {self.token_hw[0] * self.token_hw[1]}, {self.dim}); got {tuple(tokens.shape)}"
            )
        return tokens.transpose(1, 2).unflatten(2, self.token_hw)  # (B, D, h, w)

    def label_features(
        self, tokens: torch.Tensor, x_ml: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """L_ca (B, C, D) and L_sp (B, C, h*w), each None where its module is off.

        The one step of the head that projects the image tokens; the inference rewrite in
        :mod:`lcie_fast.models.fused` overrides it and nothing else.

        Args:
            tokens: Image tokens (B, h*w, D).
            x_ml: The same values as X_ml (B, D, h, w).
        """
        l_ca = self.decoder(tokens) if self.decoder is not None else None  # (B, C, D), eq. 2
        l_sp = self.spatial(x_ml) if self.spatial is not None else None  # (B, C, h*w), eq. 4
        return l_ca, l_sp

    def head_branches(
        self, features: tuple[torch.Tensor, torch.Tensor], with_partial: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """The head (eq. 2-11) on the output of :meth:`forward_features`, every intermediate by name.

        Args:
            features: ``(tokens (B, h*w, D), x_ml (B, D, h, w))``.
            with_partial: Run the partial branch; defaults to ``self.training``.

        Returns:
            Keys (present when the module is on): ``tokens``, ``x_ml``, ``l_ca``, ``y_ca``,
            ``l_sp``, ``y_sp``, ``fused``, ``l_co``, ``y_co``, ``y_infer``, ``logits`` (B, C).
        """
        tokens, x_ml = features
        out: dict[str, torch.Tensor] = {"tokens": tokens, "x_ml": x_ml}
        if self.baseline_head is not None:
            out["logits"] = self.baseline_head(x_ml.mean(dim=(2, 3)))  # (B, C)
            return out
        parts, logits = [], []
        l_ca, l_sp = self.label_features(tokens, x_ml)  # (B, C, D), (B, C, h*w), eq. 2 and 4
        if l_ca is not None:
            out["l_ca"] = l_ca
            out["y_ca"] = self.head_ca(l_ca)  # (B, C), eq. 3
            parts.append(l_ca)
            logits.append(out["y_ca"])
        if l_sp is not None:
            out["l_sp"], out["y_sp"] = l_sp, l_sp.amax(dim=-1)  # (B, C, h*w), (B, C), eq. 5
            spatial_half = self.fused_norm(l_sp) if self.fused_norm is not None else l_sp  # (B, C, h*w)
            parts.append(spatial_half.to(parts[0].dtype) if parts else spatial_half)
            logits.append(out["y_sp"])
        fused = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (B, C, E), L, eq. 6
        out["fused"] = fused
        if self.encoder is not None:
            out["l_co"] = self.encoder(fused)  # (B, C, E), eq. 7
            out["y_co"] = self.head_co(out["l_co"])  # (B, C), eq. 8
            logits.append(out["y_co"])
        out["logits"] = sum(logits[1:], logits[0])  # (B, C), eq. 11
        if self.partial is not None and (self.training if with_partial is None else with_partial):
            out["y_infer"] = self.partial(fused)  # (B, C), eq. 9-10
        return out

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | TrainOutput:
        """:meth:`forward_features`'s output -> logits y (B, C); in train mode TrainOutput(y, y_infer)."""
        out = self.head_branches(features)
        if self.training:
            return TrainOutput(out["logits"], out.get("y_infer"))
        return out["logits"]

    def forward_branches(self, images: torch.Tensor, with_partial: bool | None = None) -> dict[str, torch.Tensor]:
        """Every intermediate of eq. 1-11 by name (for tests, analysis and the trainer).

        Args:
            images: Images (B, 3, H, W) or cached image tokens (B, h*w, D), as :meth:`forward_features`.
            with_partial: Run the partial branch; defaults to ``self.training``.

        Returns:
            The dict of :meth:`head_branches`.
        """
        return self.head_branches(self.forward_features(images), with_partial)

    def forward(self, images: torch.Tensor) -> torch.Tensor | TrainOutput:
        """Images (B, 3, H, W), or their image tokens (B, h*w, D) from a feature cache -> logits
        (B, C); in train mode a TrainOutput(logits, y_infer)."""
        return self.forward_head(self.forward_features(images))


def _drop_shared_encoder_copy(model: LCIE, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: read state dicts written while the shared encoder was
    registered under both paths (``encoder.*`` and ``partial.encoder.*``, the same tensors).

    The ``partial.encoder.*`` copy fills any ``encoder.*`` key it lacks, then is dropped.
    """
    if model.partial is None or not model.partial.shared:
        return
    old, new = f"{prefix}partial.encoder.", f"{prefix}encoder."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict.setdefault(new + key[len(old):], state_dict[key])
        del state_dict[key]


def build(config: ModelConfig, pretrained: bool | str | Path | None = None, *, preset: str = "custom") -> LCIE:
    """Build an LCIE model from a ModelConfig; ``model.config`` holds the resolved config.

    Args:
        config: Architecture; ``preprocess=None`` takes the backbone's mean/std.
        pretrained: Backbone weights: None (random), True (local ImageNet weights) or a path.
        preset: The preset name ``config`` came from, kept as ``model.preset``.
    """
    backbone = Backbone(config.backbone, config.feature_reductions, pretrained=pretrained, **config.backbone_kwargs)
    model = LCIE(
        backbone,
        config.num_classes,
        config.img_size,
        mlff=config.mlff,
        lcie=config.lcie,
        spatial=config.spatial,
        full=config.full,
        partial=config.partial,
        share_encoder=config.share_encoder,
        decoder_layers=config.decoder_layers,
        encoder_layers=config.encoder_layers,
        num_heads=config.num_heads,
        ffn_dim=config.ffn_dim,
        dropout=config.dropout,
        activation=config.activation,
        decoder_pos_embed=config.decoder_pos_embed,
        mask_ratio=config.mask_ratio,
        branch_init=config.branch_init,
        spatial_norm=config.spatial_norm == "layernorm",
        fused_norm=config.fused_norm,
    )
    if config.preprocess is not None and config.preprocess.input_size != config.img_size:
        raise InvalidInputError(
            f"model.preprocess.input_size={config.preprocess.input_size} differs from "
            f"model.img_size={config.img_size}"
        )
    if config.preprocess is None:
        data_cfg = backbone.body.pretrained_cfg
        preprocess = PreprocessConfig(
            input_size=config.img_size,
            mean=tuple(float(v) for v in data_cfg.get("mean", PreprocessConfig.mean)),
            std=tuple(float(v) for v in data_cfg.get("std", PreprocessConfig.std)),
        )
        config = dataclasses.replace(config, preprocess=preprocess)
    model.config = config
    model.preset = preset
    return model
