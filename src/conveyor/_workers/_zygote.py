"""The zygote: a small single-threaded server process that forks worker processes.

Why not ``multiprocessing``'s start methods:

* ``fork`` from the engine's process copies a process that runs threads (the
  engine's own, and often the user's): locks held by other threads stay locked in
  the child forever. It is unsafe, and Python 3.12+ warns about it.
* ``spawn`` and ``forkserver`` re-import the user's ``__main__`` in every worker,
  so a script without an ``if __name__ == "__main__":`` guard starts its pipeline
  again inside each worker; ``spawn`` also pays a whole interpreter start per worker.

The zygote is started once per engine process with ``subprocess`` (fork+exec, safe
with threads), imports the worker code and nothing of the user's, and forks a
worker per request. It is single-threaded, so forking it is safe; workers get their
stage with cloudpickle, so nothing needs ``__main__``. ``bench/bench_startup.py``
measures the alternatives. The zygote's own code is in ``_zygote_main``, which
imports as little as it can: the zygote's start is on the way to the first result.

Protocol, over a SOCK_SEQPACKET socket pair (one datagram per message)::

    engine → zygote   SPAWN req  + fds (SCM_RIGHTS): the worker's data socket, the
                      run's control memory, and the file where the worker
                      writes its stack on request (see ``_child``)
                      KILL  pid sig  (send a signal, SIGKILL by default, to
                                      one of its children)
    zygote → engine   SPAWNED req pid
                      EXITED  0   pid exitcode  (negative: killed by that signal)

Lifetime: when the engine's process ends (however: even ``kill -9``), its end of
the socket closes, and the zygote kills every worker it forked, reaps them, and
exits. Workers also die with the zygote (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import ClassVar

from ._zygote_main import EXITED, KILL, MSG, SPAWN, SPAWNED

__all__ = ["Zygote"]


class ZygoteGone(Exception):
    """The zygote process is not running."""


def _after_fork_in_child() -> None:
    Zygote._forget_in_child()


# -- the client side (runs in the engine's process) --------------------------------


class Zygote:
    """The engine's handle on its zygote; one per process, started on first use."""

    _instance: ClassVar[Zygote | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def _forget_in_child(cls) -> None:
        """After os.fork() in the user's code: the child must not keep the parent's
        end of the socket open (the zygote would outlive the parent), nor use it."""
        z = cls._instance
        cls._instance = None
        cls._instance_lock = threading.Lock()
        if z is not None:
            try:
                z.sock.close()
            except OSError:
                pass

    @classmethod
    def get(cls) -> Zygote:
        with cls._instance_lock:
            z = cls._instance
            if z is None or z.pid != os.getpid() or z.gone:
                z = cls._instance = cls()
            return z

    def __init__(self) -> None:
        self.pid = os.getpid()  # the engine process this zygote belongs to
        self.gone = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        code = (
            "import sys; from conveyor._workers._zygote_main import serve; serve(int(sys.argv[1]))"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self.sock = ours
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._next_req = 0
        self._spawned: dict[int, int] = {}
        self._exits: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="conveyor-zygote", daemon=True)
        self._reader.start()

    @classmethod
    def shutdown_current(cls, timeout: float = 2.0) -> None:
        """At interpreter exit, once the runs are stopped: see :meth:`shutdown`."""
        z = cls._instance
        if z is not None:
            z.shutdown(timeout)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Close our end, so that the zygote kills what it still has and exits, and
        wait for it, so that no process outlives this one."""
        if self.pid != os.getpid():
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _read(self) -> None:
        try:
            while True:
                msg = self.sock.recv(MSG.size)
                if not msg:
                    break
                tag, req, pid, code = MSG.unpack(msg)
                with self._cond:
                    if tag == SPAWNED:
                        self._spawned[req] = pid
                    elif tag == EXITED:
                        self._exits[pid] = code
                    self._cond.notify_all()
        except OSError:
            pass
        with self._cond:
            self.gone = True
            self._cond.notify_all()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _send(self, msg: bytes, fds: list[int] | None = None) -> None:
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.sock, [msg], fds)
                else:
                    self.sock.send(msg)
        except OSError as exc:
            raise ZygoteGone(f"the worker-process launcher is gone ({exc})") from None

    def spawn(self, fds: list[int], timeout: float = 60.0) -> int:
        """Fork a worker process that gets ``fds``; return its pid."""
        return self.spawned(self.request_spawn(fds), timeout)

    def request_spawn(self, fds: list[int]) -> int:
        """Ask for a worker process that gets ``fds`` (they can be closed here once
        this returns); :meth:`spawned` waits for it."""
        with self._cond:
            req = self._next_req = self._next_req + 1
        self._send(MSG.pack(SPAWN, req, 0, 0), fds)
        return req

    def spawned(self, req: int, timeout: float = 60.0) -> int:
        """The pid of the worker process of request ``req``, once it is forked."""
        with self._cond:
            if not self._cond.wait_for(lambda: req in self._spawned or self.gone, timeout):
                raise ZygoteGone("the worker-process launcher did not answer")
            if req not in self._spawned:
                raise ZygoteGone("the worker-process launcher exited")
            return self._spawned.pop(req)

    def kill(self, pid: int) -> None:
        """SIGKILL a worker, unless it already exited (the zygote reaps, so a pid it
        no longer has cannot have been reused by anyone we would hurt)."""
        try:
            self._send(MSG.pack(KILL, 0, pid, 0))
        except ZygoteGone:
            pass

    def signal(self, pid: int, signum: int) -> None:
        """Send ``signum`` to a worker, unless it already exited (as :meth:`kill`)."""
        try:
            self._send(MSG.pack(KILL, 0, pid, signum))
        except ZygoteGone:
            pass

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        """The worker's exit code (negative: the signal that killed it), or None if
        it has not exited within ``timeout`` or the zygote is gone."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self.gone, timeout)
            return self._exits.pop(pid, None)


os.register_at_fork(after_in_child=_after_fork_in_child)
