"""A missing optional dependency, named with the extra that installs it."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["require"]

DISTRIBUTION = "aioworkflow"


def require(extra: str, *modules: str) -> None:
    """Raise ``ImportError`` naming ``pip install "aioworkflow[extra]"`` when any of
    ``modules`` cannot be imported."""
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise ImportError(
            f"workflow.adapters.{extra} needs {', '.join(missing)}: install the extra with "
            f'pip install "{DISTRIBUTION}[{extra}]"',
            name=missing[0],
        )
