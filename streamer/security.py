"""Who may talk to a server: loopback only by default; anything else with CURVE keys (ZeroMQ's elliptic-curve
encryption and authentication, checked by a ZAP authenticator against an allow-list of client keys) or an
explicit ``insecure`` that says what it exposes.

``n2n keys DIR`` makes the folder a server and its clients share::

    DIR/server.key          the server's public key (give it to every client)
    DIR/server.key_secret   the server's secret key (stays on the server)
    DIR/client.key_secret   a client's key pair (copy it to the client machine)
    DIR/allowed/client.key  the public keys the server lets in (add one file per client)
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq

__all__ = ["ClientKeys", "CurveServer", "is_loopback", "make_keys"]

log = logging.getLogger("n2n.streamer")


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address is reachable from this machine only (tcp on 127.x/localhost/::1, ipc, inproc)."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def make_keys(folder: str | Path, client: str = "client") -> dict[str, Path]:
    """A server key pair, one client key pair and an allow-list holding that client (see the module)."""
    import zmq.auth

    folder = Path(folder)
    (folder / "allowed").mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, "server")
    client_public, client_secret = zmq.auth.create_certificates(folder, client)
    allowed = folder / "allowed" / Path(client_public).name
    shutil.move(client_public, allowed)
    Path(secret).chmod(0o600)
    Path(client_secret).chmod(0o600)
    return {"server_public": Path(public), "server_secret": Path(secret), "client_secret": Path(client_secret),
            "allowed": allowed}


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, folder: str | Path, client: str = "client") -> ClientKeys:
        """From a folder made by ``n2n keys`` (``server.key`` and ``CLIENT.key_secret``)."""
        import zmq.auth

        folder = Path(folder)
        server_public, _ = zmq.auth.load_certificate(folder / "server.key")
        public, secret = zmq.auth.load_certificate(folder / f"{client}.key_secret")
        if secret is None:
            raise ValueError(f"{folder / (client + '.key_secret')}: expected a secret key file, found none")
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class CurveServer:
    """The server's side: its key pair on every socket, and an authenticator that lets in only the clients
    whose public keys are in ``DIR/allowed`` (the server counts the handshakes that fail)."""

    def __init__(self, ctx: zmq.Context, folder: str | Path) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        folder = Path(folder)
        secret_file, allowed = folder / "server.key_secret", folder / "allowed"
        if not secret_file.is_file():
            raise FileNotFoundError(f"{secret_file}: no server secret key (make the keys with `n2n keys {folder}`)")
        if not allowed.is_dir() or not any(allowed.glob("*.key")):
            raise FileNotFoundError(f"{allowed}: no client public keys to let in (`n2n keys` makes one)")
        self.public, self.secret = zmq.auth.load_certificate(secret_file)
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("n2n.streamer.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allowed))
        self.allowed = sorted(p.stem for p in allowed.glob("*.key"))

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self._auth.stop()
