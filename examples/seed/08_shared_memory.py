"""Threads of a process share its memory; worker processes do not.

Reproduces from the notes: 三、进程vs线程 -- 3、同一进程内的多个线程共享该进程内的资源.
There, ``x = 1000`` is a global; a thread runs ``global x; x = 0``; after
``join()`` the main thread prints ``主线程 0``.

What changes with conveyor: the same stage function on a thread worker changes
the main program's ``x``; on a process worker it changes the worker's own copy
and the main program still sees 1000. With conveyor, rather than sharing memory,
a stage returns values (see 01_manager_counter.py), which works the same on
both kinds.
"""

import conveyor as cv

x = 1000


def task(_: object) -> int:
    global x
    x = 0
    return x  # the value this worker now sees


def main() -> None:
    global x
    list(cv.Pipeline(name="thread").source([None]).map(task, kind="thread"))
    print("主线程", x)  # 0: the thread worker wrote the main program's x

    x = 1000
    [seen] = cv.Pipeline(name="process").source([None]).map(task, kind="process")
    print(f"the process worker set its x to {seen}; the main program still has x = {x}")


if __name__ == "__main__":
    main()
