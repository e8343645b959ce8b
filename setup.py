"""The one thing pyproject.toml cannot say: the optional C extension.

``conveyor._channels._ring`` holds the process channel's hot paths. It is optional:
without a C compiler the build goes on without it and the channel runs its
pure-Python code, which passes the same tests (only slower per message).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conveyor._channels._ring",
            sources=["src/conveyor/_channels/_ring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
