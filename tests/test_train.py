"""The trainer: a short run, exact resume after a kill, DDP (gloo) against one process, eval CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.models.checkpoint import load_checkpoint
from lcie_fast.train.trainer import CRASH_ENV


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("shapes"), splits={"train": 24, "valid": 12}, size=64)


def _train(args, env_extra=None, torchrun: int = 0, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop(CRASH_ENV, None) if not env_extra or CRASH_ENV not in env_extra else None
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "lcie_fast", "train", *args]
    else:
        cmd = [sys.executable, "-m", "lcie_fast", "train", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _common(shapes, out):
    return ["--model", "lcie_tiny", "--data", str(shapes / "train"), "--val-data", str(shapes / "valid"),
            "--output", str(out), "--device", "cpu", "--loader", "torch", "--no-progress", "pretrained=false",
            "data.workers=0", "train.batch_size=4", "train.lr=0.05", "train.log_every=1"]


def _weights(path):
    return load_checkpoint(path).model_state


def test_short_run_writes_config_log_checkpoints_and_metrics(shapes, tmp_path):
    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=2", "train.ema=true", "train.ema_decay=0.9"])
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all("val_mAP" in r and "val_mAP_ema" in r and r["train_images_per_s"] > 0 for r in epochs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["AP"]) <= {f"shape{k}" for k in range(5)} and 0 <= metrics["mAP"] <= 100
    state = load_checkpoint(out / "last.pt").train_state
    assert state["epoch"] == 2 and state["global_step"] == 12 and state["ema"] is not None


def test_killed_run_resumes_to_the_same_weights(shapes, tmp_path):
    # dropout, the partial branch and random flips are all on: every RNG stream must be restored
    args = ["train.epochs=2", "train.checkpoint_every_steps=4", "train.optimizer=adamw", "train.lr=0.002"]
    _train(_common(shapes, tmp_path / "straight") + args)
    killed = _train(_common(shapes, tmp_path / "killed") + args, env_extra={CRASH_ENV: "9"}, check=False)
    assert killed.returncode == 17  # died after step 9 (mid epoch 2); last checkpoint at step 8
    state = load_checkpoint(tmp_path / "killed" / "last.pt").train_state
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 8)
    _train(_common(shapes, tmp_path / "killed") + args + ["--resume", "auto"])
    straight, resumed = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "killed" / "last.pt")
    worst = max((straight[k] - resumed[k]).abs().max().item() for k in straight if straight[k].is_floating_point())
    print(f"max |weight difference| straight vs killed+resumed: {worst:.3g}")
    assert worst == 0.0


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(shapes, tmp_path):
    # no dropout, no token dropping, frozen BatchNorm: the only difference left is the reduction order
    args = ["train.epochs=1", "model_overrides.dropout=0.0", "model_overrides.partial=false",
            "train.freeze_backbone=true", "train.lr=0.02", "train.amp=off"]
    _train(_common(shapes, tmp_path / "one") + args + ["train.batch_size=8"])
    _train(_common(shapes, tmp_path / "two") + args + ["train.batch_size=4"], torchrun=2)
    one, two = _weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt")
    diffs = {k: (one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point()}
    worst = max(diffs.values())
    print(f"max |weight difference| 1 process vs 2 gloo processes: {worst:.3g}")
    assert worst < 1e-5
    moved = load_checkpoint(tmp_path / "one" / "last.pt").model_state
    assert any(k.startswith("head_co") for k in moved)


def test_eval_cli_prints_table1_metrics_and_writes_json(shapes, tmp_path):
    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=1"])
    report = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "lcie_fast", "eval", str(out / "last.pt"), "--data",
                             str(shapes / "valid"), "--device", "cpu", "--loader", "torch", "--workers", "0",
                             "--json", str(report), "--no-progress", "--branches", "--bootstrap", "200",
                             "--against", str(out / "last.pt")],
                            capture_output=True, text=True, check=True)
    assert "CF1_top3" in result.stdout and "per-class AP" in result.stdout
    data = json.loads(report.read_text())
    assert data["num_images"] == 12 and "OF1" in data
    low, high = data["mAP_ci95"]
    # 12 images: a percentile interval need not hold the estimate, but it is a real spread
    assert 0 <= low < high <= 100 and data["bootstrap_draws"] == 200 and "95% bootstrap interval" in result.stdout
    assert sum(data["support"].values()) > 0 and "(n=" in result.stdout
    rows = {row["branches"]: row for row in data["branches"]}
    assert set(rows) == {"y_ca", "y_sp", "y_co", "y_ca + y_sp", "y_ca + y_co", "y_sp + y_co", "y_ca + y_sp + y_co"}
    assert rows["y_ca + y_sp + y_co"]["mAP"] == pytest.approx(data["mAP"], abs=1e-6)
    assert "| y_sp |" in result.stdout
    # against itself: the same logits on the same resamples, so the paired difference is exactly zero
    versus = data["against"]
    assert versus["dmAP"] == 0 and versus["dmAP_ci95"] == [0, 0] and versus["images"] == 12
    assert "paired 95% interval +0.00 to +0.00" in result.stdout


def test_resume_refuses_other_training_settings(shapes, tmp_path):
    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=1"])
    result = _train(_common(shapes, out) + ["train.epochs=2", "train.lr=0.01", "train.loss_normalization=mean",
                                            "--resume", "auto"], check=False)
    assert result.returncode == 1
    assert "train.lr=0.05 (now 0.01)" in result.stderr and "train.loss_normalization='sum'" in result.stderr
    _train(_common(shapes, out) + ["train.epochs=2", "--resume", "auto"])  # more epochs is fine
    assert load_checkpoint(out / "last.pt").train_state["epoch"] == 2


def test_resume_refuses_a_checkpoint_without_training_state(shapes, tmp_path):
    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=1"])
    result = _train(_common(shapes, tmp_path / "again") + ["--resume", str(out / "best.pt")], check=False)
    assert result.returncode == 1 and "holds no training state" in result.stderr


def test_missing_training_data_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lcie_fast", "train", "--model", "lcie_tiny", "--data",
                             str(tmp_path / "nowhere"), "--device", "cpu", "pretrained=false"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "nowhere" in result.stderr


def test_channels_last_and_bf16_autocast_training_step_runs(shapes, tmp_path):
    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=1", "train.amp=bf16", "train.max_steps_per_epoch=2"])
    assert torch.isfinite(torch.stack([v.float().abs().sum() for v in _weights(out / "last.pt").values()])).all()


def test_cached_backbone_tokens_train_the_same_heads(shapes, tmp_path):
    # frozen backbone: tokens cached once per image and flip give the run computed from images
    args = ["train.epochs=2", "train.freeze_backbone=true", "train.optimizer=adamw", "train.lr=0.002", "train.amp=off"]
    _train(_common(shapes, tmp_path / "images") + args)
    _train(_common(shapes, tmp_path / "cached") + args + ["train.cache_features=true",
                                                          f"train.feature_cache_dir={tmp_path / 'cache'}"])
    images, cached = _weights(tmp_path / "images" / "last.pt"), _weights(tmp_path / "cached" / "last.pt")
    worst = max((images[k] - cached[k]).abs().max().item() for k in images if images[k].is_floating_point())
    print(f"max |weight difference| images vs cached tokens: {worst:.3g}")
    assert worst < 1e-4
    assert len(list((tmp_path / "cache").glob("tokens-*.pt"))) == 2  # train (both flips) and valid
    # a second run reads the tokens back and lands on the same weights
    _train(_common(shapes, tmp_path / "again") + args + ["train.cache_features=true",
                                                         f"train.feature_cache_dir={tmp_path / 'cache'}"])
    again = _weights(tmp_path / "again" / "last.pt")
    assert all(torch.equal(cached[k], again[k]) for k in cached)
    # a damaged token file is rebuilt, never trusted
    for path in (tmp_path / "cache").glob("tokens-*.pt"):
        path.write_bytes(b"not a torch file")
    rebuilt = _train(_common(shapes, tmp_path / "rebuilt") + args + ["train.cache_features=true",
                                                                     f"train.feature_cache_dir={tmp_path / 'cache'}"])
    assert "rebuilding it" in rebuilt.stderr
    assert all(torch.equal(cached[k], v) for k, v in _weights(tmp_path / "rebuilt" / "last.pt").items())
    refused = _train(_common(shapes, tmp_path / "bad") + ["train.cache_features=true"], check=False)
    assert refused.returncode == 1 and "freeze_backbone" in refused.stderr
    refused = _train(_common(shapes, tmp_path / "bad") + args + ["train.cache_features=true", "data.augment=randaugment"],
                     check=False)
    assert refused.returncode == 1 and "augment" in refused.stderr


def test_frozen_batchnorm_keeps_statistics_and_select_last_keeps_the_ema(shapes, tmp_path):
    from lcie_fast import create_model

    out = tmp_path / "run"
    _train(_common(shapes, out) + ["train.epochs=1", "train.freeze_bn=true", "train.ema=true", "train.ema_decay=0.9",
                                   "train.select=last", "data.augment=trivialaugment", "data.crop_scale=[0.6,1.0]"])
    torch.manual_seed(0)
    fresh = create_model("lcie_tiny", num_classes=5).state_dict()
    trained = _weights(out / "last.pt")
    norms = [k for k in fresh if "bn" in k and k.startswith("backbone.")]
    assert norms and all(torch.equal(fresh[k], trained[k]) for k in norms)  # statistics and affine untouched
    convs = [k for k in fresh if k.startswith("backbone.") and k.endswith("conv_stem.weight")]
    assert convs and not torch.equal(fresh[convs[0]], trained[convs[0]])  # the rest of the backbone trained
    best = load_checkpoint(out / "best.pt")
    ema = load_checkpoint(out / "last.pt").train_state["ema"]["model"]
    assert best.meta.extra["weights"] == "last (ema)"
    assert all(torch.equal(best.model_state[k], ema[k]) for k in best.model_state)


def test_fine_tuning_takes_the_architecture_of_its_init_checkpoint(shapes, tmp_path):
    stage1 = tmp_path / "stage1"
    _train(_common(shapes, stage1) + ["train.epochs=1", "train.freeze_backbone=true", "model_overrides.fused_norm=true",
                                      "model_overrides.spatial_norm=layernorm"])
    # stage 2 names no architecture: the checkpoint's switches (not today's defaults) are rebuilt
    stage2 = tmp_path / "stage2"
    _train(_common(shapes, stage2) + ["train.epochs=1", "train.freeze_bn=true", "train.lr=0.005",
                                      f"init_checkpoint={stage1 / 'best.pt'}"])
    config = load_checkpoint(stage2 / "last.pt").meta.model_config
    assert config.fused_norm and config.spatial_norm == "layernorm"
    args = _common(shapes, tmp_path / "other") + [f"init_checkpoint={stage1 / 'best.pt'}"]
    args[args.index("lcie_tiny")] = "lcie_effl0_448"
    other = _train(args, check=False)
    assert other.returncode == 1 and "holds preset 'lcie_tiny'" in other.stderr
