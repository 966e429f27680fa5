"""Find where a classifier's CAM is (`CamForm`), and prove it on the network's own forward: the
feature map its head pools, the activation applied to it outside any module, the classifier (a
linear layer or a 1x1 convolution) and a norm between pooling and classifier. A head without a
CAM form (a hidden layer after the pooling, no spatial feature map) is refused with one line."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ACTIVATIONS, CamForm
from ..errors import CreamError

__all__ = ["NoCamForm", "find_cam_form", "check_cam_form", "capture_outputs", "Captured", "block_layers",
           "apply_activation"]

PROBE_SEED = 0
# |ours - network's| allowed, relative to the largest |value|: float32 sums of a different order
TOLERANCE = 1e-4
CAM_FORM_NEEDS = ("CAM needs pooling then one linear or 1x1 conv (LayerNorm between allowed): ResNet, "
                  "EfficientNet, ConvNeXt...")


class NoCamForm(CreamError):
    """The network's head has no CAM form, or the named layer is not the one its head pools."""


@dataclass
class Captured:
    """One module call seen by `capture_outputs`: its name, input and output (clones, so a later
    in-place operation of the forward cannot change them) and the output's storage address (which
    identifies the tensor: every output stays alive until the capture ends)."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor
    address: int


@contextmanager
def capture_outputs(network: nn.Module, names: list[str] | None = None,
                    inputs: bool = False) -> Iterator[dict[str, Captured]]:
    """Forward hooks on the modules `names` (None: every module) that keep the last call's output
    of each (cloned: DenseNet's functional ReLU works in place on the output of `features`), and
    its input where `inputs`; removed on exit. The dict is ordered by each module's last call.

    Example:
        >>> with capture_outputs(net, ["layer4"]) as seen:  # doctest: +SKIP
        ...     net(x)
        >>> seen["layer4"].output.shape  # doctest: +SKIP
    """
    modules = dict(network.named_modules())
    wanted = [n for n in modules if n] if names is None else list(names)
    seen: dict[str, Captured] = {}
    alive: list[torch.Tensor] = []  # every output kept until exit: no two outputs share an address

    def hook(name: str):
        def keep(module: nn.Module, args: tuple, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            alive.append(output)
            seen.pop(name, None)  # a module called again: its last call, in the order of last calls
            seen[name] = Captured(name, module, first.clone() if inputs and first is not None else None,
                                  output.clone(), output.data_ptr())
        return keep

    handles = [modules[n].register_forward_hook(hook(n)) for n in wanted]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def apply_activation(features: torch.Tensor, activation: str) -> torch.Tensor:
    """`features` after the activation the forward applies outside any module (`CamForm.activation`)."""
    return torch.relu(features) if activation == "relu" else features


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[bool, float]:
    """Whether two tensors agree within TOLERANCE of the larger's scale, and the difference."""
    if ours.shape != theirs.shape:
        return False, float("inf")
    diff = float((ours.double() - theirs.double()).abs().max())
    return diff <= TOLERANCE * max(1.0, float(theirs.abs().max())), diff


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.ndim == 4 and x.shape[-2:] == (1, 1) else x


def _is_classifier(c: Captured, logits: torch.Tensor) -> bool:
    m = c.module
    if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
        return False
    if not isinstance(m, (nn.Linear, nn.Conv2d)):
        return False
    out = c.output
    if out.ndim == 4 and out.shape[-2:] != (1, 1):  # a 1x1 conv classifier before the pooling
        out = out.mean((2, 3))
    return _close(_flat(out), logits)[0]


def _spatial(c: Captured) -> bool:
    return c.output.ndim == 4 and c.output.shape[-1] * c.output.shape[-2] > 1


def _outermost(records: list[Captured]) -> list[Captured]:
    """The records with a spatial output, latest call first, one per output tensor: the outermost
    module of those that return it (a container finishes after its last child)."""
    out, addresses = [], set()
    for c in reversed(records):
        if _spatial(c) and c.address not in addresses:
            addresses.add(c.address)
            out.append(c)
    return out


def _pooled_input(classifier: Captured) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the classifier's pooling sees: (its pooled input (B,K), or None where the classifier
    is a 1x1 convolution before the pooling, whose input is then the feature map itself)."""
    assert classifier.input is not None
    x = classifier.input
    if x.ndim == 4 and x.shape[-2:] != (1, 1):
        return x.mean((2, 3)), x
    return _flat(x), None


def _norm_between(records: list[Captured], classifier: Captured, pooled: torch.Tensor) -> Captured | None:
    """A LayerNorm over the channels whose output is the classifier's input (ConvNeXt's head)."""
    for c in reversed(records[:records.index(classifier)]):
        if isinstance(c.module, nn.LayerNorm) and c.input is not None and tuple(c.module.normalized_shape) == \
                (pooled.shape[1],) and _close(_flat(c.output), pooled)[0]:
            return c
    return None


def _matching_activation(features: torch.Tensor, pooled: torch.Tensor) -> tuple[str | None, float]:
    """The activation under which the global average of `features` is `pooled`, and the best
    difference seen."""
    best = float("inf")
    for activation in ACTIVATIONS:
        ok, diff = _close(apply_activation(features, activation).mean((2, 3)), pooled)
        if ok:
            return activation, diff
        best = min(best, diff)
    return None, best


def _probe(network: nn.Module, input_size: int) -> tuple[torch.Tensor, list[Captured]]:
    """The network's logits on a fixed random batch and every module call's record."""
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(PROBE_SEED))
    was = network.training
    network.eval()
    try:
        with torch.no_grad(), capture_outputs(network, inputs=True) as seen:
            logits = network(x)
    except Exception as exc:  # the network's own refusal of the probe (an input size it does not take)
        first = (str(exc).splitlines() or [""])[0][:160]
        raise NoCamForm(f"{type(network).__name__}: its forward fails on a batch of shape {tuple(x.shape)} "
                        f"({type(exc).__name__}: {first}); give the input size its weights expect") from None
    finally:
        network.train(was)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        found = f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else \
            type(logits).__name__
        raise NoCamForm(f"{type(network).__name__}: its forward returns {found}; expected logits (batch, classes)")
    return logits, list(seen.values())


def find_cam_form(network: nn.Module, *, input_size: int = 224, cam_layer: str | None = None) -> CamForm:
    """Where the CAM of `network` is, checked on its own forward: the logits of a fixed random
    batch equal the classifier applied to the global average of the CAM layer's output (through
    the activation and norm found). `cam_layer` (a module name) is found when not given: the
    latest module whose output the head pools, like torch-cam's `locate_candidate_layer`.

    Example:
        >>> find_cam_form(torchvision.models.resnet18())  # doctest: +SKIP
        CamForm(cam_layer='layer4', classifier='fc', activation='none', norm=None)

    Raises:
        NoCamForm: one line naming what the head does instead.
    """
    name = type(network).__name__
    logits, records = _probe(network, input_size)
    if cam_layer is not None and cam_layer not in dict(network.named_modules()):
        raise NoCamForm(f"{name}: no module named {cam_layer!r} (the layer names are those of "
                        f"`named_modules()`, e.g. {', '.join(c.name for c in _outermost(records)[:4])})")
    spatial = _outermost(records)
    if not spatial:
        raise NoCamForm(f"{name}: no CAM form: no module outputs a spatial map (B, C, H, W) at {input_size} px "
                        f"(not a CNN); {CAM_FORM_NEEDS}")
    classifier = next((c for c in reversed(records) if _is_classifier(c, logits)), None)
    if classifier is None:
        raise NoCamForm(f"{name}: no CAM form: no nn.Linear or 1x1 nn.Conv2d returns its logits (they are "
                        f"computed after the last module); {CAM_FORM_NEEDS}")
    pooled, before_pool = _pooled_input(classifier)
    norm = None if before_pool is not None else _norm_between(records, classifier, pooled)
    if norm is not None:
        pooled = _flat(norm.input) if norm.input is not None else pooled
    candidates = [c for c in spatial if c.output.shape[1] == pooled.shape[1]]
    if cam_layer is not None:
        candidates = [records[[c.name for c in records].index(cam_layer)]] if cam_layer in \
            [c.name for c in records] else []
        if not candidates:
            raise NoCamForm(f"{name}: module {cam_layer!r} returns no tensor in the forward; expected the feature "
                            f"map the head pools")
    best = (float("inf"), "")
    for c in candidates:
        if not _spatial(c):
            raise NoCamForm(f"{name}: layer {c.name!r} outputs shape {tuple(c.output.shape)}; expected a spatial "
                            f"feature map (batch, channels, height, width)")
        activation, diff = _matching_activation(c.output, pooled)
        if activation is not None:
            return CamForm(cam_layer=c.name, classifier=classifier.name, activation=activation,  # type: ignore[arg-type]
                           norm=None if norm is None else norm.name)
        best = min(best, (diff, c.name))
    if cam_layer is not None:
        off = f" (off by {best[0]:.2g})" if best[0] < float("inf") else ""
        raise NoCamForm(f"{name}: classifier {classifier.name!r} does not read the average of layer {cam_layer!r}"
                        f"{off}; name the module whose output the head pools, or let it be found")
    raise NoCamForm(f"{name}: no CAM form: classifier {classifier.name!r} reads no spatial map's average but a hidden "
                    f"layer (VGG, MobileNetV3) or a class token (ViT); {CAM_FORM_NEEDS}")


def check_cam_form(network: nn.Module, form: CamForm, *, input_size: int = 224) -> None:
    """NoCamForm unless `form` holds on `network`'s own forward (its logits from the CAM layer)."""
    found = find_cam_form(network, input_size=input_size, cam_layer=form.cam_layer)
    if found != form:
        raise NoCamForm(f"{type(network).__name__}: the saved CAM form {form} does not hold on this network "
                        f"(found {found})")


def block_layers(network: nn.Module, input_size: int, cam_layer: str) -> list[tuple[str, int, int, int]]:
    """(name, channels, height, width) of the network's blocks up to the CAM layer, which comes
    last: the modules whose every ancestor is a container (nn.Sequential, ModuleList,
    ModuleDict) or the network itself, outermost for their output, in the order of the forward.
    These are the layers the EM can cluster (`CreamConfig.em_layer`)."""
    modules = dict(network.named_modules())
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

    def in_containers(name: str) -> bool:
        parts = name.split(".")
        return all(isinstance(modules[".".join(parts[:i])], containers) for i in range(1, len(parts)))

    names = [n for n in modules if n and in_containers(n)]
    x = torch.zeros(1, 3, input_size, input_size)
    was = network.training
    network.eval()
    try:
        with torch.no_grad(), capture_outputs(network, names + [cam_layer]) as seen:
            network(x)
    finally:
        network.train(was)
    records = list(seen.values())
    end = next(i for i, c in enumerate(records) if c.name == cam_layer)
    shared = records[end].address  # the CAM layer's children that return its output
    kept = [c for c in _outermost(records[:end]) if c.address != shared][::-1]
    def shape(name: str, x: torch.Tensor) -> tuple[str, int, int, int]:
        return name, int(x.shape[1]), int(x.shape[2]), int(x.shape[3])

    return [shape(c.name, c.output) for c in kept] + [shape(cam_layer, records[end].output)]
