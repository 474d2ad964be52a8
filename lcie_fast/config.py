"""Frozen configuration dataclasses, and their YAML / plain-dict round trip.

Only builders read a config; modules take explicit arguments. A resolved config
(no ``None`` left that a builder would fill in) is saved next to every checkpoint,
run and engine, so a result can always be traced back to what produced it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file that cannot be used, with the field named."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input. Defined once, read by every backend.

    Attributes:
        input_size: Side of the square network input in pixels.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided after the mean.
        resize: ``"stretch"`` resizes the whole image to ``input_size`` x ``input_size``
            without keeping the aspect ratio (the paper's protocol).
        interpolation: ``"bilinear"`` (antialiased when shrinking) or ``"bicubic"``.
    """

    input_size: int = 448
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "stretch"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.input_size <= 0:
            raise ConfigError(f"preprocess.input_size must be positive, got {self.input_size}")
        if self.resize != "stretch":
            raise ConfigError(f"preprocess.resize must be 'stretch', got {self.resize!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(
                f"preprocess.interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"preprocess.mean/std need 3 values, std > 0; got {self.mean}, {self.std}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an LCIE model (paper section 3); every Table 3 module is a switch.

    Attributes:
        backbone: timm model name, built with ``features_only=True``.
        img_size: Square input side; fixes h*w and so the fused width E = D + h*w.
        num_classes: Number of labels C.
        feature_reductions: Strides of the backbone levels fused by MLFF (X3, X4, X5).
        mlff: Fuse all levels (eq. 1); off means X5 alone.
        lcie: Label decoder (eq. 2-3): label queries cross-attend to the image tokens.
        spatial: Spatial branch (eq. 4-5): 1x1 conv D -> C, then global max pool.
        full: Full-label correlation encoder over the fused label tokens (eq. 7-8).
        partial: Partial-label branch (eq. 9-10), training only.
        share_encoder: The partial branch reuses the full-label encoder (paper) or owns one.
        decoder_layers: Label decoder depth.
        encoder_layers: Correlation encoder depth.
        num_heads: Attention heads, in both decoder and encoder.
        ffn_dim: Hidden width of every feed-forward block.
        dropout: Dropout in attention weights, residual branches and FFNs.
        activation: ``"relu"`` or ``"gelu"`` in the FFNs.
        decoder_pos_embed: ``"none"``, or ``"sine"`` to add a fixed 2-D sine code to the keys.
        mask_ratio: Fraction of label tokens the partial branch drops (rounded half up).
        branch_init: ``"zero"``: the spatial conv, the full-label head y_co (and the gain of
            ``fused_norm``) start at zero, so the model starts as the LCIE row of Table 3
            (y = y_ca) and the spatial and correlation branches must earn their contribution;
            ``"paper"``: every layer keeps its default random initialisation (y_sp then starts
            large: a random 1x1 conv max-pooled over unnormalised backbone features).
        spatial_norm: ``"layernorm"`` normalises each token of X_ml over its D channels before
            the spatial conv (the fused backbone levels differ in scale); ``"none"`` (paper).
            Ignored without the spatial branch (so presets can share one default).
        fused_norm: LayerNorm on the spatial half L_sp of each fused label token (eq. 6), so it
            enters the encoder at the scale of the layer-normalised L_ca half; off = paper.
            Ignored unless the spatial branch feeds the correlation encoder (full or partial).
        backbone_kwargs: Extra keyword arguments for ``timm.create_model``.
        preprocess: Input preprocessing; ``None`` asks the builder to take the backbone's.
    """

    backbone: str = "resnet101"
    img_size: int = 448
    num_classes: int = 80
    feature_reductions: tuple[int, ...] = (8, 16, 32)
    mlff: bool = True
    lcie: bool = True
    spatial: bool = True
    full: bool = True
    partial: bool = True
    share_encoder: bool = True
    decoder_layers: int = 3
    encoder_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    activation: str = "relu"
    decoder_pos_embed: str = "none"
    mask_ratio: float = 0.1
    branch_init: str = "zero"
    spatial_norm: str = "none"
    fused_norm: bool = False
    backbone_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"model.activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.decoder_pos_embed not in ("none", "sine"):
            raise ConfigError(
                f"model.decoder_pos_embed must be 'none' or 'sine', got {self.decoder_pos_embed!r}"
            )
        if self.branch_init not in ("zero", "paper"):
            raise ConfigError(f"model.branch_init must be 'zero' or 'paper', got {self.branch_init!r}")
        if self.spatial_norm not in ("none", "layernorm"):
            raise ConfigError(f"model.spatial_norm must be 'none' or 'layernorm', got {self.spatial_norm!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.full and not (self.lcie or self.spatial):
            raise ConfigError("model.full needs label tokens: turn on model.lcie or model.spatial")
        if self.partial and not (self.lcie or self.spatial):
            raise ConfigError("model.partial needs label tokens: turn on model.lcie or model.spatial")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (dicts, lists, numbers, strings) of a config dataclass: YAML and JSON safe."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build config dataclass ``cls`` from plain data, checking every field name and type.

    Raises:
        ConfigError: an unknown field (with the known ones listed), or a value of the wrong type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return from_dict(hint, value, where=name + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(data: Any, path: str | Path) -> None:
    """Write a config dataclass or plain mapping as YAML (keys in declaration order)."""
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value.

    Raises:
        ConfigError: when ``text`` has no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: train.amp=off means "off"
    return key.strip().split("."), value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with every ``key=value`` override applied in order."""
    import copy

    merged = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return merged


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training and validation images come from and how they are loaded.

    Attributes:
        train: Data spec of the training set (see :mod:`lcie_fast.data.datasets`).
        val: Data spec of the validation set ('' = no evaluation).
        partial_ratio: Drop each known training label with this probability (paper 4.2); 0 = full labels.
        partial_seed: Seed of the dropped labels (saved with the run).
        loader: ``auto`` (DALI on a GPU when installed, else torch), ``torch`` or ``dali``.
        workers: Decoder processes (torch loader) or threads (DALI).
        on_error: ``raise`` on manifest problems, or ``skip`` bad rows with a report.
        augment: Training augmentation policy after the resize and flip: ``none``,
            ``trivialaugment`` (torchvision's TrivialAugmentWide) or ``randaugment``.
        crop_scale: (low, high) area fraction of a random resized crop before the resize;
            [1, 1] (default) keeps the whole image, as the paper does.
    """

    train: str = ""
    val: str = ""
    partial_ratio: float = 0.0
    partial_seed: int = 0
    loader: str = "auto"
    workers: int = 2
    on_error: str = "raise"
    augment: str = "none"
    crop_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.augment not in ("none", "trivialaugment", "randaugment"):
            raise ConfigError(f"data.augment must be none, trivialaugment or randaugment, got {self.augment!r}")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        if self.loader not in ("auto", "torch", "dali"):
            raise ConfigError(f"data.loader must be auto, torch or dali, got {self.loader!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be raise or skip, got {self.on_error!r}")
        if not 0.0 <= self.partial_ratio < 1.0:
            raise ConfigError(f"data.partial_ratio must be in [0, 1), got {self.partial_ratio}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The defaults are the paper's recipe (section 4.1): SGD, momentum 0.9,
    weight decay 1e-4, lr 0.01 decayed x0.1 every 30 epochs, 100 epochs, batch 16 per GPU.

    The documented fine-tuning alternative: ``optimizer=adamw lr=1e-4 schedule=onecycle
    weight_decay=1e-2 ema=true``.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step on each process (the global batch is this x world size).
        optimizer: ``sgd`` or ``adamw`` (AdamW: no weight decay on biases and norm weights).
        lr: Peak learning rate (not scaled with the world size).
        momentum: SGD momentum.
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        schedule: ``step`` (x gamma every step_epochs), ``onecycle`` (cosine warm-up/down) or ``constant``.
        step_epochs: Epochs between decays of the step schedule.
        gamma: Decay factor of the step schedule.
        warmup_pct: Fraction of the one-cycle schedule spent warming up.
        ema: Keep an exponential moving average of the weights, evaluated beside the model.
        ema_decay: Its decay per step.
        grad_clip: Clip the global gradient norm to this (0 = off).
        amp: ``auto`` (bf16 on GPUs that support it, else fp16 with a GradScaler; bf16 on CPUs
            with native bf16 (AVX-512 BF16, AMX), fp32 on other CPUs), ``bf16``, ``fp16`` or ``off``.
        channels_last: Model and inputs in channels-last memory format.
        compile: Run the training forward through ``torch.compile``.
        freeze_backbone: Train the heads only (backbone weights and BatchNorm statistics frozen).
        freeze_bn: Keep the backbone's BatchNorm statistics (and affine weights) at their
            pretrained values while the rest of the backbone trains: small batches give noisy
            batch statistics, which drift the running averages the model is evaluated with.
        cache_features: With ``freeze_backbone``, compute the backbone's image tokens of every
            training image (both flips) and validation image once, in fp32, and train the heads
            on them: the run an fp32 backbone would give (within float reassociation), several
            times faster. Needs the tokens in host memory (the trainer says how much; every
            process of a node holds a copy) and no augmentation.
        feature_cache_dir: Also keep those tokens in this folder, for later runs on the same
            data and backbone ('' = memory only).
        backbone_lr_mult: Backbone learning rate = lr x this.
        loss_alpha, loss_beta: Weights of BCE(y) and BCE(y_infer) (paper: 1.0, 0.1).
        loss_normalization: ``sum`` over labels, mean over images (eq. 12 as written: the
            learning rates of the paper's SGD recipe assume it) or ``mean`` over known labels
            (eq. 12 / C: a C-times lower effective SGD learning rate; AdamW is indifferent).
        seed: Seed of initialisation, data order, flips, dropout and token dropping.
        eval_every: Evaluate every this many epochs (and after the last).
        select: Which weights ``best.pt`` holds: ``best`` (highest validation mAP, of the model
            or its EMA; point ``data.val`` at a held-out slice of the training data, not at the
            split you report) or ``last`` (the final weights, the EMA's when ``ema`` is on: no
            choice made on the validation data, which is then only monitored).
        checkpoint_every_steps: Also checkpoint within an epoch every this many steps (0 = off).
        max_steps_per_epoch: Cap on steps per epoch (0 = the whole set): short runs and demos.
        log_every: Steps between log lines.
        tensorboard: Also write TensorBoard scalars.
        threshold: Probability threshold of the evaluation metrics.
    """

    epochs: int = 100
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    step_epochs: int = 30
    gamma: float = 0.1
    warmup_pct: float = 0.2
    ema: bool = False
    ema_decay: float = 0.9997
    grad_clip: float = 0.0
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    freeze_backbone: bool = False
    freeze_bn: bool = False
    cache_features: bool = False
    feature_cache_dir: str = ""
    backbone_lr_mult: float = 1.0
    loss_alpha: float = 1.0
    loss_beta: float = 0.1
    loss_normalization: str = "sum"
    seed: int = 0
    eval_every: int = 1
    select: str = "best"
    checkpoint_every_steps: int = 0
    max_steps_per_epoch: int = 0
    log_every: int = 10
    tensorboard: bool = False
    threshold: float = 0.5

    def __post_init__(self) -> None:
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("step", "onecycle", "constant"),
                   "amp": ("auto", "bf16", "fp16", "off"), "loss_normalization": ("mean", "sum"),
                   "select": ("best", "last")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.cache_features and not self.freeze_backbone:
            raise ConfigError("train.cache_features needs train.freeze_backbone=true (a training backbone's "
                              "features change every step)")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run: model, data, optimisation, and where it writes.

    Attributes:
        model: Registered preset name.
        model_overrides: :class:`ModelConfig` fields to change (e.g. ``img_size: 224``).
        pretrained: Backbone weights: true (local ImageNet weights), false, or a path.
        init_checkpoint: Start from this lcie_fast checkpoint's weights and architecture
            (fine-tuning; ``model_overrides`` still apply on top, ``pretrained`` is unused).
        data: :class:`DataConfig`.
        train: :class:`TrainConfig`.
        output: Run folder (checkpoints, log.jsonl, config.yaml, metrics).
    """

    model: str = "lcie_r101_448"
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: bool | str = True
    init_checkpoint: str = ""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    output: str = "runs/lcie"
