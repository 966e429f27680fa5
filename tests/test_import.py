"""`cream import`: module trees with wsolevaluation's exact names (written here from its
`wsol/vgg.py`, `wsol/resnet.py` and `wsol/inception.py`: VggCam with `features`, `conv6`, `fc`;
ResNetCam with `conv1`, `bn1`, `layer1..4` of Bottlenecks with `downsample`, `fc`;
InceptionCam with the torchvision-named trunk, `SPG_A3_1b`, `SPG_A3_2b`, `SPG_A4`), random weights and
BatchNorm statistics, saved the way its trainer saves (`{'architecture', 'epoch',
'state_dict', 'optimizer'}`, optionally under DataParallel's `module.`), imported and compared:
logits and CAMs within 1e-5 (wsolevaluation's CAM is the channel mean, ours the sum)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
from cream_rt.cli import main  # noqa: E402
from cream_rt.errors import ModelFileError  # noqa: E402
from cream_rt.model.checkpoint import load_checkpoint  # noqa: E402
from cream_rt.model.importers import import_checkpoint  # noqa: E402


class WsolVggCam(nn.Module):
    def __init__(self, num_classes: int, large_feature_map: bool):
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512] + \
              ([512, 512, 512] if large_feature_map else ["M", 512, 512, 512])
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, 3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x, labels):
        x = self.relu(self.conv6(self.features(x)))
        logits = self.fc(self.avgpool(x).flatten(1))
        cams = (self.fc.weight[labels][:, :, None, None] * x).mean(1)
        return logits, cams


class WsolBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class WsolResNetCam(nn.Module):
    def __init__(self, num_classes: int, large_feature_map: bool):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, 1)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 1 if large_feature_map else 2)
        self.layer4 = self._make_layer(512, 3, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [WsolBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [WsolBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x, labels):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits = self.fc(self.avgpool(x).flatten(1))
        cams = (self.fc.weight[labels][:, :, None, None] * x).mean(1)
        return logits, cams


class WsolInceptionB(nn.Module):
    def __init__(self, basic):
        super().__init__()
        self.branch3x3 = basic(288, 384, kernel_size=3, stride=1, padding=1)
        self.branch3x3dbl_1 = basic(288, 64, kernel_size=1)
        self.branch3x3dbl_2 = basic(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = basic(96, 96, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)], 1)


class WsolInceptionCam(nn.Module):
    """wsolevaluation's InceptionCam: its BasicConv2d / InceptionA / InceptionC are torchvision's
    (same names, same computation); the pools, paddings and Mixed_6a are written out here."""

    def __init__(self, num_classes: int, large_feature_map: bool):
        super().__init__()
        from cream_rt.model.tvshim import import_torchvision_models

        inception = import_torchvision_models().inception
        BasicConv2d, InceptionA, InceptionC = inception.BasicConv2d, inception.InceptionA, inception.InceptionC

        self.large_feature_map = large_feature_map
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3, stride=1, padding=0)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1, stride=1, padding=0)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3, stride=1, padding=0)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = WsolInceptionB(BasicConv2d)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x, labels):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        feat_map = self.SPG_A4(self.SPG_A3_2b(self.SPG_A3_1b(x)))
        logits = self.avgpool(feat_map).flatten(1)
        return logits, feat_map[range(len(labels)), labels]


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=(2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):  # non-trivial norms (ConvNeXt's LayerNorms too)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return model.eval()


def _save_like_wsolevaluation(model: nn.Module, path, arch: str, data_parallel: bool) -> None:
    state = model.state_dict()
    if data_parallel:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save({"architecture": arch, "epoch": 50, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}}, path)


@pytest.mark.parametrize("arch,cls,large,data_parallel", [
    ("vgg16", WsolVggCam, False, False), ("vgg16", WsolVggCam, True, True),
    ("resnet50", WsolResNetCam, False, True), ("resnet50", WsolResNetCam, True, False),
    ("inceptionv3", WsolInceptionCam, False, False), ("inceptionv3", WsolInceptionCam, True, True)])
def test_wsolevaluation_checkpoint_imports_exactly(tmp_path, arch, cls, large, data_parallel):
    original = _randomized(cls(7, large))
    path = tmp_path / "last_checkpoint.pth.tar"
    _save_like_wsolevaluation(original, path, arch, data_parallel)
    model = import_checkpoint(path, "wsolevaluation", arch, 7, large)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([3, 6])
    with torch.no_grad():
        want_logits, want_cams = original(x, labels)
        features = model.features(x)
        logits, cams = model.logits(features), model.cam(features, labels)
    if arch == "inceptionv3":  # its CAM is the 1x1 classifier conv's map: ours plus the class bias
        cams = cams + model.classifier.bias[labels][:, None, None].detach()
    else:  # VggCam and ResNetCam average over channels where we sum
        cams = cams / features.shape[1]
    scale = float(want_logits.abs().max())
    assert (logits - want_logits).abs().max().item() <= 1e-5 * max(scale, 1)
    assert cams.shape == want_cams.shape
    assert (cams - want_cams).abs().max().item() <= 1e-5 * max(float(want_cams.abs().max()), 1)


def test_torchvision_resnet50_becomes_a_cam_model(tmp_path):
    from cream_rt.model.tvshim import import_torchvision_models

    net = _randomized(import_torchvision_models().resnet50(weights=None))
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    model = import_checkpoint(tmp_path / "resnet50.pth", "torchvision", "resnet50")
    assert model.config.num_classes == 1000  # its ImageNet head, with the ImageNet class names
    names = model.config.class_names
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
    assert not model.embedding_fitted.any() and not model.embeddings.any()  # zero until fitted, never random
    with pytest.raises(ModelFileError, match="cream train --backbone vgg16"):
        import_checkpoint(tmp_path / "resnet50.pth", "torchvision", "vgg16")
    own = model.state_dict()
    assert torch.equal(own["backbone.stem.0.weight"], net.conv1.weight)
    assert torch.equal(own["backbone.layer4.2.conv3.weight"], net.layer4[2].conv3.weight)
    assert torch.equal(own["classifier.weight"], net.fc.weight)


def test_torchvision_inception_v3_keeps_its_logits(tmp_path):
    """The ImageNet classifier's logits, from its own trunk and fc, on the same normalised input
    (transform_input off here; the backbone's mean = std = 0.5 is what it does when on)."""
    from cream_rt.model.tvshim import import_torchvision_models

    net = _randomized(import_torchvision_models().inception_v3(weights=None, aux_logits=True, init_weights=False,
                                                               transform_input=False, num_classes=11))
    torch.save(net.state_dict(), tmp_path / "inception_v3.pth")
    model = import_checkpoint(tmp_path / "inception_v3.pth", "torchvision", "inception_v3")
    assert model.config.backbone == "inceptionv3-imagenet" and model.config.input_size == 299
    assert import_checkpoint(tmp_path / "inception_v3.pth", "torchvision", "inceptionv3").config.backbone == \
        "inceptionv3-imagenet"  # wsolevaluation's spelling is an alias
    assert tuple(model.config.mean) == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        want = net(x)
        got = model.logits(model.features(x))
    assert (got - want).abs().max().item() <= 1e-5 * max(float(want.abs().max()), 1)


def test_import_refuses_partial_and_foreign_files(tmp_path):
    original = _randomized(WsolVggCam(5, False))
    state = original.state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "features.7.weight"}, "no weight for"),
        "extra": ({**state, "classifier_A.0.weight": torch.zeros(3)}, "unexpected key 'classifier_A.0.weight'"),
        "shape": ({**state, "conv6.weight": torch.zeros(1024, 512, 1, 1)}, "has shape (1024, 512, 1, 1)"),
    }
    for name, (bad, words) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / f"{name}.pth")
        with pytest.raises(ModelFileError, match=words.replace("(", r"\(").replace(")", r"\)")):
            import_checkpoint(tmp_path / f"{name}.pth", "wsolevaluation", "vgg16")
    torch.save({"state_dict": state}, tmp_path / "vgg.pth")
    with pytest.raises(ModelFileError, match="unexpected key"):  # a 14x14 VGG is not a ResNet
        import_checkpoint(tmp_path / "vgg.pth", "wsolevaluation", "resnet50")
    with pytest.raises(ModelFileError, match="5 classes, --classes says 200"):
        import_checkpoint(tmp_path / "vgg.pth", "wsolevaluation", "vgg16", 200)
    with pytest.raises(ModelFileError, match="no CAM form"):
        import_checkpoint(tmp_path / "vgg.pth", "torchvision", "vgg16")
    with pytest.raises(ModelFileError, match="no classifier 'SPG_A4.weight'"):
        import_checkpoint(tmp_path / "vgg.pth", "wsolevaluation", "inceptionv3")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "vgg.pth").read_bytes()[:4000])
    with pytest.raises(ModelFileError, match="not a readable torch checkpoint"):
        import_checkpoint(tmp_path / "truncated.pth", "wsolevaluation", "vgg16")


def test_cli_import_then_fit_embeddings_and_eval(tmp_path, capsys):
    """The whole path from the CLI: import, fit the embeddings on data, evaluate, export."""
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--train", "12", "--val", "6", "--test", "6", "--classes", "3",
                 "--size", "64"]) == 0
    capsys.readouterr()
    original = _randomized(WsolResNetCam(3, False))
    _save_like_wsolevaluation(original, tmp_path / "best_checkpoint.pth.tar", "resnet50", True)
    out = tmp_path / "imported.pt"
    assert main(["import", str(tmp_path / "best_checkpoint.pth.tar"), "--from", "wsolevaluation",
                 "--arch", "resnet50", "--classes", "3", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"]["classes"] == 3
    model, payload = load_checkpoint(out)
    assert payload["training"]["imported"]["from"] == "wsolevaluation"
    fitted = tmp_path / "cream.pt"
    assert main(["fit-embeddings", "--checkpoint", str(out), "--data", str(data), "--out", str(fitted),
                 "--batch-size", "6"]) == 0
    capsys.readouterr()
    assert not torch.equal(load_checkpoint(fitted)[0].embeddings, model.embeddings)
    assert main(["eval", "--checkpoint", str(fitted), "--data", str(data), "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["MaxBoxAccV2"])
    assert main(["import", str(tmp_path / "best_checkpoint.pth.tar"), "--from", "torchvision", "--arch", "vgg16",
                 "--out", str(tmp_path / "no.pt")]) == 2
    assert "no CAM form" in capsys.readouterr().err and not (tmp_path / "no.pt").exists()
