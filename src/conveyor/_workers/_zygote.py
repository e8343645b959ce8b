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
measures the alternatives.

Protocol, over a SOCK_SEQPACKET socket pair (one datagram per message)::

    engine → zygote   SPAWN req  + two fds (SCM_RIGHTS): the worker's data socket
                      and the run's control memory
                      KILL  pid  (SIGKILL one of its children)
    zygote → engine   SPAWNED req pid
                      EXITED  0   pid exitcode  (negative: killed by that signal)

Lifetime: when the engine's process ends (however: even ``kill -9``), its end of
the socket closes, and the zygote kills every worker it forked, reaps them, and
exits. Workers also die with the zygote (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import ClassVar

__all__ = ["Zygote", "serve"]

SPAWN, KILL, SPAWNED, EXITED = 1, 2, 3, 4
MSG = struct.Struct("<BQqq")  # tag, request id, pid, exit code


class ZygoteGone(Exception):
    """The zygote process is not running."""


def _after_fork_in_child() -> None:
    Zygote._forget_in_child()


# -- the server side (runs in the zygote process) ---------------------------------


def serve(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # preload what every worker needs, so that a worker starts with it imported
    import cloudpickle  # noqa: F401  (unpickling a stage needs it)

    from . import _child

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
            msg, fds, _, _ = socket.recv_fds(sock, MSG.size, 4)
            if not msg:
                break  # the engine's process is gone
            tag, req, pid, _ = MSG.unpack(msg)
            if tag == KILL:
                if pid in children:
                    os.kill(pid, signal.SIGKILL)
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os._exit(0)


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
        code = "import sys; from conveyor._workers._zygote import serve; serve(int(sys.argv[1]))"
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
        with self._cond:
            req = self._next_req = self._next_req + 1
        self._send(MSG.pack(SPAWN, req, 0, 0), fds)
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

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        """The worker's exit code (negative: the signal that killed it), or None if
        it has not exited within ``timeout`` or the zygote is gone."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self.gone, timeout)
            return self._exits.pop(pid, None)


os.register_at_fork(after_in_child=_after_fork_in_child)
