"""The zygote process's own code: the server loop (see ``_zygote`` for the design and
the protocol).

It imports as little as it can before it forks workers: the start of the zygote is
on the way to the first result of every first run. ``_socket`` and ``_signal``
instead of ``socket`` and ``signal`` (whose enum classes cost milliseconds to
build), and nothing of the engine's side (``subprocess``): what it does import
before serving is what every worker needs anyway.
"""

from __future__ import annotations

import _socket
import array
import os
import select
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # the signal module without its enum classes

__all__ = ["EXITED", "KILL", "MSG", "SPAWN", "SPAWNED", "serve"]

SPAWN, KILL, SPAWNED, EXITED = 1, 2, 3, 4
MSG = struct.Struct("<BQqq")  # tag, request id, pid, exit code
MAX_FDS = 5


def _recv_fds(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """A message and the file descriptors that came with it (``socket.recv_fds``)."""
    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(MSG.size, _socket.CMSG_LEN(MAX_FDS * fds.itemsize))
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def serve(fd: int) -> None:
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    sock = _socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)
    # preload what every worker needs, so that a worker starts with it imported
    import cloudpickle  # noqa: F401  (unpickling a stage needs it)

    from . import _child
    from ._protocol import STACK_SIGNAL

    # a worker that gets asked for its stack before it can answer (see _child) must
    # not die of it: the signal's default action ends a process
    _signal.signal(STACK_SIGNAL, _signal.SIG_IGN)

    me = os.getpid()
    children: set[int] = set()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            sock.send(MSG.pack(EXITED, 0, pid, os.waitstatus_to_exitcode(status)))

    try:
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                reap()
            if sock.fileno() not in ready:
                continue
            msg, fds = _recv_fds(sock)
            if not msg:
                break  # the engine's process is gone
            tag, req, pid, arg = MSG.unpack(msg)
            if tag == KILL:  # the last field: the signal to send (0: SIGKILL)
                if pid in children:
                    os.kill(pid, arg or _signal.SIGKILL)
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _signal.set_wakeup_fd(-1)
                    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                    sock.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    code = _child.main(fds, me)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            for f in fds:
                os.close(f)
            children.add(pid)
            sock.send(MSG.pack(SPAWNED, req, pid, 0))
    except OSError:
        pass  # the engine's end of the socket went away mid-send
    finally:
        for pid in children:
            try:
                os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os._exit(0)
