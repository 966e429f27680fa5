"""The fused cosine-EM op (cpp_ops/): CPU kernel against the float64 NumPy reference of
test_reactivate, the custom-op registration (schema, fake impl), the model's --fused path,
and the CUDA source compiling with nvcc where nvcc exists (no GPU needed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the fused op cannot be built here", allow_module_level=True)
from test_reactivate import _random_case, np_reactivate  # noqa: E402

from cream_rt.config import CreamConfig  # noqa: E402
from cream_rt.model.em import reactivate  # noqa: E402
from cream_rt.model.fused import cosine_em  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


CALIBRATIONS = ["cam-mean", "omega", "none"]


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 16, 7, 9), (4, 33, 5, 13), (3, 256, 14, 14)])
def test_fused_reactivate_matches_float64_reference(iterations, shape, unit, calibration):
    rng = np.random.default_rng(iterations)
    b, k, h, w = shape
    f, c, mu = _random_case(rng, b, k, h, w)
    f[0, :, :2] = 0  # zero pixels
    got = reactivate(torch.from_numpy(f), torch.from_numpy(c), torch.from_numpy(mu),
                     CreamConfig(feature_mean="unit" if unit else "raw", calibration=calibration),
                     iterations=iterations, fused=True)
    want = np_reactivate(f, c, mu, iterations, 8.0, 0.2, unit=unit, calibration=calibration)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_the_calibrations_disagree_on_the_reference_cases():
    """The cases above tell the rules apart: on some images cam-mean and omega keep different
    components, and on some the foreground component is swapped (so `none` differs too)."""
    rng = np.random.default_rng(2)
    f, c, mu = _random_case(rng, 64, 16, 7, 9)
    maps = {cal: np_reactivate(f, c, mu, 2, 8.0, 0.2, unit=True, calibration=cal) for cal in CALIBRATIONS}
    differ = lambda a, b: int((np.abs(maps[a] - maps[b]).reshape(64, -1).max(1) > 1e-3).sum())  # noqa: E731
    assert differ("cam-mean", "omega") > 0 and differ("cam-mean", "none") > 0 and differ("omega", "none") > 0


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("unit", [True, False], ids=["unit", "raw"])
def test_fused_equals_unfused_reactivate(unit, calibration):
    """fused = unfused within 1e-5 on CPU for both feature means, on features whose norms vary
    by 10x across pixels (where the two M-steps differ most)."""
    gen = torch.Generator().manual_seed(3)
    f = torch.relu(torch.randn(3, 96, 12, 12, generator=gen)) * torch.rand(3, 1, 12, 12, generator=gen).mul(9).add(1)
    c, mu = torch.randn(3, 12, 12, generator=gen), torch.rand(3, 2, 96, generator=gen)
    for t in (2, 3):
        plain = reactivate(f, c, mu, CreamConfig(feature_mean="unit" if unit else "raw", calibration=calibration),
                           iterations=t)
        fused = reactivate(f, c, mu, CreamConfig(feature_mean="unit" if unit else "raw", calibration=calibration),
                           iterations=t, fused=True)
        assert float((plain - fused).abs().max()) < 1e-5
    other = reactivate(f, c, mu, CreamConfig(feature_mean="unit" if not unit else "raw", beta=8.0, tau=0.2,
                       calibration=calibration), iterations=2, fused=True)
    assert float((other - fused).abs().max()) > 1e-3  # the flag reaches the kernel


def test_gpu_check_reference_equals_the_test_reference():
    """bench/gpu_checks.py judges the CUDA op with its own float64 reference: check it here."""
    from bench.gpu_checks import reference_map

    f, c, mu = _random_case(np.random.default_rng(7), 3, 24, 6, 5)
    for t in (1, 2, 3):
        for unit in (True, False):
            for calibration in CALIBRATIONS:
                np.testing.assert_allclose(reference_map(f, c, mu, t, 8.0, 0.2, unit, calibration),
                                           np_reactivate(f, c, mu, t, 8.0, 0.2, unit=unit, calibration=calibration),
                                           atol=1e-9)


@pytest.mark.parametrize("batch", [1, 5])
def test_fused_op_gives_the_same_maps_on_one_and_two_threads(batch):
    """Batches split over images, single images over pixel tiles (partial M-step sums added
    in another order): the parallel paths agree with the serial one."""
    gen = torch.Generator().manual_seed(batch)
    f = torch.relu(torch.randn(batch, 64, 24, 24, generator=gen))
    c, mu = torch.randn(batch, 24, 24, generator=gen), torch.rand(batch, 2, 64, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = cosine_em(f, c, mu, 3, 8.0, 0.2)
        torch.set_num_threads(2)
        parallel = cosine_em(f, c, mu, 3, 8.0, 0.2)
    finally:
        torch.set_num_threads(threads)
    assert (serial - parallel).abs().max() < 1e-5


def test_fused_equals_torch_path_on_edge_cases():
    rng = np.random.default_rng(5)
    f, c, mu = (torch.from_numpy(a) for a in _random_case(rng, 4, 24, 6, 6))
    f[0] = 0
    c[1] = 2.0
    mu[2, 0] = 0
    for calibration in CALIBRATIONS:
        a = reactivate(f, c, mu, CreamConfig(feature_mean="raw", calibration=calibration), iterations=2, fused=False)
        b = reactivate(f, c, mu, CreamConfig(feature_mean="raw", calibration=calibration), iterations=2, fused=True)
        assert torch.isfinite(b).all() and (a - b).abs().max() < 1e-5


def test_custom_op_registration():
    f = torch.relu(torch.randn(2, 8, 4, 5))
    c = torch.randn(2, 4, 5)
    mu = torch.rand(2, 2, 8)
    out = cosine_em(f, c, mu, 2, 8.0, 0.2)  # builds and loads the CPU kernel
    torch.library.opcheck(torch.ops.cream.cosine_em.default, (f, c, mu, 2, 8.0, 0.2))
    assert torch.equal(torch.ops.cream.cosine_em(f, c, mu, 2, 8.0, 0.2), out)
    assert out.shape == (2, 4, 5) and ((out >= 0) & (out <= 2)).all()
    torch.library.opcheck(torch.ops.cream.cosine_em.default, (f, c, mu, 2, 8.0, 0.2, True))
    torch.library.opcheck(torch.ops.cream.cosine_em.default, (f, c, mu, 2, 8.0, 0.2, True, "cam-mean"))
    with pytest.raises(RuntimeError, match="cam must be"):
        cosine_em(f, c[:, :3], mu, 2, 8.0, 0.2)
    with pytest.raises(RuntimeError, match="calibration must be"):
        cosine_em(f, c, mu, 2, 8.0, 0.2, True, "mean")


@pytest.mark.parametrize("call", ["cam", "calibration"])
def test_the_kernel_refuses_bad_inputs_with_an_exception_not_a_crash(call):
    """Straight through the dispatcher (no Python check first), the C++ check's exception reaches
    Python as a RuntimeError. In a child process: it crashed torch 2.11 on one GPU machine."""
    import sys

    args = "c[:, :3], mu, 2, 8.0, 0.2" if call == "cam" else "c, mu, 2, 8.0, 0.2, True, 'mean'"
    code = ("import torch\nfrom cream_rt.model.fused import cosine_em\n"
            "f, c, mu = torch.rand(2, 8, 4, 5), torch.rand(2, 4, 5), torch.rand(2, 2, 8)\n"
            "cosine_em(f, c, mu, 2, 8.0, 0.2)\n"
            f"try:\n    torch.ops.cream.cosine_em(f, {args})\n"
            "except RuntimeError as exc:\n    print('refused:', str(exc).splitlines()[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "refused: cosine_em:" in out.stdout, (out.returncode, out.stderr[-1500:])


def test_model_fused_flag_gives_the_same_maps():
    from cream_rt.model.network import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", 3, input_size=48).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        _, plain, _ = model(x)
        _, fused, _ = model(x, fused=True)
    assert (plain - fused).abs().max() < 1e-5


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    out = subprocess.run(["nvcc", "-std=c++17", "-O3", "-arch=sm_90", "-c", str(REPO / "cpp_ops" / "nvcc_check.cu"),
                          "-I", str(REPO / "cpp_ops"), "-o", str(tmp_path / "check.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("calibration", ["cam-mean", "omega"])
def test_fused_onnx_export_runs_in_onnxruntime_with_extensions(tmp_path, calibration):
    """`cream export --fused`: one cream::CosineEM node carrying the model's calibration; ONNX
    Runtime runs it through the onnxruntime-extensions kernel (parity only) and matches the eager
    unfused model; the torch-free runtime refuses it with a clear message, and so do ONNX Runtime
    and the TensorRT builder a file of an earlier version of the op."""
    pytest.importorskip("onnxruntime_extensions")
    import onnx

    from cream_rt.config import CreamConfig
    from cream_rt.errors import ModelFileError
    from cream_rt.export.onnx_export import export_model
    from cream_rt.export.tensorrt_build import build_engine
    from cream_rt.model.network import create_model
    from cream_rt.runtime import OnnxPredictor

    torch.manual_seed(0)
    model = create_model("small-cnn", 3, input_size=48, cream=CreamConfig(calibration=calibration, center=True)).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))
    with torch.no_grad():  # a feature center as the embedding pass sets it: the op gets centered features
        model.feature_center.copy_(model.features(torch.randn(4, 3, 48, 48)).mean((0, 2, 3)))
    manifest = export_model(model, tmp_path / "f.onnx", fused=True)
    assert manifest.fused and manifest.config.cream.center
    nodes = onnx.load(tmp_path / "f.onnx").graph.node
    assert [(n.domain, n.op_type) for n in nodes if n.domain == "cream"] == [("cream", "CosineEM")]
    with pytest.raises(ModelFileError, match="uses the custom op cream::CosineEM"):
        OnnxPredictor.load(tmp_path / "f.onnx")
    predictor = OnnxPredictor.load(tmp_path / "f.onnx", allow_custom_ops=True)
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 48, 48)).astype(np.float32)
    logits, maps = predictor(x, np.array([-1, 0, 2]))
    with torch.no_grad():
        le, me, _ = model(torch.from_numpy(x), torch.tensor([-1, 0, 2]))
    np.testing.assert_allclose(maps, me.numpy(), atol=1e-4)
    proto = onnx.load(tmp_path / "f.onnx")
    assert [(e.domain, e.version) for e in proto.opset_import if e.domain == "cream"] == [("cream", 4)]
    assert model.config.cream.feature_mean == "unit"  # the default config exports fused
    attrs = {a.name: a for n in proto.graph.node if n.domain == "cream" for a in n.attribute}
    assert attrs["unit_mean"].i == 1 and attrs["calibration"].s.decode() == calibration
    # a --fused export of an earlier version of the op is refused with one clear line
    for entry in proto.opset_import:
        if entry.domain == "cream":
            entry.version = 3
    onnx.save(proto, tmp_path / "old.onnx")
    with pytest.raises(ModelFileError, match="version 3, this cream-rt runs version 4: re-export"):
        OnnxPredictor.load(tmp_path / "old.onnx", allow_custom_ops=True)
    with pytest.raises(ModelFileError, match="version 3, this cream-rt runs version 4: re-export"):
        build_engine(str(tmp_path / "old.onnx"), str(tmp_path / "old.engine"))
    assert not (tmp_path / "old.engine").exists()


def test_eager_fused_bench_engine_gives_the_eager_maps():
    """`cream bench --engines eager-fused` times the same model with the EM in the op: its maps
    equal the eager engine's, and the model it was given keeps the torch path."""
    from cream_rt.benchmark.engines import build_engine
    from cream_rt.model.network import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", 5, input_size=64).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ids = np.array([0, 4, 2], np.int64)
    eager = build_engine("eager", model, None, "cream", 2, x, ids).run()[1]
    fused = build_engine("eager-fused", model, None, "cream", 2, x, ids).run()[1]
    np.testing.assert_allclose(fused.numpy(), eager.numpy(), atol=1e-5)


def test_fused_with_an_adaptive_start_equals_unfused():
    """The op takes any start: with adapt_fg / adapt_bg the start is computed in torch first."""
    f, c, mu = (torch.from_numpy(a) for a in _random_case(np.random.default_rng(4), 3, 40, 8, 8))
    for unit in (True, False):
        plain = reactivate(f, c, mu, CreamConfig(feature_mean="unit" if unit else "raw", calibration="cam-mean",
                           adapt_fg=0.4, adapt_bg=1.0), iterations=2)
        fused = reactivate(f, c, mu, CreamConfig(feature_mean="unit" if unit else "raw", calibration="cam-mean",
                           adapt_fg=0.4, adapt_bg=1.0), iterations=2, fused=True)
        assert float((plain - fused).abs().max()) < 1e-5
