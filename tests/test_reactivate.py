"""`reactivate` against a float64 NumPy reference written from docs/method.md, on random inputs
and the edge cases (zero features, empty foreground, constant CAM, T = 0..4)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.model.em import minmax, reactivate, score_maps  # noqa: E402

EPS = 1e-6

PAPER = CreamConfig(feature_mean="raw", calibration="omega")  # the paper's EM, as the float64 reference has it
PAPER_UNIT = PAPER.with_changes(feature_mean="unit")



def np_minmax(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def np_reactivate(features, cam, centroids, iterations, beta, tau, unit=False, border=0, calibration="omega",
                  center=None):
    """One image at a time, loops over the EM steps, float64, straight from the spec; `center`:
    the EM's features are the features minus it (the CAM is not); `unit`:
    the M-step averages the L2-normalised features (feature_mean "unit"); `border`: the outer
    rings of cells are left out of the M-step (means and priors) and of Omega; calibration
    "none" keeps z_fg, "cam-mean" the component with the higher z-weighted mean of minmax(CAM)
    (over the inner cells)."""
    out = []
    for f, c, mu0 in zip(features.astype(np.float64), cam.astype(np.float64), centroids.astype(np.float64)):
        k, h, w = f.shape
        x = f.reshape(k, -1).T  # (N,K)
        if center is not None:
            x = x - np.asarray(center, np.float64)
        cam_n = np_minmax(c.reshape(-1))
        if iterations == 0:
            out.append(cam_n.reshape(h, w))
            continue
        mu = [mu0[0], mu0[1]]
        pi = [0.5, 0.5]
        xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)
        inner = np.zeros((h, w), bool)
        inner[border:h - border, border:w - border] = True
        inner = inner.reshape(-1)
        for t in range(iterations):
            logit = np.stack([beta * xn @ (m / (np.linalg.norm(m) + EPS)) + np.log(max(p, EPS))
                              for m, p in zip(mu, pi)])
            logit -= logit.max(axis=0)
            z = np.exp(logit) / np.exp(logit).sum(axis=0)
            if t < iterations - 1:
                means = (xn if unit else x)[inner]
                mu = [(z[j][inner][:, None] * means).sum(0) / (z[j][inner].sum() + EPS) for j in range(2)]
                pi = [z[j][inner].sum() / inner.sum() for j in range(2)]
        omega = (cam_n >= tau) & inner
        if calibration == "cam-mean":
            level = [(z[j][inner] * cam_n[inner]).sum() / (z[j][inner].sum() + EPS) for j in range(2)]
            keep = level[0] >= level[1]
        else:
            keep = z[0][omega].sum() >= z[1][omega].sum() or calibration == "none"
        calibrated = z[0] if keep else z[1]
        out.append((calibrated + cam_n).reshape(h, w))
    return np.stack(out)


def _random_case(rng, b=4, k=16, h=7, w=9):
    features = np.maximum(rng.normal(0, 1, (b, k, h, w)), 0).astype(np.float32)
    cam = rng.normal(0, 1, (b, h, w)).astype(np.float32)
    centroids = rng.normal(0, 1, (b, 2, k)).astype(np.float32)
    return features, cam, centroids


@pytest.mark.parametrize("iterations", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("beta,tau", [(8.0, 0.2), (2.0, 0.5), (20.0, 0.05)])
def test_reactivate_matches_float64_reference(iterations, beta, tau):
    rng = np.random.default_rng(iterations * 100 + int(beta))
    for _ in range(5):
        f, c, mu = _random_case(rng)
        got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER.with_changes(beta=beta,
                         tau=tau), iterations=iterations)
        assert got.dtype == torch.float32 and got.shape == c.shape
        np.testing.assert_allclose(got.numpy(), np_reactivate(f, c, mu, iterations, beta, tau), atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_unit_feature_mean_matches_float64_reference(iterations):
    rng = np.random.default_rng(40 + iterations)
    for _ in range(5):
        f, c, mu = _random_case(rng)
        f[0] *= rng.uniform(0.1, 50, (1,) + f.shape[2:]).astype(np.float32)  # norms that differ per pixel
        got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER_UNIT,
                         iterations=iterations)
        np.testing.assert_allclose(got.numpy(), np_reactivate(f, c, mu, iterations, 8.0, 0.2, unit=True), atol=1e-5)
    raw = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER, iterations=2)
    unit = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER_UNIT, iterations=2)
    assert iterations == 1 or float((raw - unit).abs().max()) > 1e-3  # the option changes the M-step


def test_edge_cases():
    rng = np.random.default_rng(1)
    f, c, mu = _random_case(rng, b=4)
    f[0] = 0  # all-zero features: cos 0 to both centroids
    f[1, :, :3, :] = 0  # some zero pixels
    c[2] = 3.0  # constant CAM: minmax 0, empty Omega
    mu[3, 0] = 0  # zero foreground centroid
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER, iterations=2).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np_reactivate(f, c, mu, 2, 8.0, 0.2), atol=1e-5)
    np.testing.assert_allclose(got[0], 0.5 + np_minmax(c[0].astype(np.float64)), atol=1e-6)


def test_iterations_zero_is_minmax_cam_and_score_maps_in_unit_range():
    rng = np.random.default_rng(2)
    f, c, mu = _random_case(rng)
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER, iterations=0)
    np.testing.assert_allclose(got.numpy(), np.stack([np_minmax(m.astype(np.float64)) for m in c]), atol=1e-6)
    maps = score_maps(got, (28, 36))
    assert maps.shape == (4, 28, 36) and float(maps.min()) == 0.0 and float(maps.max()) == 1.0
    const = minmax(torch.full((2, 5, 5), 7.0), (1, 2))
    assert float(const.abs().max()) == 0.0


def test_bicubic_matches_opencv_inter_cubic():
    import cv2

    rng = np.random.default_rng(3)
    m = rng.random((1, 14, 14)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(m)[:, None], size=(224, 224), mode="bicubic",
                                         align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(up, cv2.resize(m[0], (224, 224), interpolation=cv2.INTER_CUBIC), atol=1e-4)


def test_score_maps_bicubic_equals_torch_interpolate_and_opencv():
    import cv2

    rng = np.random.default_rng(4)
    for h, w, out in ((14, 14, (224, 224)), (7, 9, (96, 120)), (28, 28, (224, 224))):
        m = rng.random((2, h, w)).astype(np.float32)
        got = score_maps(torch.from_numpy(m), out).numpy()
        up = torch.nn.functional.interpolate(torch.from_numpy(m)[:, None], size=out, mode="bicubic",
                                             align_corners=False)[:, 0]
        ref = minmax(up, (1, 2)).numpy()
        np.testing.assert_allclose(got, ref, atol=2e-6)
        cv = np.stack([cv2.resize(x, (out[1], out[0]), interpolation=cv2.INTER_CUBIC) for x in m])
        cv = (cv - cv.min(axis=(1, 2), keepdims=True)) / np.ptp(cv, axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(got, cv, atol=1e-4)


@pytest.mark.parametrize("border", [1, 2])
@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_border_rings_match_float64_reference(border, unit):
    """CreamConfig.border: the outer rings stay out of the M-step and of Omega (reference
    written with boolean indexing, not weights)."""
    rng = np.random.default_rng(60 + border)
    for iterations in (1, 2, 3):
        f, c, mu = _random_case(rng, b=3, k=12, h=8, w=9)
        f[:, :, 0, :] *= 6.0  # a bright border row, as zero padding gives
        got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                         CreamConfig(feature_mean="unit" if unit else "raw", calibration="omega", border=border),
                         iterations=iterations)
        np.testing.assert_allclose(got.numpy(), np_reactivate(f, c, mu, iterations, 8.0, 0.2, unit, border),
                                   atol=1e-5)
    plain = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                       CreamConfig(feature_mean="unit" if unit else "raw", calibration="omega"), iterations=2)
    assert float((plain - got).abs().max()) > 1e-4


def test_calibration_none_keeps_the_foreground_component():
    from cream_rt.model.em import reactivation

    rng = np.random.default_rng(9)
    f, c, mu = _random_case(rng, b=6)
    out = reactivation(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                       CreamConfig(feature_mean="unit", beta=8.0, tau=0.2, calibration="none"), iterations=2)
    assert bool(out.keep_fg.all())
    np.testing.assert_allclose(out.map.numpy(), np_reactivate(f, c, mu, 2, 8.0, 0.2, True, calibration="none"),
                               atol=1e-5)
    paper = reactivation(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER_UNIT, iterations=2)
    flipped = ~paper.keep_fg.reshape(-1)
    assert flipped.any() and not flipped.all()  # both cases occur in this draw
    # where the paper's calibration flips, the maps differ by exactly the swap z_fg <-> 1 - z_fg
    np.testing.assert_allclose((paper.calibrated + out.calibrated)[flipped].numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(paper.calibrated[~flipped].numpy(), out.calibrated[~flipped].numpy())


def test_deviation_fields_are_validated_and_refused_by_the_fused_op():
    from cream_rt.config import CreamConfig
    from cream_rt.errors import CreamError

    with pytest.raises(ValueError, match="calibration must be one of"):
        CreamConfig(calibration="cam")
    with pytest.raises(ValueError, match="border must be a non-negative integer"):
        CreamConfig(border=-1)
    f, c, mu = (torch.from_numpy(a) for a in _random_case(np.random.default_rng(2)))
    with pytest.raises(CreamError, match="fused cosine-EM op implements border 0"):
        reactivate(f, c, mu, PAPER.with_changes(border=1), iterations=2, fused=True)
    from cream_rt.export.onnx_export import export_model
    from cream_rt.model.network import create_model

    model = create_model("small-cnn", 2, input_size=32, cream=CreamConfig(upsample=2)).eval()
    with pytest.raises(CreamError, match="upsample 2"):  # refused before tracing (one line)
        export_model(model, "/nonexistent/never-written.onnx", fused=True)


def test_upsampled_em_grid_is_the_em_on_bilinearly_upsampled_inputs():
    """CreamConfig.upsample: the EM, calibration and fusion run on features and CAM resized
    bilinearly (align_corners False) by the factor; the reference runs on those inputs."""
    f, c, mu = _random_case(np.random.default_rng(4), b=2, k=10, h=5, w=6)
    up = lambda a: torch.nn.functional.interpolate(torch.from_numpy(a), scale_factor=2, mode="bilinear",  # noqa: E731
                                                   align_corners=False).numpy()
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu), PAPER_UNIT.with_changes(beta=8.0,
                     tau=0.2, upsample=2), iterations=2)
    assert got.shape == (2, 10, 12)
    np.testing.assert_allclose(got.numpy(), np_reactivate(up(f), up(c[:, None])[:, 0], mu, 2, 8.0, 0.2, True),
                               atol=1e-5)


def test_cam_mean_calibration_hand_computed():
    """calibration 'cam-mean': 4 pixels, minmax(CAM) = (1, 0.6, 0, 0.2). The EM ends with z_fg =
    (0.1, 0.1, 0.9, 0.9) (the component from the fg embedding sits on the low-CAM pixels): its
    mean CAM (0.1*1 + 0.1*0.6 + 0.9*0.2) / 2 = 0.17 < z_bg's (0.9*1 + 0.9*0.6 + 0.1*0.2) / 2 = 0.73:
    swap. With Omega = {CAM >= 0.2} = pixels 0, 1, 3 the paper's rule also swaps (1.1 < 1.9)."""
    from cream_rt.model import em as module

    z = torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    original = module.em_foreground
    module.em_foreground = lambda *a, **k: (z, 1 - z)
    try:
        cam = torch.tensor([[[1.0, 0.6, 0.0, 0.2]]])
        features, centroids = torch.ones(1, 3, 1, 4), torch.ones(1, 2, 3)
        for calibration in ("cam-mean", "omega"):
            out = module.reactivation(features, cam, centroids, CreamConfig(feature_mean="unit", beta=8.0, tau=0.2,
                                      calibration=calibration), iterations=2)
            assert not bool(out.keep_fg) and torch.allclose(out.calibrated, 1 - z)
        # a small object: z_fg on pixel 0 only, Omega = pixels 0-2: the paper's rule swaps (0.9 < 2.1),
        # cam-mean keeps it (mean CAM 0.9*1 / 0.9 = 1 vs (0.1*1 + 0.6 + 0.5 + 0) / 3.1 = 0.39)
        z = torch.tensor([[0.9, 0.0, 0.0, 0.0]])
        cam = torch.tensor([[[1.0, 0.6, 0.5, 0.0]]])
        assert not bool(module.reactivation(features, cam, centroids, PAPER_UNIT, iterations=2).keep_fg)
        assert bool(module.reactivation(features, cam, centroids, CreamConfig(feature_mean="unit", beta=8.0, tau=0.2,
                                        calibration="cam-mean"), iterations=2).keep_fg)
    finally:
        module.em_foreground = original


@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_cam_mean_reactivation_matches_the_float64_reference(unit):
    f, c, mu = _random_case(np.random.default_rng(11), b=16, k=12, h=6, w=7)
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                     CreamConfig(feature_mean="unit" if unit else "raw", calibration="cam-mean"), iterations=2)
    np.testing.assert_allclose(got.numpy(), np_reactivate(f, c, mu, 2, 8.0, 0.2, unit, calibration="cam-mean"),
                               atol=1e-5)


def test_cam_mean_is_the_default_and_older_configs_keep_omega():
    """docs/method.md 3.3: new models calibrate by cam-mean; a config saved before the field
    existed was computed with the paper's rule and keeps it, as feature_mean keeps raw."""
    from cream_rt.config import CreamConfig, ModelConfig

    assert CreamConfig().calibration == "cam-mean"
    saved = ModelConfig().to_dict()
    assert ModelConfig.from_dict(saved).cream.calibration == "cam-mean"
    del saved["cream"]["calibration"]
    assert ModelConfig.from_dict(saved, 1).cream.calibration == "omega"  # a version-1 file without the field


@pytest.mark.parametrize("unit", [True, False])
def test_centered_reactivation_matches_the_float64_reference(unit):
    """CreamConfig.center: the EM (cosines and M-step) runs on features minus the center, the
    CAM on the features; fused and unfused alike (the op is given the centered features)."""
    rng = np.random.default_rng(12)
    f, c, mu = _random_case(rng, b=8, k=12, h=6, w=7)
    center = np.abs(rng.normal(0.5, 0.3, 12)).astype(np.float32)
    want = np_reactivate(f, c, mu, 2, 8.0, 0.2, unit, calibration="cam-mean", center=center)
    assert not np.allclose(want, np_reactivate(f, c, mu, 2, 8.0, 0.2, unit, calibration="cam-mean"), atol=1e-3)
    for fused in (False, True):
        got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                         CreamConfig(feature_mean="unit" if unit else "raw", calibration="cam-mean"), iterations=2,
                         fused=fused, center=torch.from_numpy(center))
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_center_is_off_for_older_configs_and_unknown_versions_are_refused():
    """A version-1 config saved before `center` existed clusters the raw features (the checkpoint
    without the buffer: test_model_cli); a version this cream-rt does not know is refused."""
    from cream_rt.config import ModelConfig

    saved = ModelConfig().to_dict()
    del saved["cream"]["center"]
    assert ModelConfig.from_dict(saved, 1).cream.center is False
    with pytest.raises(ValueError, match="model config version 3 is not supported"):
        ModelConfig.from_dict(saved, 3)


def test_center_default_follows_the_backbone():
    """`center: None` resolves when the model is built: on for a backbone with ImageNet weights,
    off for small-cnn, an explicit value wins, and the saved config holds the bool."""
    from cream_rt.config import CreamConfig, ModelConfig
    from cream_rt.model.network import create_model

    assert CreamConfig().center is None
    assert create_model("small-cnn", 3, input_size=32).config.cream.center is False
    resnet = create_model("resnet50", 3, input_size=64)
    assert resnet.config.cream.center is True
    assert ModelConfig.from_dict(resnet.config.to_dict()).cream.center is True
    assert create_model("resnet50", 3, input_size=64, cream=CreamConfig(center=False)).config.cream.center is False
    lite0 = create_model("efficientnet-lite0", 3, input_size=64)  # chosen on the real photos' val splits
    assert lite0.config.cream.center is True and lite0.config.cream.em_layer == "_blocks.11"  # WSOL: stage6.first
    stock = create_model("efficientnet-lite0", 3, input_size=64, stock_strides=True)
    assert stock.config.cream.em_layer == "_blocks.10" and stock.config.cream.iterations == 1  # stock: stage5.last
    assert lite0.config.cream.iterations == 1 and resnet.config.cream.iterations == 2
    assert create_model("small-cnn", 3, input_size=32, cream=CreamConfig(center=True)).config.cream.center is True
    with pytest.raises(ValueError, match="center must be"):
        CreamConfig(center="yes")


def test_adaptive_start_hand_computed():
    """adapt_fg / adapt_bg: 3 pixels, minmax(CAM) = (1, 0.5, 0), tau 0.2: the foreground side is
    pixels 0 and 1, the background pixel 2. Unit means: the start is (1 - a) V + a * mean of the
    L2-normalised features of that side (the norm's eps moves them by < 1e-6)."""
    from cream_rt.model.em import adaptive_start

    x = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [4.0, 0.0, 5.0]]], dtype=torch.float64)  # (1,K=3,N=3)
    # pixel features (columns): (3,0,4) -> (0.6,0,0.8); (0,2,0) -> (0,1,0); (0,0,5) -> (0,0,1)
    cam_n = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    v = torch.tensor([[[1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]]], dtype=torch.float64)
    start = adaptive_start(x, cam_n, v, tau=0.2, unit_mean=True, adapt_fg=0.5, adapt_bg=0.25)
    np.testing.assert_allclose(start[0, 0].numpy(), 0.5 * np.array([1, 1, 1]) + 0.5 * np.array([0.3, 0.5, 0.4]),
                               atol=1e-6)
    np.testing.assert_allclose(start[0, 1].numpy(), 0.75 * np.array([-1, 0, 2]) + 0.25 * np.array([0, 0, 1]),
                               atol=1e-6)
    # raw means, the image's own only
    raw = adaptive_start(x, cam_n, v, tau=0.2, unit_mean=False, adapt_fg=1.0, adapt_bg=1.0)
    np.testing.assert_allclose(raw[0].numpy(), [[1.5, 1.0, 2.0], [0.0, 0.0, 5.0]], atol=1e-12)


@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_adaptive_start_reactivation_is_the_em_from_the_mixed_start(unit):
    """reactivate(adapt_*) = the float64 reference EM started from the mixed centroids, computed
    here straight from the definition."""
    f, c, mu = _random_case(np.random.default_rng(9), b=5, k=12, h=6, w=7)
    a_fg, a_bg = 0.3, 0.8
    starts = []
    for fi, ci, mi in zip(f.astype(np.float64), c.astype(np.float64), mu.astype(np.float64)):
        x = fi.reshape(12, -1).T
        xs = x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS) if unit else x
        cam_n = np_minmax(ci.reshape(-1))
        fg = xs[cam_n >= 0.2].mean(0)
        bg = xs[cam_n < 0.2].mean(0)
        starts.append([(1 - a_fg) * mi[0] + a_fg * fg, (1 - a_bg) * mi[1] + a_bg * bg])
    want = np_reactivate(f, c, np.array(starts), 2, 8.0, 0.2, unit, calibration="cam-mean")
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                     CreamConfig(feature_mean="unit" if unit else "raw", calibration="cam-mean", adapt_fg=a_fg,
                     adapt_bg=a_bg), iterations=2)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_adapt_fields_are_validated():
    from cream_rt.config import CreamConfig

    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="adapt_bg must be a number in \\[0, 1\\]"):
            CreamConfig(adapt_bg=bad)
