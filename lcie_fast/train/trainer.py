"""The training loop: AMP, channels-last, DDP under torchrun, exact resume, evaluation.

One process per GPU (``torchrun --nproc_per_node=N -m lcie_fast train ...``; add
``--nnodes``/``--rdzv-endpoint`` for several nodes); without torchrun a single process; on
CPUs the same code runs with the gloo backend.

A run folder holds ``config.yaml`` (the resolved RunConfig), ``log.jsonl`` (one record per
log line, epoch and event), ``last.pt`` (the full training state, written atomically every
epoch and every ``checkpoint_every_steps``), ``best.pt`` (best validation mAP, model only),
``metrics.json`` and ``bad_images.txt``.

Exact resume: ``last.pt`` holds model, optimiser, scheduler, GradScaler, EMA, epoch, position
in the epoch, and every rank's RNG states; the data order and flips are pure functions of
(seed, epoch), so a resumed run replays exactly what the interrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import RunConfig, save_yaml, to_dict
from ..data.augment import Augment
from ..data.datasets import MultiLabelSet, absolute_spec, load_data_spec
from ..data.partial import drop_labels
from ..data.transforms import Preprocess
from ..errors import InvalidInputError, UserError
from ..io import write_json
from ..metrics import format_metrics
from ..models import build, create_model
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.losses import LCIELoss
from . import distributed
from .amp import AmpPolicy
from .ema import ModelEMA
from .evaluate import predict, score
from .schedules import make_schedule


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message says where and what to change."""


class NothingToTrainOn(InvalidInputError):
    """A data set holds no image, or an epoch could not decode a single batch of it."""


# Fault injection for the resume tests: the process dies (no cleanup) after this many steps.
CRASH_ENV = "LCIE_FAST_CRASH_AFTER_STEPS"
# Settings a resumed run must share with the run it continues (the rest, e.g. epochs or logging,
# may change). Defaults change between versions: the saved run config is the reference.
RESUME_MUST_MATCH = ("optimizer", "lr", "batch_size", "weight_decay", "momentum", "schedule", "amp",
                     "loss_normalization", "loss_alpha", "loss_beta", "freeze_backbone", "freeze_bn",
                     "backbone_lr_mult", "ema", "seed")


def make_loader(data, preprocess, batch_size: int, *, train: bool, kind: str, seed: int, workers: int,
                info: distributed.DistInfo, channels_last: bool, augment: Augment | None = None):
    """The torch or DALI loader for ``data`` (``auto``: DALI on a GPU when installed, else torch)."""
    from ..data.dali import dali_unavailable_reason

    if kind == "auto":
        kind = "dali" if info.device.type == "cuda" and not dali_unavailable_reason() else "torch"
    common = dict(train=train, seed=seed, device=info.device, rank=info.rank, world_size=info.world_size,
                  channels_last=channels_last, augment=augment)
    if kind == "dali":
        from ..data.dali import DaliLoader

        return DaliLoader(data, preprocess, batch_size, threads=max(workers, 1), **common)
    from ..data.loader import TorchLoader

    return TorchLoader(data, preprocess, batch_size, workers=workers, **common)


def backbone_batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every BatchNorm layer of ``model.backbone`` (timm's BatchNormAct2d included)."""
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Trains one RunConfig. ``fit()`` runs it to the end and returns the final metrics.

    Args:
        config: The run.
        resume: ``last.pt`` of an interrupted run to continue exactly, or ``"auto"`` to continue
            from ``<output>/last.pt`` when it exists.
        device: ``cpu`` or ``cuda`` (default: a GPU when visible).
        progress: Show tqdm progress bars (main process only).
    """

    def __init__(self, config: RunConfig, *, resume: str | None = None, device: str | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.info = distributed.setup(device)
        self.out = Path(config.output)
        self.writer = None
        tcfg = config.train
        torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
        random.seed(tcfg.seed)
        np.random.seed(tcfg.seed)

        self._load_data()
        self._build_model()
        self._build_optimisation()
        self.criterion = LCIELoss(tcfg.loss_alpha, tcfg.loss_beta, tcfg.loss_normalization)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_map = float("-inf")
        if resume == "auto":
            resume = str(self.out / "last.pt") if (self.out / "last.pt").is_file() else None
        if resume:
            self._resume(resume)
        # per-rank streams for dropout and token dropping, reproducible from the seed
        if not resume:
            torch.manual_seed(tcfg.seed * 1000 + self.info.rank)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(config, self.out / "config.yaml")
        if tcfg.tensorboard and self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    # ----------------------------------------------------------------------------- setup
    def _load_data(self) -> None:
        dcfg = self.config.data
        if not dcfg.train:
            raise InvalidInputError("data.train is empty: give a data spec (e.g. --data path/to/train)")
        train_set = _nonempty(load_data_spec(dcfg.train, on_error=dcfg.on_error), dcfg.train, "--data (data.train)")
        self.label_names = list(train_set.label_names)
        self.partial_stats = None
        if dcfg.partial_ratio > 0:
            train_set, self.partial_stats = drop_labels(train_set, dcfg.partial_ratio, dcfg.partial_seed)
        self.train_set = train_set
        self.val_set = None
        if dcfg.val:
            # checked here, not after the first epoch: an empty or broken --val-data costs no training
            self.val_set = _nonempty(load_data_spec(dcfg.val, label_names=self.label_names, on_error=dcfg.on_error),
                                     dcfg.val, "--val-data (data.val)")

    def _build_model(self) -> None:
        cfg, tcfg = self.config, self.config.train
        if cfg.init_checkpoint:
            # fine-tuning: the checkpoint's own architecture (whatever the defaults are today),
            # with this run's model_overrides on top
            checkpoint = load_checkpoint(cfg.init_checkpoint)
            if checkpoint.meta.preset != cfg.model:
                raise InvalidInputError(f"init_checkpoint {cfg.init_checkpoint} holds preset '{checkpoint.meta.preset}', "
                                 f"this run trains '{cfg.model}'")
            # model_overrides were checked against ModelConfig's fields when the config was loaded
            model_config = dataclasses.replace(checkpoint.meta.model_config, num_classes=len(self.label_names),
                                               **cfg.model_overrides)
            model = build(model_config, pretrained=None)
            model.preset = cfg.model
            try:
                model.load_state_dict(checkpoint.model_state)
            except RuntimeError as err:
                raise InvalidInputError(f"init_checkpoint {cfg.init_checkpoint} does not fit {cfg.model} with "
                                 f"{len(self.label_names)} labels: {err}") from None
        else:
            model = create_model(cfg.model, num_classes=len(self.label_names), pretrained=cfg.pretrained or None,
                                 **cfg.model_overrides)
        if tcfg.freeze_backbone:
            model.backbone.requires_grad_(False)
        if tcfg.freeze_bn:
            for norm in backbone_batchnorms(model):
                norm.requires_grad_(False)
        model.to(self.info.device)
        if tcfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.preprocess = Preprocess(model.config.preprocess)
        self.amp = AmpPolicy(tcfg.amp, self.info.device)
        self.ema = ModelEMA(model, tcfg.ema_decay) if tcfg.ema else None
        wrapped: torch.nn.Module = model
        if self.info.distributed:
            wrapped = DistributedDataParallel(model, device_ids=[self.info.local_rank] if self.info.device.type == "cuda" else None)
        self.forward_model = torch.compile(wrapped) if tcfg.compile else wrapped

        dcfg = self.config.data
        augment = Augment(dcfg.augment, tuple(dcfg.crop_scale))
        if tcfg.cache_features:
            self._build_token_caches(augment)
        else:
            common = dict(kind=dcfg.loader, seed=tcfg.seed, workers=dcfg.workers, info=self.info,
                          channels_last=tcfg.channels_last)
            self.train_loader = make_loader(self.train_set, self.preprocess, tcfg.batch_size, train=True,
                                            augment=augment, **common)
            self.val_loader = (make_loader(self.val_set, self.preprocess, tcfg.batch_size, train=False, **common)
                               if self.val_set is not None else None)
        if len(self.train_loader) == 0:
            raise InvalidInputError(f"the training set {self.config.data.train} (--data, {len(self.train_set)} images) "
                                    f"is smaller than one batch of {tcfg.batch_size} x {self.info.world_size} processes")

    def _build_token_caches(self, augment: Augment) -> None:
        from ..config import ConfigError
        from .feature_cache import CachedTokenLoader

        if augment.active:
            raise ConfigError("train.cache_features cannot be used with data.augment or data.crop_scale: "
                              "an augmented image has new features every epoch")
        tcfg = self.config.train
        common = dict(seed=tcfg.seed, device=self.info.device, rank=self.info.rank, world_size=self.info.world_size,
                      workers=self.config.data.workers, progress=self.progress and self.info.is_main,
                      cache_dir=tcfg.feature_cache_dir,
                      processes_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

        def build() -> None:
            self.train_loader = CachedTokenLoader(self.model, self.train_set, self.preprocess, tcfg.batch_size,
                                                  train=True, **common)
            self.val_loader = (CachedTokenLoader(self.model, self.val_set, self.preprocess, tcfg.batch_size,
                                                 train=False, **common) if self.val_set is not None else None)

        if tcfg.feature_cache_dir and self.info.distributed:
            # each node's first process computes and writes the tokens; the others read them
            if self.info.local_rank == 0:
                build()
            distributed.barrier(self.info)
            if self.info.local_rank != 0:
                build()
        else:
            build()
        self._cache_failures = self.train_loader.failed + (self.val_loader.failed if self.val_loader else [])

    def _build_optimisation(self) -> None:
        tcfg = self.config.train
        backbone_ids = {id(p) for p in self.model.backbone.parameters()}
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for param in self.model.parameters():
            if not param.requires_grad:
                continue
            decay = tcfg.optimizer == "sgd" or param.dim() > 1
            groups.setdefault((id(param) in backbone_ids, decay), []).append(param)
        param_groups = [
            {"params": params, "lr": tcfg.lr * (tcfg.backbone_lr_mult if is_backbone else 1.0),
             "weight_decay": tcfg.weight_decay if decay else 0.0}
            for (is_backbone, decay), params in sorted(groups.items())
        ]
        if tcfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(param_groups, lr=tcfg.lr, momentum=tcfg.momentum)
        else:
            self.optimizer = torch.optim.AdamW(param_groups, lr=tcfg.lr)
        self.steps_per_epoch = len(self.train_loader)
        if tcfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, tcfg.max_steps_per_epoch)
        schedule = make_schedule(tcfg.schedule, steps_per_epoch=self.steps_per_epoch, epochs=tcfg.epochs,
                                 step_epochs=tcfg.step_epochs, gamma=tcfg.gamma, warmup_pct=tcfg.warmup_pct)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # -------------------------------------------------------------------- checkpointing
    def _train_state(self) -> dict[str, Any]:
        rng = distributed.all_gather_objects(_rng_state(self.info.device), self.info)
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.amp.scaler.state_dict(),
            "amp": self.amp.mode,
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng,
            "world_size": self.info.world_size,
            "best_map": self.best_map,
        }

    def save(self, name: str = "last.pt") -> None:
        """Write the full training state (all ranks take part; the main process writes)."""
        state = self._train_state()
        if self.info.is_main:
            save_checkpoint(self.out / name, self.model, label_names=self.label_names, train_state=state,
                            extra={**self._provenance(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                                   "global_step": self.global_step})

    def _provenance(self) -> dict[str, Any]:
        """Where the weights came from: stored in every checkpoint (INT8 calibration reads train_data)."""
        return {"train_data": absolute_spec(self.config.data.train),
                "val_data": absolute_spec(self.config.data.val) if self.config.data.val else "",
                "run_config": to_dict(self.config)}

    def _resume(self, path: str) -> None:
        checkpoint = load_checkpoint(path, expected_preset=self.config.model)
        state = checkpoint.train_state
        if not state:
            raise InvalidInputError(f"{path} holds no training state (a best.pt or exported model?); resume from last.pt")
        if list(checkpoint.meta.label_names) != self.label_names:
            raise InvalidInputError(f"{path} was trained on labels {list(checkpoint.meta.label_names)}, "
                             f"this run has {self.label_names}")
        saved = checkpoint.meta.extra.get("run_config", {}).get("train", {})
        current = to_dict(self.config.train)
        changed = {k: (saved[k], current[k]) for k in RESUME_MUST_MATCH if k in saved and saved[k] != current[k]}
        if changed:
            raise InvalidInputError(f"{path} was trained with other settings than this run resumes with: " + ", ".join(
                f"train.{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
                + "; pass the saved values (a default may have changed between versions)")
        self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.amp.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.best_map = state["best_map"]
        if state["world_size"] == self.info.world_size:
            _set_rng_state(state["rng"][self.info.rank], self.info.device)
        else:
            self.log({"event": "warning", "message": f"resumed with {self.info.world_size} processes, saved with "
                      f"{state['world_size']}: data order is kept, dropout streams are not"})
            torch.manual_seed(self.config.train.seed * 1000 + self.info.rank + self.global_step)
        self.log({"event": "resumed", "from": str(path), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch})

    # -------------------------------------------------------------------------- logging
    def log(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self.writer.add_scalar(key, value, record["step"])

    def _report_failed(self, failed: list[tuple[int, str, str]]) -> None:
        if not failed or not self.info.is_main:
            return
        # surrogateescape: a file name that is not UTF-8 is written back as the bytes it has on disk
        with open(self.out / "bad_images.txt", "a", encoding="utf-8", errors="surrogateescape") as handle:
            for _, path, reason in failed:
                handle.write(f"{path}\t{reason}\n")
                self.log({"event": "bad_image", "path": path, "reason": reason})

    # ------------------------------------------------------------------------- training
    def _train_mode(self) -> None:
        self.model.train()
        if self.config.train.freeze_backbone:
            self.model.backbone.eval()  # frozen BatchNorm statistics
        elif self.config.train.freeze_bn:
            for norm in backbone_batchnorms(self.model):
                norm.eval()

    def train_epoch(self) -> dict[str, float]:
        tcfg = self.config.train
        self._train_mode()
        self.train_loader.set_epoch(self.epoch, start_batch=self.step_in_epoch)
        remaining = self.steps_per_epoch - self.step_in_epoch
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        bar = tqdm(total=remaining, desc=f"epoch {self.epoch + 1}/{tcfg.epochs}", unit="step",
                   disable=not (self.progress and self.info.is_main), dynamic_ncols=True)
        losses, images_seen, start = [], 0, time.perf_counter()
        failures, first_failure = 0, None
        for batch in self.train_loader:
            if self.step_in_epoch >= self.steps_per_epoch:
                break
            self._report_failed(batch.failed)
            failures += len(batch.failed)
            first_failure = first_failure or (batch.failed[0] if batch.failed else None)
            if distributed.any_rank(len(batch) == 0, self.info):
                continue  # a batch lost entirely to bad images on some rank: every rank skips it
            with self.amp.autocast():
                outputs = self.forward_model(batch.images)
            loss = self.criterion(outputs, batch.targets, batch.mask)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss is {loss.item()} at step {self.global_step + 1} (epoch {self.epoch + 1}): training "
                    f"diverged; lower train.lr (now {tcfg.lr}) or set train.grad_clip; {self.out / 'last.pt'} "
                    f"holds the last good state")
            self.amp.scaler.scale(loss).backward()
            if tcfg.grad_clip:
                self.amp.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)
            self.amp.scaler.step(self.optimizer)
            self.amp.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema:
                self.ema.update(self.model)
            self.step_in_epoch += 1
            self.global_step += 1
            losses.append(loss.item())
            images_seen += len(batch) * self.info.world_size
            rate = images_seen / (time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", img_s=f"{rate:.1f}")
            if self.global_step % tcfg.log_every == 0:
                self.log({"event": "step", "epoch": self.epoch + 1, "step": self.global_step, "loss": losses[-1],
                          "lr": self.scheduler.get_last_lr()[0], "images_per_s": rate})
            if tcfg.checkpoint_every_steps and self.global_step % tcfg.checkpoint_every_steps == 0 \
                    and self.step_in_epoch < self.steps_per_epoch:
                self.save()
            if crash_after and self.global_step >= crash_after:
                os._exit(17)  # simulated kill: no cleanup, no final checkpoint
        bar.close()
        if remaining > 0 and not losses:
            first = f"; the first: {first_failure[1]}: {first_failure[2]}" if first_failure else ""
            raise NothingToTrainOn(
                f"epoch {self.epoch + 1}: no training step ran: every batch of {self.config.data.train} "
                f"(--data) lost all its images ({failures} could not be decoded on this process, listed in "
                f"{self.out / 'bad_images.txt'}{first}); no checkpoint was selected from this epoch")
        seconds = time.perf_counter() - start
        return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "epoch_seconds": seconds,
                "train_images_per_s": images_seen / max(seconds, 1e-9), "steps": len(losses)}

    def evaluate(self) -> dict[str, Any] | None:
        """Table 1 metrics of the model (and its EMA) on the validation set."""
        if self.val_loader is None:
            return None
        prediction = predict(self.model, self.val_loader, autocast=self.amp.autocast, info=self.info,
                             progress=self.progress)
        self._report_failed(prediction.failed)
        if not len(prediction.indices):
            raise NothingToTrainOn(
                f"no image of the validation set {self.config.data.val} (--val-data) could be decoded "
                f"({len(prediction.failed)} failed, listed in {self.out / 'bad_images.txt'}): nothing to score")
        result = score(prediction, self.val_set.targets, self.label_names, self.config.train.threshold)
        result["images_per_s"] = prediction.images_per_second
        if self.ema:
            ema_prediction = predict(self.ema.module, self.val_loader, autocast=self.amp.autocast, info=self.info,
                                     progress=self.progress, desc="eval EMA")
            result["ema"] = score(ema_prediction, self.val_set.targets, self.label_names, self.config.train.threshold)
        return result

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch, evaluating and checkpointing along the way."""
        tcfg = self.config.train
        if self.info.is_main and self.epoch == 0 and self.step_in_epoch == 0:
            self.log({"event": "start", "world_size": self.info.world_size, "device": str(self.info.device),
                      "amp": self.amp.mode, "train_images": len(self.train_set),
                      "val_images": len(self.val_set) if self.val_set else 0, "labels": self.label_names,
                      "steps_per_epoch": self.steps_per_epoch,
                      "partial_labels": vars(self.partial_stats) if self.partial_stats else None,
                      "skipped_rows": self.train_set.skipped})
        if self.info.is_main and self.global_step == 0 and getattr(self, "_cache_failures", None):
            self._report_failed(self._cache_failures)  # once per run, not again on every resume
        self._cache_failures = []
        result: dict[str, Any] | None = None
        while self.epoch < tcfg.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            self.step_in_epoch = 0
            record = {"event": "epoch", "epoch": self.epoch, "step": self.global_step, **stats}
            if self.epoch % tcfg.eval_every == 0 or self.epoch == tcfg.epochs:
                result = self.evaluate()
                if result is not None:
                    record.update({"val_mAP": result["mAP"], "val_CF1": result["CF1"], "val_OF1": result["OF1"]})
                    if self.ema:
                        record["val_mAP_ema"] = result["ema"]["mAP"]
                    if tcfg.select == "best":
                        self._keep_best(result)
            self.log(record)
            if self.info.is_main and self.progress:
                line = f"epoch {self.epoch}: loss {stats['train_loss']:.4f}, {stats['epoch_seconds']:.1f} s, " \
                       f"{stats['train_images_per_s']:.1f} img/s"
                if result is not None:
                    line += f", val mAP {result['mAP']:.2f}"
                tqdm.write(line)
            self.save()
        if result is None:
            result = self.evaluate()
        if tcfg.select == "last" and self.info.is_main:
            name, module = ("ema", self.ema.module) if self.ema else ("model", self.model)
            extra = {**self._provenance(), "epoch": self.epoch, "weights": f"last ({name})"}
            if result is not None:
                extra["val_mAP"] = (result["ema"] if self.ema else result)["mAP"]
            save_checkpoint(self.out / "best.pt", module, label_names=self.label_names, extra=extra)
        if self.info.is_main and result is not None:
            write_json(result, self.out / "metrics.json")
            if self.progress:
                tqdm.write(format_metrics(result))
        if self.writer is not None:
            self.writer.close()
        return result or {}

    def _keep_best(self, result: dict[str, Any]) -> None:
        candidates = [("model", result["mAP"], self.model)]
        if self.ema:
            candidates.append(("ema", result["ema"]["mAP"], self.ema.module))
        # a NaN mAP (no label with a positive, no image scored) compares false both ways: it must
        # neither win max() nor be kept as the best
        candidates = [c for c in candidates if math.isfinite(c[1])]
        if not candidates:
            self.log({"event": "warning", "epoch": self.epoch,
                      "message": f"validation mAP is {result['mAP']}: {self.out / 'best.pt'} not updated"})
            return
        name, value, module = max(candidates, key=lambda c: c[1])
        if value > self.best_map:
            self.best_map = value
            if self.info.is_main:
                save_checkpoint(self.out / "best.pt", module, label_names=self.label_names,
                                extra={**self._provenance(), "epoch": self.epoch, "weights": name, "val_mAP": value})


def _nonempty(data: MultiLabelSet, spec: str, flag: str) -> MultiLabelSet:
    """``data`` if it holds an image, else an error naming the spec, the flag and what was skipped."""
    if len(data):
        return data
    skipped = f" ({len(data.skipped)} rows skipped: {data.skipped[0]} ...)" if data.skipped else ""
    raise NothingToTrainOn(f"{flag} {spec}: the data set holds no image{skipped}")
