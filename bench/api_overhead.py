"""What the in-memory API (`cream_rt.model.CREAM`) adds to a plain torch forward of the same
network on CPU: one row per family (timm / torchvision networks at their 224 px input, random
weights: the work done does not depend on them), `cream(batch)` (CREAM maps of the predicted
class, T = 1, embeddings set; it runs under `torch.inference_mode()`) against `network(batch)`
under `torch.inference_mode()` (the fastest plain forward; `torch.no_grad()` is also timed),
in rotating blocks; the ratio is the median of the per-round ratios (one run). Target: <= 1.05.

    python -m bench.api_overhead --out bench/results/api_overhead.json
"""
from __future__ import annotations

import argparse

import torch

from cream_rt.benchmark.latency import measure_interleaved, paired_ratio
from cream_rt.benchmark.machine import command_line, machine_info

from .output import emit

TARGET = 1.05
# (library, architecture): the families of tests/test_any_classifier.py
FAMILIES = (("timm", "resnet18"), ("torchvision", "resnet50"), ("timm", "convnext_atto"),
            ("torchvision", "regnet_x_400mf"), ("timm", "efficientnet_b0"), ("torchvision", "densenet121"),
            ("torchvision", "mobilenet_v2"))


def family_row(hub: str, arch: str, batch: int, budget_s: float) -> dict:
    """One family at one batch size: median ms of the plain forward and of the API call, and their ratio."""
    from cream_rt.model import CREAM
    from cream_rt.model.hub import hub_network

    torch.manual_seed(0)
    net = hub_network(f"{hub}/{arch}").eval()
    x = torch.randn(batch, 3, 224, 224)
    with CREAM(net, name=f"{hub}/{arch}") as cream:
        with torch.no_grad():
            cream.model.embeddings.copy_(torch.rand_like(cream.model.embeddings))
            cream.model.embedding_fitted.fill_(True)

        def plain() -> object:
            with torch.inference_mode():
                return net(x)

        def no_grad() -> object:
            with torch.no_grad():
                return net(x)

        timings = measure_interleaved({"forward": plain, "forward_no_grad": no_grad, "cream": lambda: cream(x)},
                                      budget_s=budget_s)
        config = cream.config
    ratio = paired_ratio(timings["cream"], timings["forward"])
    return {"network": f"{hub}/{arch}", "batch": batch, "iterations": config.cream.iterations,
            "cam_layer": config.cam_form.cam_layer if config.cam_form else None,
            "forward_ms": timings["forward"]["p50_ms"], "forward_no_grad_ms": timings["forward_no_grad"]["p50_ms"],
            "cream_ms": timings["cream"]["p50_ms"], "ratio": ratio,
            "ratio_to_no_grad": paired_ratio(timings["cream"], timings["forward_no_grad"]),
            "meets_target": ratio <= TARGET}


def main(argv: list[str] | None = None) -> int:
    """Measure every family; print the table; write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timing per family and batch (default 6)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for hub, arch in FAMILIES:
        for batch in (int(b) for b in args.batches.split(",")):
            row = family_row(hub, arch, batch, args.budget)
            rows.append(row)
            print(f"{row['network']:<28} b{batch:<3} forward {row['forward_ms']:8.2f} ms  CREAM {row['cream_ms']:8.2f} "
                  f"ms  ratio {row['ratio']:.3f} (to no_grad {row['ratio_to_no_grad']:.3f})", flush=True)
    result = {"benchmark": "api_overhead", "target_ratio": TARGET, "threads": torch.get_num_threads(),
              "rows": rows, "all_meet_target": all(r["meets_target"] for r in rows),
              "machine": machine_info(), "command": command_line("api_overhead", argv)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
