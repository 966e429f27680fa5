"""What `cream bench` prints and draws from its rows: the ratios measured in one run, and a
latency-per-image plot."""
from __future__ import annotations

from .latency import paired_ratio


def ratios(rows: list[dict], pipeline: list[dict]) -> list[str]:
    """The headline comparisons, each from numbers measured in this run."""
    def row(engine, mode, batch, t=None):
        for r in rows:
            same_t = t is None or r["iterations"] == t
            if r["engine"] == engine and r["mode"] == mode and r["batch"] == batch and same_t:
                return r
        return None

    def find(engine, mode, batch, t=None):
        r = row(engine, mode, batch, t)
        return r["p50_ms"] if r else None

    lines = []
    batches = sorted({r["batch"] for r in rows})
    cream_ts = sorted({r["iterations"] for r in rows if r["mode"] == "cream"})
    t = max(cream_ts) if cream_ts else None
    for b in batches:
        for mode, tt in (("cream", t), ("cam", 0)):
            for ort_engine in ("onnxruntime", "onnxruntime-int8"):
                e, o = find("eager", mode, b, tt), find(ort_engine, mode, b, tt)
                if e and o:
                    lines.append(f"{ort_engine} vs eager, {mode}{'' if mode == 'cam' else f' T={tt}'}, batch {b}: "
                                 f"speed-up {e / o:.2f}x")
        for engine in ("eager", "eager-fused", "onnxruntime", "onnxruntime-int8", "eager-channels-last",
                       "torch-compile"):
            c, r = row(engine, "cam", b), row(engine, "cream", b, t)
            if c and r:
                lines.append(f"{engine} CREAM T={t} vs CAM, batch {b}: {paired_ratio(r, c):.3f}x the latency")
        o = find("onnxruntime", "cream", b, t)
        for engine in ("eager-fused",):
            e = find(engine, "cream", b, t)
            if e and o:
                lines.append(f"onnxruntime vs {engine}, cream T={t}, batch {b}: speed-up {e / o:.2f}x")
        ours = [v for v in (find("eager", "cam", b), find("onnxruntime", "cam", b)) if v]
        for other in ("grad-cam", "torchcam"):
            o = find(other, "cam", b)
            if o and ours:
                lines.append(f"our CAM (fastest of eager/onnxruntime) vs {other}, batch {b}: "
                             f"speed-up {o / min(ours):.2f}x")
    for p in pipeline:
        lines.append(f"Localizer pipeline vs bare model, batch {p['batch']}: {p['pipeline_vs_model']:.2f}x the time "
                     f"(one batch); {p['streamed_vs_model']:.2f}x streamed (decoding the next batch meanwhile)")
    return lines


def plot(result: dict, path: str) -> None:
    """Latency per image against batch size, one line per engine and mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from cream_rt.errors import CreamError

        raise CreamError("--plot needs matplotlib (pip install -r requirements-bench.txt)") from None
    from cream_rt.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = {}
    for r in result["rows"]:
        label = f"{r['engine']} {r['mode']}" + (f" T={r['iterations']}" if r["mode"] == "cream" else "")
        series.setdefault(label, []).append((r["batch"], r["p50_ms_per_image"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                linestyle="--" if "cam" in label.split()[1] else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency per image (ms)")
    ax.set_title(f"cream bench: {result.get('backbone', '')} on {result['machine'].get('cpu', 'this machine')}"[:80])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
