"""The benchmark suite runs real `n2n serve` and echo processes; its numbers agree with each other where they
measure the same thing in different ways (client and server counts, the echo floor and the server's stages)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import suite
from bench.config import BenchConfig
from streamer.core.card import ModelCard


def _children() -> set[int]:
    """Live child processes of this test process (Linux /proc)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        text = (task / "children").read_text().split()
        pids.update(int(p) for p in text)
    return pids


SIZE = 160  # above the server's batch_max_pixels (128²): lossless mode runs one frame per engine call
FRAMES = 8
WARMUP = 10  # the suite's default warm-up


@pytest.fixture(scope="module")
def suite_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One small suite run for the module (n2n bench's configuration: 160x160, 8 frames, 1.5 s of overload,
    ONNX Runtime, one thread), into a report folder and a JSON file beside it."""
    base = tmp_path_factory.mktemp("suite")
    cfg = BenchConfig(model=str(trained_run["run"]), size=SIZE, engines="onnxruntime", frames=FRAMES, overload_s=1.5,
                      threads=1, json_path=str(base / "bench.json"), report=str(base / "report"))
    before = _children() if sys.platform == "linux" else set()
    report = suite.run_from_config(cfg)
    report["_children_before"] = sorted(before)
    return report, base / "report"


def test_suite_reports_the_required_keys(suite_run: tuple[dict[str, Any], Path]) -> None:
    """The headline keys exist and describe the one engine measured; 'auto' resolves to fp32 for ONNX Runtime
    on the CPU and is skipped, not measured twice."""
    r, _ = suite_run
    for key in ("engine", "bare_ms_p50", "e2e_ms_p50", "e2e_ms_p99", "lossless_fps", "bare_fps",
                "live_overload_p99_ms", "live_drop_fraction", "engines", "transport_floor", "memcpy", "machine",
                "noisy"):
        assert key in r, key
    assert r["engine"] == "onnxruntime" and r["precision"] == "fp32"
    [e] = r["engines"]
    assert (e["engine"], e["precision"], e["requested_precision"]) == ("onnxruntime", "fp32", "fp32")
    assert e["bare_ms_p50"] == r["bare_ms_p50"] and e["e2e_ms_p50"] == r["e2e_ms_p50"]
    assert [(s["engine"], s["precision"]) for s in r["skipped"]] == [("onnxruntime", "auto")]
    assert r["skipped"][0]["reason"].startswith("auto resolves to fp32 here")
    m = r["machine"]
    assert m["cpu_count"] == os.cpu_count() and len(m["loadavg"]) == 3 and len(m["loadavg_start"]) == 3


def test_bare_engine_repeats_and_flops(suite_run: tuple[dict[str, Any], Path], trained_run: dict[str, Path]) -> None:
    """The bare figure is the median of its repeats; frames/s over the loop agrees with the mean call; the
    FLOPs counted from the graph agree with the architecture's own count."""
    r, _ = suite_run
    [e] = r["engines"]
    assert len(e["repeats_ms_p50"]) == r["repeats"] == 3
    assert min(e["repeats_ms_p50"]) <= e["bare_ms_p50"] <= max(e["repeats_ms_p50"])
    assert e["noisy"] == (e["spread"] > 0.10) and r["noisy"] == e["noisy"]
    assert 0 < r["bare_ms_p50"] <= r["bare_ms_p99"]
    # frames/s is frames over the loop's wall time: close to one over the mean time per call
    assert r["bare_fps"] == pytest.approx(1000 / r["bare_ms_mean"], rel=0.2)
    card = ModelCard.load(trained_run["run"])
    assert r["flops_per_frame"] == pytest.approx(card.architecture.flops_per_pixel * SIZE * SIZE, rel=1e-6)
    assert r["bare_gflops"] > 0


def test_end_to_end_holds_the_engine_and_the_server(suite_run: tuple[dict[str, Any], Path]) -> None:
    """A frame's round trip through the server holds the server's own time on it (its engine call among it), at
    every percentile; the sustained frames, by the server's send stamps, came no faster than one engine call each;
    the server counted in and out exactly the frames sent. (How far above the echo's floor it lies is the report's
    to say: the floor is measured at another moment of a possibly busy machine.)"""
    r, _ = suite_run
    floor, stages, e2e = r["transport_floor"]["ms"], r["stages_ms_p50"], r["engines"][0]["e2e"]
    assert 0 < floor["p50"] <= floor["p99"] and floor["n"] == FRAMES
    assert 0 < stages["infer"] <= e2e["server_ms"]["p50"] <= r["e2e_ms_p50"] <= r["e2e_ms_p95"] <= r["e2e_ms_p99"]
    assert e2e["server_ms"]["p95"] <= r["e2e_ms_p95"] and e2e["server_ms"]["p99"] <= r["e2e_ms_p99"]
    assert r["lossless_fps"] > 0 and 0 < e2e["server_fps"] <= 1000 / e2e["server_infer_ms_mean"] * (1 + 1e-9)
    server = e2e["server"]
    assert server["frames_in"] == server["frames_out"] == WARMUP + 2 * FRAMES
    assert server["drops"] == 0 and server["errors"] == 0


def test_transport_floor_and_memcpy(suite_run: tuple[dict[str, Any], Path]) -> None:
    """The echo carried the whole frame; copying it in memory is cheaper than sending it round a socket."""
    r, _ = suite_run
    floor = r["transport_floor"]
    assert floor["bytes"] == r["memcpy"]["bytes"] == SIZE * SIZE * np.dtype(r["dtype"]).itemsize
    assert 0 < r["memcpy"]["ms_p50"] < floor["ms"]["p50"]
    assert r["memcpy"]["gb_s"] > 0


def test_suite_live_overload_is_consistent(suite_run: tuple[dict[str, Any], Path]) -> None:
    """Overload figures: the producer kept to the asked rate; the frames the client received are the frames
    the server sent out; every frame sent reached the server and was denoised or dropped; memory sampled."""
    r, _ = suite_run
    live = r["live"]
    assert live["rate_asked_fps"] == pytest.approx(2 * r["bare_fps"])
    assert 0 < live["producer_fps"] <= 1.1 * live["rate_asked_fps"]  # paced, not as fast as it can
    assert live["sent"] > 0 and 1 <= live["received"] <= live["sent"]
    assert live["server_frames_in"] == live["sent"]
    assert live["server_frames_out"] == live["received"] and live["server_errors"] == 0
    assert live["server_frames_out"] + live["server_drops"] == live["server_frames_in"]
    assert r["live_drop_fraction"] == pytest.approx((live["sent"] - live["received"]) / live["sent"])
    assert 0 < live["ms"]["p50"] <= live["ms"]["p99"] == r["live_overload_p99_ms"]
    # each frame's latency holds the server's own time on it (its engine call among it), at every percentile
    assert 0 < live["server_ms"]["p50"] <= live["ms"]["p50"] and live["server_ms"]["p99"] <= live["ms"]["p99"]
    assert isinstance(r["live_latency_bounded"], bool)
    times = [t for t, _ in live["timeline"]]
    assert times == sorted(times) and len(times) == live["received"]
    assert all(ms > 0 for _, ms in live["timeline"])
    # memory: a few samples a second of a real process's resident set, in MB; growth within their range
    rss = np.array(live["rss_mb"])
    assert len(rss) >= 4 and (20 < rss[:, 1]).all() and (rss[:, 1] < 64_000).all()
    assert abs(r["live_rss_growth_mb"]) <= rss[:, 1].max() - rss[:, 1].min()


def test_suite_writes_report_files_and_leaves_no_process(suite_run: tuple[dict[str, Any], Path]) -> None:
    """report.json and the JSON file (the returned report), report.md (the table), two PNGs, the processes'
    logs; no server left running."""
    r, out = suite_run
    saved = json.loads((out / "report.json").read_text())
    assert saved == {k: v for k, v in r.items() if not k.startswith("_")}
    assert json.loads((out.parent / "bench.json").read_text()) == saved
    md = (out / "report.md").read_text()
    assert suite.table(saved) in md
    for name in ("latency_cdf.png", "overload_timeline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["files"]["latency_cdf"] == "latency_cdf.png"
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["echo.log", "serve-live-onnxruntime-fp32.log", "serve-lossless-onnxruntime-fp32.log"]
    assert "SIGTERM received: stopping" in (out / "logs" / "serve-live-onnxruntime-fp32.log").read_text()
    if sys.platform == "linux":
        assert not Path(f"/proc/{r['live']['server_pid']}").exists()
        assert _children() <= set(r["_children_before"])


def test_table_lists_engines_floor_and_overload(suite_run: tuple[dict[str, Any], Path]) -> None:
    """The markdown table: one row per engine, skipped ones with their reason, then the measures."""
    r, _ = suite_run
    text = suite.table(r)
    lines = text.splitlines()
    assert lines[0].startswith("| engine | precision | bare p50 / p99 ms |")
    assert lines[2].startswith("| onnxruntime (cpu) **(selected)** | fp32")
    assert f"{r['bare_ms_p50']:.2f} / {r['bare_ms_p99']:.2f}" in lines[2]
    assert "| onnxruntime | auto | skipped: auto resolves to fp32 here, already measured |" in text
    for label in ("| measure | value |", "| transport floor: zeromq echo p50 / p99 (no model) |", "| memcpy p50 |",
                  "| live overload:", "| live server memory under overload |", "| machine |"):
        assert label in text, label
    # missing numbers read n/a, not a crash
    blank = {**r, "flops_per_frame": None, "engines": [{**r["engines"][0], "gflops": None, "e2e": None}]}
    assert "| n/a | — | n/a |" in suite.table(blank)


def _tiny_model(path: Path) -> Path:
    """Conv (pad 1) → grouped Conv (stride 2) → ConvTranspose (stride 2) → MatMul, input (1, 1, h, w)."""
    w1 = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w2")  # group 2: 4 in, 2 out
    w3 = numpy_helper.from_array(np.ones((2, 3, 2, 2), np.float32), "w3")  # ConvTranspose: (Cin, Cout, k, k)
    b = numpy_helper.from_array(np.ones((8, 5), np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], group=2),
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MatMul", ["c3", "b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "oh", 5])], [w1, w2, w3, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_model_flops_matches_a_hand_count(tmp_path: Path) -> None:
    """2 x multiply-accumulates, counted by hand for a 10x10 input."""
    path = _tiny_model(tmp_path / "tiny.onnx")
    conv1 = (1 * 4 * 10 * 10) * (1 * 3 * 3)  # output elements x (Cin/group x kernel)
    conv2 = (1 * 2 * 4 * 4) * (2 * 3 * 3)  # (10 - 3) // 2 + 1 = 4; 4 in / group 2 = 2 per output
    convt = (1 * 2 * 4 * 4) * (3 * 2 * 2)  # input elements x (Cout x kernel): output 8x8
    matmul = (1 * 3 * 8 * 5) * 8  # output elements x K
    assert suite.model_flops(path, 10, 10) == 2 * (conv1 + conv2 + convt + matmul)


def test_model_flops_of_the_trained_unet_scales_with_area(trained_run: dict[str, Path]) -> None:
    """The exported U-Net pads by an amount computed from the input shape (resolved by running it): FLOPs
    grow with the padded area."""
    onnx_path = trained_run["run"] / "model.onnx"
    f64 = suite.model_flops(onnx_path, 64, 64)
    assert f64 > 0
    assert suite.model_flops(onnx_path, 128, 64) == 2 * f64
    assert suite.model_flops(onnx_path, 63, 63) == f64  # padded to the size multiple first


def test_main_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing model, an unknown engine/precision or a size too small: one error line, exit status 2,
    nothing started; a configuration without a model is refused."""
    assert suite.main(["--model", str(tmp_path / "nope"), "--size", "64"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert suite.main(["--model", str(tmp_path), "--engines", "tensorflow"]) == 2
    assert "expected engines among" in capsys.readouterr().err
    assert suite.main(["--model", str(tmp_path), "--precisions", "int4"]) == 2
    assert capsys.readouterr().err.startswith("error: expected precisions among")
    assert suite.main(["--model", str(tmp_path), "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "size" in err and "16" in err
    with pytest.raises(ValueError, match="expected a model folder"):
        suite.run_from_config(BenchConfig())
