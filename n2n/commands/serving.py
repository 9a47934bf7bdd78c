"""Model → live: ``n2n serve`` (the ZeroMQ server) and ``n2n dash`` (its live dashboard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from n2n.command import AveragedOpt, Command, ConfigOpt, DryRunOpt, console, log
from n2n.errors import UserError, user_errors
from streamer.endpoints import ENDPOINT_NAMES

__all__ = ["KEYS", "keys", "DASH", "SERVE", "dash", "serve"]

#: the server's six sockets: ``--input-address`` … ``--view-address`` (the old ``--input`` … ``--control`` still work)
ADDRESS_FLAGS = {name: f"--{name}-address" for name in ENDPOINT_NAMES}

SERVE = Command("streamer.server:ServeConfig", flags={
    "--averaged": "averaged",
    "--engine": "engine", "--mode": "mode", "--precision": "precision", "--retime": "retime", "--device": "device",
    "--threads": "num_threads", "--output-dtype": "output_dtype", "--curve-keys": "curve_keys",
    "--insecure": "insecure", "--models-root": "models_root", "--finetune": "finetune.enabled",
    "--trust-code": "trust_code",
    **{flag: f"endpoints.{name}" for name, flag in ADDRESS_FLAGS.items()}},
    defaults={"--threads": "the engine's (all cores)", "--ready-file": "not written", "--curve-keys": "none: "
              "loopback only", "--models-root": "the served model's parent folder"},
    deprecated={f"--{name}": flag for name, flag in ADDRESS_FLAGS.items() if name != "view"})


@SERVE
def serve(
    model: Annotated[list[str], typer.Option(
        "--model", metavar="[CHANNEL=]MODEL", help="Model folder made by `n2n train` (model.json + exports), or a "
        "BioImage Model Zoo package (.zip): it serves every frame. A model per channel: repeat CHANNEL=MODEL "
        "(--model DAPI=runs/dapi --model GFP=runs/gfp; a frame's channel is its meta.channel, the Micro-Manager "
        "Channel config); a MODEL without a channel beside them serves any other channel, else such frames go back "
        "raw, flagged raw:no_model. Or a models.yaml file (channels: {DAPI: runs/dapi, ...}, default: MODEL or "
        "null).")],
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    mode: Annotated[str | None, typer.Option(help="live (latest frame wins) or lossless (every frame).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (the fastest that passed its check, as recorded for this machine), fp32, bf16, fp16 or int8.")]
    = None,
    retime: Annotated[bool | None, typer.Option("--retime", help="Precision auto: time the precisions again instead "
                                                "of taking the choice recorded for this machine.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    output_dtype: Annotated[str | None, typer.Option("--output-dtype", help="same or float32.")] = None,
    input_address: Annotated[str | None, typer.Option("--input-address", help="PULL address for frames.")] = None,
    output_address: Annotated[str | None, typer.Option("--output-address",
                                                       help="XPUB address for denoised frames.")] = None,
    request_address: Annotated[str | None, typer.Option("--request-address",
                                                        help="ROUTER address for requests.")] = None,
    stats_address: Annotated[str | None, typer.Option("--stats-address", help="PUB address for statistics.")] = None,
    control_address: Annotated[str | None, typer.Option("--control-address",
                                                        help="REP address for commands.")] = None,
    view_address: Annotated[str | None, typer.Option("--view-address", help="XPUB address for viewers (raw and "
                                                     "denoised pixels, lossy).")] = None,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", help="Write the bound addresses here (JSON) "
                                                     "once the engine is compiled; removed on exit.")] = None,
    curve_keys: Annotated[Path | None, typer.Option("--curve-keys", help="A folder made by `n2n keys`: encrypt "
                                                    "and authenticate every socket (needed off this machine).")]
    = None,
    insecure: Annotated[bool | None, typer.Option("--insecure", help="Allow addresses other machines reach "
                                                  "without keys (anyone reaching them can use the server).")]
    = None,
    models_root: Annotated[Path | None, typer.Option("--models-root", help="swap takes model folders inside "
                                                     "this one only.")] = None,
    finetune: Annotated[bool | None, typer.Option("--finetune", help="Keep training the model on the stream "
                                                  "(a worker process) and swap in what validates better.")]
    = None,
    trust_code: Annotated[bool | None, typer.Option("--trust-code", help="Run a TorchScript file this install did "
                                                    "not write (a downloaded model's, also on swap): it is a "
                                                    "program.")] = None,
    averaged: AveragedOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Denoise frames streamed over ZeroMQ until Ctrl-C, SIGTERM or a shutdown command, with one model, or with a
    model per channel (a model set: --model DAPI=runs/dapi --model GFP=runs/gfp, or --model models.yaml)."""
    cfg = SERVE.load(config, dry_run, {
        "--engine": engine, "--mode": mode, "--precision": precision, "--retime": retime, "--averaged": averaged,
        "--device": device,
        "--threads": threads, "--output-dtype": output_dtype, "--input-address": input_address,
        "--output-address": output_address, "--request-address": request_address, "--stats-address": stats_address,
        "--control-address": control_address, "--view-address": view_address, "--curve-keys": curve_keys,
        "--insecure": insecure, "--models-root": models_root, "--finetune": finetune, "--trust-code": trust_code})
    import signal

    import zmq

    from streamer.core.modelset import ModelSet
    from streamer.server import Server
    from trainer.live import worker_command

    with user_errors():
        models = ModelSet.parse(model)
    with user_errors(zmq.ZMQError):
        server = Server(models, cfg, finetune_worker=worker_command())
        endpoints = server.start()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    info = {**server.denoiser.info(), "models": server.routes.info(), "model_set": models.describe()}
    if server.routes.only is not None:
        console.print(f"serving [bold]{info['model']}[/bold] with {info['engine']} ({info['device']}, "
                      f"{info['precision']}) in {cfg.mode} mode", highlight=False)
    else:
        console.print(f"serving a model set in {cfg.mode} mode: {models.describe()}", highlight=False, markup=False)
        for lane in server.routes.lanes:
            den = lane.denoiser
            console.print(f"  {', '.join('any other' if c == '*' else c for c in lane.channels)}: "
                          f"{den.card.name} with {den.engine.name} ({info['device']}, {den.engine.precision})",
                          highlight=False, markup=False)
    for name, addr in endpoints.items():
        console.print(f"  {name:8s} {addr}", highlight=False)
    try:
        if ready_file is not None:
            with user_errors(prefix=f"--ready-file {ready_file}: "):
                tmp = ready_file.with_name(ready_file.name + ".tmp")
                tmp.write_text(json.dumps({"endpoints": endpoints, **info}, indent=2) + "\n")
                tmp.replace(ready_file)
        server.serve_forever()
    finally:
        if ready_file is not None:  # a ready file promises a server that answers: not after it has gone
            ready_file.unlink(missing_ok=True)
        server.close()
    st = server.stats
    console.print(f"stopped: {st.frames_in} frames in, {st.frames_out} out, {st.drops} dropped, "
                  f"{sum(st.errors.values())} errors", highlight=False)


DASH = Command("streamer.dashboard:DashConfig", flags={"--stats-address": "stats"},
               deprecated={"--stats": "--stats-address"},
               defaults={"--connect": "none: the stats address", "--curve-keys": "none: loopback only"})


@DASH
def dash(
    stats_address: Annotated[str | None, typer.Option("--stats-address", help="The server's stats address "
                                                      "(its --stats-address).")] = None,
    connect: Annotated[Path | None, typer.Option("--connect", help="A running server's ready file "
                                                 "(n2n serve --ready-file): its stats address.")] = None,
    curve_keys: Annotated[Path | None, typer.Option("--curve-keys", help="The folder made by `n2n keys` (a "
                                                    "server with --curve-keys).")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Live terminal dashboard for a running `n2n serve` (Ctrl-C quits)."""
    if connect is not None and stats_address is not None:
        raise UserError("--connect and --stats-address both name the server's stats address: expected one")
    if connect is not None:
        from n2n.bridging import read_ready_file

        with user_errors(ValueError, prefix="--connect: "):
            stats_address = read_ready_file(connect)["stats"]
    cfg = DASH.load(config, dry_run, {"--stats-address": stats_address})
    import zmq

    from n2n.command import out
    from streamer.dashboard import run_dashboard

    keys: Any = None
    if curve_keys is not None:
        from streamer.security import ClientKeys

        with user_errors(OSError, ValueError, prefix=f"--curve-keys {curve_keys}: "):
            keys = ClientKeys.load(curve_keys)
    where = ("--connect" if connect else "--stats-address" if stats_address else f"{config}: stats" if config
             else "stats")
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    try:  # a bad address is the user's to fix: say so before the dashboard starts
        sock.connect(cfg.stats)
    except zmq.ZMQError as exc:
        raise UserError(f"{where}: expected a ZeroMQ address such as tcp://127.0.0.1:5558, got {cfg.stats!r} "
                        f"({exc.strerror})") from None
    finally:
        sock.close(linger=0)
    raise typer.Exit(code=run_dashboard(cfg.stats, console=out, keys=keys))


KEYS = Command()


@KEYS
def keys(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Folder for the keys (created).", show_default=False)],
    client: Annotated[str, typer.Option(help="Name of the client key pair.")] = "client",
) -> None:
    """Make CURVE keys for a server reachable from other machines: the server's pair, a client's pair and the
    allow-list the server checks (n2n serve --curve-keys DIR)."""
    from streamer.security import make_keys

    with user_errors(prefix=f"{folder}: "):
        made = make_keys(folder, client)
    console.print(f"server secret key {made['server_secret']} (stays on the server); give clients "
                  f"{made['server_public']} and their own pair ({made['client_secret']}); the server lets in the "
                  f"public keys in {made['allowed'].parent}/", highlight=False)
