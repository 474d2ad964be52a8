"""The LCIE model on the CPU: shapes, gradients, the partial branch, modes, Table 3 switches."""

from __future__ import annotations

import pytest
import torch

from lcie_fast import create_model, list_models
from lcie_fast.config import ConfigError
from lcie_fast.models.losses import LCIELoss


def _images(batch: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_presets_are_registered():
    names = list_models()
    for preset in ("lcie_r101_448", "lcie_r101_576", "lcie_effl0_448", "lcie_swinl_384", "lcie_tiny"):
        assert preset in names


def test_branch_shapes(tiny_model):
    model = tiny_model.train()
    b, c = 3, model.num_classes
    d, (h, w), e = model.dim, model.token_hw, model.fused_dim
    assert d == sum(model.backbone.feature_info.channels())
    assert e == d + h * w
    out = model.forward_branches(_images(b))
    expected = {
        "tokens": (b, h * w, d),
        "x_ml": (b, d, h, w),
        "l_ca": (b, c, d),
        "y_ca": (b, c),
        "l_sp": (b, c, h * w),
        "y_sp": (b, c),
        "fused": (b, c, e),
        "l_co": (b, c, e),
        "y_co": (b, c),
        "y_infer": (b, c),
        "logits": (b, c),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    torch.testing.assert_close(out["logits"], out["y_ca"] + out["y_sp"] + out["y_co"])
    # tokens and X_ml hold the same values (eq. 1 feeds both branches)
    torch.testing.assert_close(out["tokens"], out["x_ml"].flatten(2).transpose(1, 2))
    # y_sp is the global max of the spatial map
    torch.testing.assert_close(out["y_sp"], out["l_sp"].amax(-1))


def test_train_mode_returns_partial_logits_and_eval_mode_logits(tiny_model):
    images = _images()
    out = tiny_model.train()(images)
    assert out.logits.shape == out.infer_logits.shape == (3, tiny_model.num_classes)
    logits = tiny_model.eval()(images)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, tiny_model.num_classes)


@pytest.mark.parametrize("share_encoder", [True, False])
def test_every_trainable_parameter_gets_a_gradient(share_encoder):
    torch.manual_seed(0)
    model = create_model("lcie_tiny", share_encoder=share_encoder, branch_init="paper").train()
    targets = (torch.rand(3, model.num_classes) > 0.5).float()
    loss = LCIELoss()(model(_images()), targets)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("share_encoder", [True, False])
@pytest.mark.parametrize("norms", [False, True])
def test_zero_branch_init_starts_as_the_lcie_row_and_every_parameter_learns(share_encoder, norms):
    torch.manual_seed(0)
    overrides = dict(spatial_norm="layernorm", fused_norm=True) if norms else {}
    model = create_model("lcie_tiny", share_encoder=share_encoder, branch_init="zero", **overrides).train()
    out = model.forward_branches(_images())
    assert out["y_sp"].abs().max() == 0 and out["y_co"].abs().max() == 0
    torch.testing.assert_close(out["logits"], out["y_ca"])
    # a zero head passes no gradient back at the first step; after one step every parameter learns
    targets = (torch.rand(3, model.num_classes) > 0.5).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        LCIELoss()(model(_images()), targets).backward()
        optimizer.step()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient after one step: {missing}"
    out = model.forward_branches(_images())
    assert out["y_sp"].abs().max() > 0 and out["y_co"].abs().max() > 0


def test_paper_init_keeps_the_random_branch_outputs_and_shares_all_other_weights():
    torch.manual_seed(0)
    paper = create_model("lcie_tiny", branch_init="paper")
    torch.manual_seed(0)
    zero = create_model("lcie_tiny", branch_init="zero")
    differ = [k for k, v in paper.state_dict().items() if not torch.equal(v, zero.state_dict()[k])]
    assert sorted(differ) == ["head_co.bias", "head_co.weight", "spatial.conv.bias", "spatial.conv.weight"]
    assert paper.spatial.conv.weight.abs().sum() > 0


def test_model_takes_cached_tokens_in_place_of_images(tiny_model):
    model = tiny_model.eval()
    images = _images()
    tokens, _ = model.forward_features(images)
    torch.testing.assert_close(model(tokens), model(images))
    with pytest.raises(ValueError, match="image tokens"):
        model(tokens[:, :-1])


def test_forward_is_forward_head_of_forward_features(tiny_model):
    images = _images()
    model = tiny_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(images)), model(images), rtol=0, atol=0)
    torch.manual_seed(3)
    trained = model.train()(images)
    torch.manual_seed(3)
    split = model.forward_head(model.forward_features(images))
    assert isinstance(split, type(trained))
    for a, b in zip(split, trained):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_config_and_preset_are_declared_and_set_by_the_builders(tiny_model):
    from lcie_fast.config import ModelConfig
    from lcie_fast.models import LCIE, build

    assert {"config", "preset"} <= set(LCIE.__annotations__)
    assert tiny_model.preset == "lcie_tiny" and isinstance(tiny_model.config, ModelConfig)
    assert build(tiny_model.config).preset == "custom"


@pytest.mark.parametrize("share_encoder", [True, False])
def test_shared_encoder_is_held_once_in_the_state_dict(share_encoder):
    model = create_model("lcie_tiny", share_encoder=share_encoder)
    keys = model.state_dict().keys()
    encoder_keys = {k for k in keys if k.startswith("encoder.")}
    partial_keys = {k for k in keys if k.startswith("partial.encoder.")}
    assert encoder_keys
    assert partial_keys == (set() if share_encoder else {"partial." + k for k in encoder_keys})
    assert (model.partial.encoder is model.encoder) == share_encoder
    # a shared parameter is one parameter: every state dict tensor is its own storage
    pointers = [v.data_ptr() for v in model.state_dict().values() if v.numel()]
    assert len(pointers) == len(set(pointers))


def test_fused_inference_overrides_only_the_token_projections(tiny_model):
    from lcie_fast.models.fused import FusedLCIE, fuse_for_inference

    images = _images()
    model = tiny_model.eval()
    with torch.no_grad():
        reference = model(images)
        fused = fuse_for_inference(model)
        out = fused(images)
    assert fused is model and isinstance(model, FusedLCIE)
    overridden = {name for name, value in vars(FusedLCIE).items() if callable(value)}
    assert overridden == {"label_features"}
    err = (out - reference).abs().max().item()
    print(f"fused vs plain fp32: max |logit diff| = {err:.2e}")
    assert err <= 1e-5
    # train mode runs the plain path: the partial branch and every gradient as before
    train_out = model.train()(images)
    assert train_out.infer_logits is not None


def test_partial_branch_drops_round_ratio_tokens_and_reads_inference_token():
    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=20).train()  # round(0.1 * 20) = 2 dropped
    seen = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    model(_images(2))
    e = model.fused_dim
    assert seen == [(2, 20, e), (2, 20 - 2 + 1, e)]  # full path, then 18 kept + inference token

    # the inference token is read: y_infer depends on it, through the gradient and the value
    torch.manual_seed(5)
    y1 = model(_images(2)).infer_logits
    y1.sum().backward()
    assert model.partial.infer_token.grad.abs().sum() > 0
    with torch.no_grad():
        model.partial.infer_token.add_(1.0)
    torch.manual_seed(5)
    y2 = model(_images(2)).infer_logits
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize("num_classes,dropped", [(10, 1), (20, 2), (80, 8), (5, 1), (1, 0)])
def test_number_of_dropped_tokens(num_classes, dropped):
    model = create_model("lcie_tiny", num_classes=num_classes)
    assert model.partial.num_dropped == dropped


def test_eval_is_deterministic_and_never_runs_the_partial_branch(tiny_model):
    model = tiny_model.eval()
    calls = []
    model.encoder.register_forward_hook(lambda m, args, out: calls.append(1))
    images = _images()
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first, second)
    assert len(calls) == 2  # one encoder pass per forward: the partial branch did not run


def test_channels_last_input_gives_the_logits_of_a_contiguous_one(tiny_model):
    model = tiny_model.eval()
    images = _images(4)
    with torch.no_grad():
        reference = model(images)
        model_cl = model.to(memory_format=torch.channels_last)
        channels_last = model_cl(images.contiguous(memory_format=torch.channels_last))
    diff = (channels_last - reference).abs().max().item()
    print(f"channels-last vs contiguous: max |logit diff| = {diff:.2e}")
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward_and_backward(tiny_model):
    model = tiny_model.train()
    targets = (torch.rand(3, model.num_classes) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images())
        loss = LCIELoss()(out, targets)
    assert out.logits.dtype == torch.bfloat16 or out.logits.dtype == torch.float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


TABLE3 = {
    "baseline (GAP + linear)": dict(mlff=False, lcie=False, spatial=False, full=False, partial=False),
    "+MLFF": dict(mlff=True, lcie=False, spatial=False, full=False, partial=False),
    "+LCIE": dict(lcie=True, spatial=False, full=False, partial=False),
    "+LCIE +Full": dict(lcie=True, spatial=False, full=True, partial=False),
    "+Spatial +Full (no LCIE)": dict(lcie=False, spatial=True, full=True, partial=False),
    "+LCIE +Spatial +Full": dict(partial=False),
    "+Partial, unshared": dict(partial=True, share_encoder=False),
    "+Partial, shared (paper)": dict(partial=True, share_encoder=True),
    "LCIE + Spatial, no encoder": dict(full=False, partial=False),
    "partial without full": dict(full=False, partial=True),
    "sine keys, GELU": dict(decoder_pos_embed="sine", activation="gelu"),
}


@pytest.mark.parametrize("switches", TABLE3.values(), ids=TABLE3.keys())
def test_every_table3_switch_builds_trains_and_evaluates(switches):
    torch.manual_seed(0)
    model = create_model("lcie_tiny", **switches)
    images = _images(2)
    targets = (torch.rand(2, model.num_classes) > 0.5).float()
    out = model.train()(images)
    assert out.logits.shape == (2, model.num_classes)
    assert (out.infer_logits is not None) == switches.get("partial", True)
    LCIELoss()(out, targets).backward()
    with torch.no_grad():
        assert model.eval()(images).shape == (2, model.num_classes)
    branches = model.forward_branches(images)
    if not switches.get("mlff", True):
        assert branches["x_ml"].shape[1] == model.backbone.feature_info.channels()[-1]  # X5 alone
    assert ("l_ca" in branches) == switches.get("lcie", True)
    assert ("l_sp" in branches) == switches.get("spatial", True)
    assert ("l_co" in branches) == switches.get("full", True)
    if not switches.get("share_encoder", True) and switches.get("partial", True):
        assert model.partial.encoder is not model.encoder
    if switches.get("share_encoder", True) and switches.get("partial", True) and switches.get("full", True):
        assert model.partial.encoder is model.encoder


def test_switches_that_leave_no_label_tokens_are_refused():
    with pytest.raises(ConfigError, match="lcie or model.spatial"):
        create_model("lcie_tiny", lcie=False, spatial=False, full=True, partial=False)


def test_wrong_input_size_is_refused_with_the_expected_size(tiny_model):
    with pytest.raises(ValueError, match="built for 64x64"):
        tiny_model.eval()(torch.randn(1, 3, 96, 96))


def test_unknown_override_is_refused():
    with pytest.raises(TypeError, match="unknown override"):
        create_model("lcie_tiny", heads=3)


def test_head_count_must_divide_widths():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        create_model("lcie_tiny", num_heads=7)


@pytest.mark.parametrize(
    "preset,params_m,d,e",
    [("lcie_r101_448", 460.3, 3584, 3780), ("lcie_r101_576", 473.7, 3584, 3908),
     ("lcie_effl0_448", 25.26, 472, 668), ("lcie_swinl_384", None, 2688, 2832)],
)
def test_preset_sizes_on_meta_device(preset, params_m, d, e):
    with torch.device("meta"):
        model = create_model(preset)
    assert (model.dim, model.fused_dim) == (d, e)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{preset}: {params:.2f} M parameters")
    if params_m is not None:
        assert params == pytest.approx(params_m, rel=0.005)


def test_swin_backbone_returns_nchw_maps():
    # timm Swin feature maps are NHWC; the wrapper must hand NCHW to MLFF.
    from lcie_fast.models.backbone import Backbone

    backbone = Backbone("swin_tiny_patch4_window7_224", img_size=64, window_size=2)
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]


@pytest.mark.slow
def test_r101_448_flops_and_parameters_match_the_design():
    from lcie_fast.models.flops import measure_cost

    torch.manual_seed(0)
    cost = measure_cost(create_model("lcie_r101_448"))
    print(cost)
    assert cost.params / 1e6 == pytest.approx(460.3, rel=0.005)
    assert cost.gflops == pytest.approx(147.9, rel=0.01)
    assert cost.backbone_gflops == pytest.approx(62.4, rel=0.01)


@pytest.mark.parametrize("preset", ["lcie_tiny", "lcie_effl0_448"])
def test_fold_batchnorm_keeps_the_logits_and_leaves_no_batchnorm(preset):
    """Folded into the convolutions, BatchNorm (with timm's activation kept) gives the same logits."""
    import copy

    from lcie_fast.models.fused import fold_batchnorm

    torch.manual_seed(0)
    model = create_model(preset, num_classes=5).eval()
    for module in model.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    activations = sum(isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == batchnorms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)) for m in folded.modules()) == activations
    size = model.config.img_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    err = (actual - expected).abs()
    print(f"{preset}: {batchnorms} folded, max |dlogit| {err.max():.2e}, mean {err.mean():.2e}")
    assert err.max() <= 1e-4 * max(1.0, expected.abs().max().item())
