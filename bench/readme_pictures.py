"""The README's CAM | CREAM pictures: real photos that may be redistributed (scikit-image's
bundled public-domain / CC0 photos: chelsea the cat, coffee, the rocket) localized by the shipped
Lite0 with `cream localize --overlays --overlays-compare` (its CAM export on the left, CREAM on
the right, boxes at the shipped thresholds), written small as JPEGs. The ILSVRC / raccoon /
fruits photos may not be copied into the project (their README), so they are not used here.

    python -m bench.shipped --backbones efficientnet-lite0        # the fitted Lite0, once
    python -m bench.readme_pictures --checkpoint accuracy_work/shipped/efficientnet-lite0-fit.pt
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2

from .accuracy import cli

PHOTOS = ("chelsea", "coffee", "rocket")
WIDTH = 640  # pixels of each side-by-side picture


def main(argv: list[str] | None = None) -> int:
    """Export CAM and CREAM, localize the photos with side-by-side overlays, write the JPEGs."""
    import skimage.data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the fitted shipped Lite0 (bench.shipped's *-fit.pt)")
    p.add_argument("--out", default="docs/images", help="folder of the pictures (default docs/images)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "photos").mkdir()
        for name in PHOTOS:
            cv2.imwrite(str(work / "photos" / f"{name}.png"), cv2.cvtColor(getattr(skimage.data, name)(),
                                                                          cv2.COLOR_RGB2BGR))
        for mode in ("cam", "cream"):
            cli(["export", "--checkpoint", args.checkpoint, "--out", str(work / f"{mode}.onnx"), "--mode", mode])
        cli(["localize", str(work / "photos"), "--model", str(work / "cream.onnx"), "--overlays-compare",
             str(work / "cam.onnx"), "--overlays", str(work / "overlays"), "--out", str(work / "r.jsonl")])
        for name in PHOTOS:
            picture = cv2.imread(str(work / "overlays" / f"{name}.png"))
            height = round(picture.shape[0] * WIDTH / picture.shape[1])
            small = cv2.resize(picture, (WIDTH, height), interpolation=cv2.INTER_AREA)
            target = Path(args.out) / f"cam_cream_{name}.jpg"
            cv2.imwrite(str(target), small, [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"wrote {target} ({target.stat().st_size // 1000} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
