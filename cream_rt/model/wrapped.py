"""A network as its owner built it, as the backbone of a CAM model: the whole network runs (its own
forward), hooks keep the CAM layer's output (and the EM layer's), and its own classifier (with
the norm before it) is the CAM model's classifier, so it predicts what the network predicts."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import CamForm
from ..errors import CreamError
from .backbones import Backbone
from .cam_form import apply_activation, block_layers

__all__ = ["ModuleBackbone", "CamHead"]

class CamHead(nn.Module):
    """The wrapped network's classifier (a linear layer or a 1x1 convolution, the network's own
    module) with the LayerNorm its head applies after pooling: `forward(pooled)` gives the
    network's logits; `weight` is the CAM's weight, the classifier's with the norm's scale folded
    in (the CAM then differs from the per-pixel logit by a positive scale and a shift per image,
    which the min-max normalisation of every map removes)."""

    def __init__(self, classifier: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        if not isinstance(classifier, (nn.Linear, nn.Conv2d)):
            raise CreamError(f"classifier {type(classifier).__name__}: expected nn.Linear or a 1x1 nn.Conv2d")
        if norm is not None and not isinstance(norm, nn.LayerNorm):
            raise CreamError(f"norm {type(norm).__name__}: expected an nn.LayerNorm over the channels")
        self.linear = classifier
        self.norm = norm

    @property
    def weight(self) -> torch.Tensor:
        """The CAM's weight `(C,K)`."""
        w = self.linear.weight.flatten(1)
        if self.norm is not None and self.norm.weight is not None:
            w = w * self.norm.weight
        return w

    def rows(self, class_ids: torch.Tensor) -> torch.Tensor:
        """`weight[class_ids]`, computing only those rows."""
        w = self.linear.weight.flatten(1)[class_ids]
        return w * self.norm.weight if self.norm is not None and self.norm.weight is not None else w

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """The network's logits from the pooled features `(B,K)`."""
        x = pooled
        if self.norm is not None:
            x = F.layer_norm(x, (x.shape[1],), self.norm.weight, self.norm.bias, self.norm.eps)
        return F.linear(x, self.linear.weight.flatten(1), self.linear.bias)


class ModuleBackbone(Backbone):
    """A whole network as a backbone: `forward` runs the network's own forward and returns the
    CAM layer's output (after `form.activation`); `forward_taps` keeps other modules' outputs in
    the same pass. The network's parameters are this backbone's (`net`), not copies."""

    def __init__(self, network: nn.Module, form: CamForm, input_size: int):
        super().__init__()
        self.net = network
        self.form = form
        self.input_size = input_size
        modules = dict(network.named_modules())
        missing = next((n for n in (form.cam_layer, form.classifier, form.norm) if n and n not in modules), None)
        if missing is not None:
            raise CreamError(f"{type(network).__name__} has no module {missing!r} (its CAM form: {form})")
        classifier = modules[form.classifier]
        self.out_channels = int(classifier.weight.shape[1])

    def head(self) -> CamHead:
        """The network's classifier (and norm) as the CAM model's classifier."""
        modules = dict(self.net.named_modules())
        return CamHead(modules[self.form.classifier], modules[self.form.norm] if self.form.norm else None)

    @property
    def num_classes(self) -> int:
        """The classifier's outputs."""
        return int(dict(self.net.named_modules())[self.form.classifier].weight.shape[0])

    def layers(self) -> Iterator[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        raise NotImplementedError("a wrapped network runs as a whole: forward_taps")

    def layer_shapes(self, input_size: int) -> list[tuple[str, int, int, int]]:
        """The network's blocks up to the CAM layer (`cam_form.block_layers`), the CAM layer last."""
        return block_layers(self.net, input_size, self.form.cam_layer)

    def layer_names(self) -> list[str]:
        return [name for name, *_ in self.layer_shapes(self.input_size)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x, ())[0]

    def forward_taps(self, x: torch.Tensor, taps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the CAM layer's output, {name: that module's output} for each of `taps`) in one
        forward of the network; each output cloned as its module returned it (the forward may
        work on it in place afterwards, as DenseNet's functional ReLU does)."""
        names = list(dict.fromkeys((self.form.cam_layer, *taps)))
        try:
            modules = [self.net.get_submodule(n) for n in names]
        except AttributeError:
            unknown = next(t for t in taps if t not in dict(self.net.named_modules()))
            raise CreamError(f"unknown layer {unknown!r} of {type(self.net).__name__}; expected a module name "
                             f"such as {', '.join(self.layer_names()[-6:])}") from None
        seen: dict[str, torch.Tensor] = {}

        def keeper(name: str):
            def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                seen[name] = output.clone()
            return keep

        handles = [module.register_forward_hook(keeper(n)) for n, module in zip(names, modules)]
        try:
            self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        out = apply_activation(seen[self.form.cam_layer], self.form.activation)
        return out, {t: out if t == self.form.cam_layer else seen[t] for t in taps}
