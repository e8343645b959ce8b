"""The one thing pyproject.toml cannot say: the optional C extensions.

``conveyor._channels._ring`` holds the process channel's hot paths, and
``conveyor.sync._native`` those of ``conveyor.sync``'s Lock and RLock. Both are
optional: without a C compiler the build goes on without them and the channel and
the locks run their pure-Python code, which passes the same tests (only slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conveyor._channels._ring",
            sources=["src/conveyor/_channels/_ring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "conveyor.sync._native",
            sources=["src/conveyor/sync/_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
