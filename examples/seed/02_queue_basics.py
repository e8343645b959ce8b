"""A bounded queue between processes: put three items, get them back.

Reproduces from the notes: 1.进程间通信 -- "b、用队列Queue". There,
``q = multiprocessing.Queue(3)`` takes 'first', {'second': None} and '三'; a
fourth ``q.put(4)`` would block until a slot frees up; three ``q.get()`` return
the items in order.

What changes with conveyor: ``conveyor.Channel(3, kind="process")`` is the queue.
Same ``put``/``get`` and the same blocking rules (every channel is bounded, so
``maxsize`` is required: there is no "unbounded" 0). It also has an end of
stream, ``close()``, so a consumer can stop when the producer is done instead of
waiting forever: the second half hands the channel to a child process, which puts
three items and closes it, and the parent reads until ``conveyor.Closed``.
"""

import multiprocessing
import os

import conveyor as cv


def child(q: cv.Channel[object]) -> None:
    """A producer in another process: three items, then the end of the stream."""
    for item in ["first", {"second": None}, "三"]:
        q.put(item)
    q.close()


def main() -> None:
    q: cv.Channel[object] = cv.Channel(3, kind="process")  # maxsize: three items
    q.put("first")
    q.put({"second": None})
    q.put("三")
    print("after three puts:", q, "full:", q.full())
    # q.put(4)  # would block here until someone takes an item (block=True is the default)

    print(q.get())
    print(q.get())
    print(q.get())
    print("after three gets:", q, "empty:", q.empty())

    # The point of an IPC queue: the other end is another process.
    p = multiprocessing.get_context("spawn").Process(target=child, args=(q,))
    p.start()
    received = []
    while True:
        try:
            received.append(q.get(timeout=30))
        except cv.Closed:  # the child closed the channel and everything was taken
            break
    p.join()
    print(f"from child process (pid differs from ours: {p.pid != os.getpid()}): {received}")
    print("child exit code:", p.exitcode)


if __name__ == "__main__":
    main()
