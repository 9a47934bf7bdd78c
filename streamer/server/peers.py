"""Who is listening: subscribers to frames (by peer, however often each subscribes), viewers, and peers whose
CURVE handshake was refused."""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..protocol import TOPIC_FRAME, TOPIC_VIEW
from .sockets import HANDSHAKE_FAILED, Sockets
from .stats import ServerStats

__all__ = ["Peers"]


class Peers:
    """Counts from the output's and the view's (un)subscriptions and the output's connection monitor; the loop
    calls a handler when one of those sockets has something to read."""

    def __init__(self, sockets: Sockets, stats: ServerStats) -> None:
        self._sockets = sockets
        self._stats = stats
        self.subscribers = 0
        """Peers subscribed to frames: subscriptions, never more than the peers connected."""
        self.viewers = 0
        """Viewers: subscriptions on the view socket, never more than the peers connected to it."""
        self._peers = 0  # connected to the output
        self._subscriptions = 0  # to frames, by all peers
        self._view_peers = 0  # connected to the view
        self._view_subscriptions = 0

    def _moved(self, sock: zmq.Socket, topic: bytes, count: int) -> int:
        """``count`` moved by the (un)subscriptions to ``topic`` waiting on the XPUB ``sock`` ('' or a prefix of the
        topic counts; XPUB also passes up any other message an XSUB peer sends, which must not move it)."""
        while True:
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return count
            if event[:1] in (b"\x00", b"\x01") and topic.startswith(event[1:]):
                count = max(0, count + (1 if event[:1] == b"\x01" else -1))
            elif len(event) > 256:
                self._stats.on_error("bad_subscription")

    def on_output(self) -> None:
        self._subscriptions = self._moved(self._sockets["output"], TOPIC_FRAME, self._subscriptions)
        self._count()

    def on_view(self) -> None:
        self._view_subscriptions = self._moved(self._sockets["view"], TOPIC_VIEW, self._view_subscriptions)
        self._count()

    def _connections(self, monitor: zmq.Socket, peers: int, subscriptions: int) -> tuple[int, int]:
        """Peers connected and subscriptions after the ``monitor``'s events. ZeroMQ passes every subscription
        (a peer subscribing twice: two) but withdraws a leaving peer's topic once: the count is at most one per peer
        connected (:meth:`_count`) and back to 0 when no peer is, so that a peer that subscribed twice and left
        leaves no count behind."""
        while monitor.poll(0):
            kind = recv_monitor_message(monitor)["event"]
            if kind == zmq.EVENT_ACCEPTED:
                peers += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                peers = max(0, peers - 1)
                if peers == 0:  # nobody connected: nobody subscribed, whatever duplicates were counted
                    subscriptions = 0
            elif kind & HANDSHAKE_FAILED:
                self._stats.on_error("auth_refused")
        return peers, subscriptions

    def on_connection(self) -> None:
        monitor = self._sockets.monitor
        assert monitor is not None
        self._peers, self._subscriptions = self._connections(monitor, self._peers, self._subscriptions)
        self._count()

    def on_view_connection(self) -> None:
        monitor = self._sockets.view_monitor
        assert monitor is not None
        self._view_peers, self._view_subscriptions = self._connections(monitor, self._view_peers,
                                                                       self._view_subscriptions)
        self._count()

    def on_handshake_failed(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            recv_monitor_message(monitor)
            self._stats.on_error("auth_refused")

    def _count(self) -> None:
        peers = self._peers if self._sockets.monitor is not None else self._subscriptions
        self.subscribers = min(self._subscriptions, peers)
        view_peers = self._view_peers if self._sockets.view_monitor is not None else self._view_subscriptions
        self.viewers = min(self._view_subscriptions, view_peers)
