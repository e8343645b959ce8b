"""Length-prefixed messages over a stream socket.

Each message is an 8-byte little-endian length, then the message. A message is
sent as a head (a few bytes of header) and a body (a pickle) with one
``sendmsg`` when possible, so a large body is never copied to glue the two.

This replaces ``multiprocessing.connection.Connection``, which would cost every
worker process (and the launcher) the import of a good part of ``multiprocessing``;
it works on ``_socket`` sockets for the same reason (``socket`` builds enum classes
at import, milliseconds of the launcher's start).
"""

from __future__ import annotations

import _socket
import struct

__all__ = ["Wire"]

_LEN = struct.Struct("<Q")


class Wire:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self._head = bytearray(_LEN.size)

    @classmethod
    def from_fd(cls, fd: int) -> Wire:
        return cls(_socket.socket(fileno=fd))

    def send(self, head: bytes, body: bytes | memoryview = b"") -> None:
        frame = _LEN.pack(len(head) + len(body)) + head
        if not body:
            self.sock.sendall(frame)
            return
        sent = self.sock.sendmsg([frame, body])
        if sent < len(frame):
            self.sock.sendall(memoryview(frame)[sent:])
            sent = len(frame)
        if sent < len(frame) + len(body):
            self.sock.sendall(memoryview(body)[sent - len(frame) :])

    def recv(self) -> bytearray:
        """The next message; raises EOFError when the other end has closed."""
        self._fill(memoryview(self._head))
        (n,) = _LEN.unpack(self._head)
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return buf

    def _fill(self, view: memoryview) -> None:
        recv_into = self.sock.recv_into
        while view:
            got = recv_into(view)
            if not got:
                raise EOFError("the other end of the socket closed")
            view = view[got:]

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()
