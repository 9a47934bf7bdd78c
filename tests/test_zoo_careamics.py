"""Interop with a real peer: a tiny CAREamics Noise2Noise model, trained and exported by CAREamics' own
``export_to_bmz`` (state-dict weights, converted to TorchScript and ONNX with bioimageio.core's converters) in
CAREamics' own environment (``tests/peers/careamics_peer.py``), served live by ``n2n serve --model PACKAGE.zip``:
every frame equals CAREamics' own ``predict`` within float32 tolerance.

CAREamics needs torchvision, which has no build beside the CPU PyTorch this project installs, so it runs in a
second environment (as it does at a microscope: one tool, one environment), named by ``N2N_CAREAMICS_PYTHON``;
``.ci/run`` makes it from ``tests/peers/careamics-requirements.txt``. Without it the tests skip, except in CI
(``CI=true``), where a skip would hide a missing step, so they fail."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from serverkit import config
from test_cli import n2n

from streamer.client import ServerError, StreamClient
from streamer.server import running_server

PEER = Path(__file__).parent / "peers" / "careamics_peer.py"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2N_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the CAREamics peer made: its packages, a test frame and CAREamics' prediction of it."""
    python = os.environ.get("N2N_CAREAMICS_PYTHON")
    if not python:
        why = "N2N_CAREAMICS_PYTHON is not set (a Python with careamics: docs/zoo.md)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run sets it")
        pytest.skip(why)
    out = tmp_path_factory.mktemp("careamics")
    done = subprocess.run([python, str(PEER), str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == json.loads((out / "peer.json").read_text())
    return report


def test_careamics_exports_state_dict_weights_and_the_converted_package_passes_the_zoos_test(peer: dict) -> None:
    """What the peer reports of itself: CAREamics' package holds only state-dict weights; with TorchScript and ONNX
    added by bioimageio.core's converters, bioimageio.core's model test passes for each format."""
    assert peer["original_weights"] == ["pytorch_state_dict"]
    assert {"onnx", "torchscript"} <= set(peer["converted_weights"])
    tested = peer["validation"]["converted"]
    assert all(tested[f"test_model[{fmt}]"] == "passed" for fmt in peer["converted_weights"])


def test_a_careamics_package_is_served_live_as_careamics_predicts(peer: dict) -> None:
    """n2n serve --model CAREAMICS.zip (live mode, every engine at fp32): each frame, pushed and requested, equals
    CAREamics' own predict within float32 tolerance; a frame of another size than the package's fixed one gets a
    bad_shape reply naming that size, and the server goes on."""
    frame = np.load(peer["packages"]["frame"])
    expected = np.load(peer["packages"]["careamics_prediction"])
    package = Path(peer["packages"]["converted"])
    tol = 1e-5 * float(np.ptp(expected))  # float32 rounding of a different runtime (seen: 2e-4 in 825)
    for engine in ("onnxruntime", "openvino", "torch"):
        # the converted TorchScript was written by bioimageio.core, not by this install: a program, run knowingly
        with running_server(package, config(engine=engine, output_dtype="float32", trust_code=engine == "torch")) \
                as server, \
                StreamClient(server.endpoints) as client:
            client.wait_subscribed()
            client.send(frame, seq=1)
            pushed = client.receive()
            requested = client.request(frame, seq=2)
            with pytest.raises(ServerError) as info:
                client.request(frame[:64].copy(), seq=3)
            again = client.request(frame, seq=4)
            status = client.status()
        assert server.denoiser.engine.name == engine and server.denoiser.card.architecture.name == "bioimageio"
        for result in (pushed, requested, again):
            assert result.pixels.shape == frame.shape and result.pixels.dtype == np.float32
            assert float(np.abs(result.pixels - expected).max()) <= tol, engine
        assert info.value.code == "bad_shape" and list(frame.shape).__repr__() in str(info.value)
        assert status["errors_by_kind"] == {"bad_shape": 1} and status["frames_out"] == 3


def test_careamics_own_package_with_state_dict_weights_only_is_refused_in_one_line(peer: dict) -> None:
    """CAREamics' package as it exports it (pytorch_state_dict only: its architecture is Python code) cannot be
    served: n2n serve exits 2 with the line that says so and what to do."""
    result = n2n("serve", "--model", peer["packages"]["original"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "weights pytorch_state_dict: n2n-live runs onnx or torchscript weights" in " ".join(result.output.split())
