"""Which timm / torchvision architectures have a CAM form: each built by its library (random
weights), `find_cam_form` run on its own forward, and the CAM form found or the one-line reason
it is refused. The table of docs/any-classifier.md is this study's output.

    python -m bench.studies.cam_forms --out bench/results/studies/cam_forms.json
"""
from __future__ import annotations

import argparse

import torch

from cream_rt.benchmark.machine import command_line, machine_info

from ..output import emit

# one or two small members of each family (the form is the family's; the big members only cost time)
TORCHVISION = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
               "efficientnet_b0", "efficientnet_v2_s", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
               "shufflenet_v2_x0_5", "densenet121", "convnext_tiny", "googlenet", "inception_v3", "squeezenet1_0",
               "alexnet", "vgg11", "vit_b_16", "swin_t", "maxvit_t")
TIMM = ("resnet18", "resnet50d", "resnext26ts", "regnetx_002", "efficientnet_b0", "tf_efficientnet_lite0",
        "mobilenetv2_050", "mobilenetv3_small_050", "convnext_atto", "convnextv2_atto", "densenet121",
        "ghostnet_050", "rexnet_100", "mobileone_s0", "repvgg_a0", "cspresnet50", "dla34", "efficientformer_l1",
        "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "vgg11")
INPUT_SIZE = 224


def study(hub: str, arch: str) -> dict:
    """The CAM form of one architecture, or why it has none."""
    from cream_rt.errors import CreamError
    from cream_rt.model.cam_form import find_cam_form
    from cream_rt.model.hub import hub_network

    kwargs = {"aux_logits": False, "init_weights": False} if (hub, arch) in (("torchvision", "googlenet"),
                                                                             ("torchvision", "inception_v3")) else {}
    try:
        if kwargs:
            from cream_rt.model.hub import import_hub

            net = import_hub(hub).get_model(arch, weights=None, **kwargs)
        else:
            net = hub_network(f"{hub}/{arch}")
        size = 299 if arch == "inception_v3" else INPUT_SIZE
        form = find_cam_form(net.eval(), input_size=size)
        return {"library": hub, "arch": arch, "cam_form": True, "cam_layer": form.cam_layer,
                "classifier": form.classifier, "activation": form.activation, "norm": form.norm}
    except CreamError as exc:
        return {"library": hub, "arch": arch, "cam_form": False, "reason": str(exc)}


def main(argv: list[str] | None = None) -> int:
    """Study every architecture; print the markdown table; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = [study("torchvision", a) for a in TORCHVISION] + [study("timm", a) for a in TIMM]
    print("| library | architecture | CAM form | CAM layer -> classifier (or why not) |")
    print("|---|---|---|---|")
    for r in rows:
        if r["cam_form"]:
            extra = "".join([f", activation {r['activation']}" if r["activation"] != "none" else "",
                             f", norm `{r['norm']}`" if r["norm"] else ""])
            what = f"`{r['cam_layer']}` -> `{r['classifier']}`{extra}"
        else:
            what = r["reason"].split(": ", 1)[-1].split(";")[0]
        print(f"| {r['library']} | {r['arch']} | {'yes' if r['cam_form'] else 'no'} | {what} |")
    result = {"study": "cam_forms", "input_size": INPUT_SIZE, "rows": rows, "machine": machine_info(),
              "command": command_line("studies.cam_forms", argv)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
