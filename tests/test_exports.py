"""The public surface: every name in __all__ resolves, each exactly once, and
``import conveyor`` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import conveyor


def test_all_names_resolve() -> None:
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None, name
    assert len(set(conveyor.__all__)) == len(conveyor.__all__)
    assert sorted(conveyor.__all__) == conveyor.__all__


def test_unknown_name() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        conveyor.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_dir_lists_the_public_names() -> None:
    assert set(conveyor.__all__) <= set(dir(conveyor))


def test_shared_submodule() -> None:
    import conveyor.shared

    assert conveyor.shared.Counter is not None
    assert "shared" in dir(conveyor)
    assert len(set(conveyor.shared.__all__)) == len(conveyor.shared.__all__)
    for name in conveyor.shared.__all__:
        assert getattr(conveyor.shared, name) is not None, name


def test_import_is_light() -> None:
    heavy = (
        "rich",
        "click",
        "cloudpickle",
        "multiprocessing",
        "conveyor._engine",
        "conveyor.shared",
    )
    code = f"import sys, conveyor; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
