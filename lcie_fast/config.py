"""Frozen configuration dataclasses, their YAML / plain-dict round trip, and run resolution.

Only builders read a config; modules take explicit arguments. A resolved config
(no ``None`` left that a builder would fill in) is saved next to every checkpoint,
run and engine, so a result can always be traced back to what produced it.

A run resolves along one path (:func:`resolve_run_config`): the defaults, then YAML files in
order, then typed flags (Python values, set as they are, never re-parsed), then ``key=value``
dotlist entries (read as YAML scalars, then as the field's type: ``output=2024`` is the string
``"2024"``). :func:`from_dict` turns the merged plain data into the dataclasses, checking every
field name and type; errors name the field path (``train.lr``).

The plain data becomes dataclasses through dacite (``from_dict`` with ``Config(strict=True,
cast=[tuple], type_hooks=...)``), not OmegaConf structured configs: dacite is one small
dependency-free module that calls the frozen dataclasses' own constructors (so their
``__post_init__`` checks run) and checks ``Literal``, ``X | Y`` and fixed-length tuple types.
OmegaConf 2.3 rejects ``Literal`` annotations (2.4, the version nvidia-modelopt installs
here, accepts them), converts an int to a ``str`` field only with a deprecation warning in 2.4,
builds mutable ``DictConfig`` objects (tuples become ``ListConfig``) that need converting back
with ``OmegaConf.to_object``, and brings antlr4 along.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import dacite
import yaml

from .errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
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
    resize: Literal["stretch"] = "stretch"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        _check_choices(self, "preprocess")
        if self.input_size <= 0:
            raise ConfigError(f"preprocess.input_size must be positive, got {self.input_size}")
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
    activation: Literal["relu", "gelu"] = "relu"
    decoder_pos_embed: Literal["none", "sine"] = "none"
    mask_ratio: float = 0.1
    branch_init: Literal["zero", "paper"] = "zero"
    spatial_norm: Literal["none", "layernorm"] = "none"
    fused_norm: bool = False
    backbone_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")
        _check_choices(self, "model")
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


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build config dataclass ``cls`` from plain data, checking every field name and type.

    Lists become tuples and integers floats where the field says so; nothing else is converted
    (``"5"`` is not an integer: :func:`resolve_run_config` reads ``key=value`` text as its field's
    type before it gets here).

    Args:
        cls: A config dataclass.
        data: Its fields as plain data (missing fields keep their defaults).
        where: Prefix of the field paths in error messages (e.g. ``"model_config."``).

    Raises:
        ConfigError: an unknown field (with the known ones listed), or a value of the wrong type.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__} must be a mapping, got {data!r}")
    try:
        return dacite.from_dict(cls, dict(data), _dacite_config(cls))
    except _UnknownFields as err:
        raise _unknown_fields(err.data, err.hints, f"{where}{err.field_path}.") from None
    except dacite.UnexpectedDataError:
        raise _unknown_fields(data, _hints(cls), where) from None
    except dacite.WrongTypeError as err:
        raise ConfigError(f"{where}{err.field_path} must be {_describe(err.field_type)}, got {err.value!r}") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {err}") from None


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
    loader: Literal["auto", "torch", "dali"] = "auto"
    workers: int = 2
    on_error: Literal["raise", "skip"] = "raise"
    augment: Literal["none", "trivialaugment", "randaugment"] = "none"
    crop_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        if not 0.0 <= self.partial_ratio < 1.0:
            raise ConfigError(f"data.partial_ratio must be in [0, 1), got {self.partial_ratio}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The defaults are the paper's recipe (section 4.1): SGD, momentum 0.9,
    weight decay 1e-4, lr 0.01 decayed x0.1 every 30 epochs, 100 epochs, batch 16 per GPU.

    The documented fine-tuning alternative: ``optimizer=adamw lr=1e-4 schedule=onecycle
    weight_decay=1e-2 ema=true``.

    The paper's lr 0.01 assumes its loss, eq. 12, which sums the BCE over labels: that is
    ``loss_normalization="sum"``. ``"mean"`` divides it by the number of labels C, which
    scales SGD's steps by 1/C (see ``loss_normalization``).

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
        loss_normalization: ``sum`` (the paper's eq. 12: BCE summed over the C labels, then
            averaged over the images) or ``mean`` (averaged over every known image-label pair).
            ``mean`` is not eq. 12: with full labels it is eq. 12 / C, so its gradients are C
            times smaller, and under SGD ``lr`` acts C times smaller than with ``sum`` (the
            paper's lr 0.01 with ``mean`` on COCO's 80 labels trains like 0.01 / 80 with
            ``sum``, weight decay aside; to match the paper with ``mean``, raise ``lr`` C-fold). AdamW is
            indifferent to the loss scale.
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
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["step", "onecycle", "constant"] = "step"
    step_epochs: int = 30
    gamma: float = 0.1
    warmup_pct: float = 0.2
    ema: bool = False
    ema_decay: float = 0.9997
    grad_clip: float = 0.0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    compile: bool = False
    freeze_backbone: bool = False
    freeze_bn: bool = False
    cache_features: bool = False
    feature_cache_dir: str = ""
    backbone_lr_mult: float = 1.0
    loss_alpha: float = 1.0
    loss_beta: float = 0.1
    loss_normalization: Literal["sum", "mean"] = "sum"
    seed: int = 0
    eval_every: int = 1
    select: Literal["best", "last"] = "best"
    checkpoint_every_steps: int = 0
    max_steps_per_epoch: int = 0
    log_every: int = 10
    tensorboard: bool = False
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_choices(self, "train")
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

    def __post_init__(self) -> None:
        # checked when the run is loaded, not when training reaches the model builder
        object.__setattr__(self, "model_overrides", check_model_overrides(self.model_overrides))


def check_model_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Typed copy of ``model_overrides``: each key a :class:`ModelConfig` field, each value of its type.

    Values are built as the field's type (a list becomes a tuple, a ``preprocess`` mapping a
    :class:`PreprocessConfig`), but no :class:`ModelConfig` is built: checks across fields wait
    for the preset the overrides apply to.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, named ``model_overrides.<key>``.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"model_overrides must be a mapping, got {overrides!r}")
    if set(overrides) - set(_hints(ModelConfig)):
        raise _unknown_fields(overrides, _hints(ModelConfig), "model_overrides.")
    built = from_dict(_overrides_class(tuple(overrides)), overrides, where="model_overrides.")
    return {key: getattr(built, key) for key in overrides}


@functools.cache
def _overrides_class(keys: tuple[str, ...]) -> type:
    """A dataclass of just these :class:`ModelConfig` fields, without defaults or cross-field checks."""
    hints = _hints(ModelConfig)
    return dataclasses.make_dataclass("ModelOverrides", [(k, hints[k]) for k in keys], frozen=True)


def resolve_run_config(config_files: Sequence[str | Path], flags: Mapping[str, Any],
                       dotlist: Sequence[str]) -> RunConfig:
    """Defaults < YAML files (in order) < typed flags < ``key=value`` dotlist entries.

    A saved run's ``config.yaml`` resolves back to the same :class:`RunConfig`.

    Args:
        config_files: YAML files, later ones overriding earlier ones (``model_overrides`` is
            replaced whole, every other section merged key by key).
        flags: Dotted field path -> Python value (``{"data.train": "yes"}``), set as given:
            already typed, never parsed; ``None`` means not given.
        dotlist: ``a.b=value`` entries: each value is read as a YAML scalar, then as its
            field's type where YAML guessed another (``output=2024`` is ``"2024"``, ``amp=off``
            is ``"off"``); on bool fields only ``true`` / ``false`` are booleans.

    Raises:
        ConfigError: a file that cannot be read, an entry without ``=``, an unknown field or a
            value of the wrong type, with the field path named.
    """
    data: dict[str, Any] = to_dict(RunConfig())
    for path in config_files:
        data = _deep_merge(data, load_yaml(path))
    for key, value in flags.items():
        if value is not None:
            _set_path(data, key, value)
    for text in dotlist:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=5)")
        _set_path(data, key, _read_as(raw, _field_type(key)))
    return from_dict(RunConfig, data)


class _UnknownFields(dacite.DaciteFieldError):
    """Unknown keys in a nested section (dacite's own error for them carries no field path)."""

    def __init__(self, data: Mapping[str, Any], hints: dict[str, Any]) -> None:
        super().__init__()
        self.data, self.hints = data, hints


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _dacite_config(cls: type) -> dacite.Config:
    """Strict dacite settings for ``cls``: a hook per nested dataclass reports unknown keys with their path."""

    def keys_of(section: type) -> Any:
        def check(value: Any) -> Any:
            if isinstance(value, Mapping) and set(value) - set(_hints(section)):
                raise _UnknownFields(value, _hints(section))
            return value

        return check

    def not_text(hint: Any) -> Any:
        def check(value: Any) -> Any:
            if isinstance(value, (str, bytes, Mapping)):  # dacite would iterate over it
                raise dacite.WrongTypeError(field_type=hint, value=value)
            return value

        return check

    hooks: dict[Any, Any] = {int: _int, float: _float, str: _str}
    pending = [cls]
    while pending:
        for hint in _hints(pending.pop()).values():
            for part in _parts(hint):
                if dataclasses.is_dataclass(part) and part not in hooks:
                    hooks[part] = keys_of(part)
                    pending.append(part)
                elif typing.get_origin(part) in (tuple, list):
                    hooks[part] = not_text(part)
    return dacite.Config(strict=True, cast=[tuple], type_hooks=hooks)


def _parts(hint: Any) -> list[Any]:
    """``hint`` and the types inside it (union members, collection items)."""
    return [hint, *(p for arg in typing.get_args(hint) if arg is not Ellipsis for p in _parts(arg))]


def _members(hint: Any) -> tuple[Any, ...]:
    """The members of a union, or ``(hint,)``."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _int(value: Any) -> Any:
    if isinstance(value, bool):  # bool is an int to Python, not to a config
        raise dacite.WrongTypeError(field_type=int, value=value)
    return value


def _float(value: Any) -> Any:
    if isinstance(value, bool):
        raise dacite.WrongTypeError(field_type=float, value=value)
    return float(value) if isinstance(value, int) else value


def _str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _describe(hint: Any) -> str:
    """What a field of type ``hint`` takes, in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        fixed = origin is tuple and Ellipsis not in args
        return f"a list of {len(args)} values" if fixed else "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _check_choices(config: Any, section: str) -> None:
    """Check the ``Literal`` fields of a dataclass built directly (``from_dict`` checks them before)."""
    for name, hint in _hints(type(config)).items():
        if typing.get_origin(hint) is Literal and getattr(config, name) not in typing.get_args(hint):
            raise ConfigError(f"{section}.{name} must be {_describe(hint)}, got {getattr(config, name)!r}")


def _unknown_fields(data: Mapping[str, Any], hints: dict[str, Any], where: str) -> ConfigError:
    unknown = sorted(set(data) - set(hints))
    return ConfigError(f"unknown field(s) {', '.join(where + k for k in unknown)}; known: {', '.join(sorted(hints))}")


def _field_type(path: str) -> Any:
    """Type of the :class:`RunConfig` field at dotted ``path`` (``model_overrides.x``: ModelConfig's ``x``)."""
    keys = path.split(".")
    hint: Any = RunConfig
    for depth, key in enumerate(keys):
        sections = [m for m in _members(hint) if dataclasses.is_dataclass(m)]
        if not sections:
            return Any  # inside a free-form mapping (backbone_kwargs)
        hints = _hints(sections[0])
        if key not in hints:
            raise _unknown_fields({key: None}, hints, "".join(k + "." for k in keys[:depth]))
        hint = ModelConfig if (sections[0] is RunConfig and key == "model_overrides") else hints[key]
    return hint


def _read_as(raw: str, hint: Any) -> Any:
    """A dotlist value: its YAML scalar, or the text itself where the field takes a string and YAML saw another type."""
    text = raw.strip()
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and text.lower() not in ("true", "false"):
        value = text  # YAML 1.1 reads on/off/yes/no as booleans: train.amp=off means "off"
    kinds = {type(a) for m in _members(hint) if typing.get_origin(m) is Literal for a in typing.get_args(m)}
    kinds |= {m for m in _members(hint) if isinstance(m, type) and not typing.get_args(m)}
    if str in kinds and type(value) not in kinds:
        value = text  # output=2024 names the folder "2024"; a path with ": " is not a mapping
    return value


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model_overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
