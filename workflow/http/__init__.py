"""An HTTP API for workflows (ASGI, on Starlette; served by uvicorn). Needs the ``http``
extra: ``pip install "aioworkflow[http]"``.

    from workflow.http import Routes, make_app, tokens_from_env

    routes = Routes().trigger("email.send", email_wf, model=EmailPayload)
    app = make_app([email_wf], tokens=tokens_from_env(), routes=routes, run_workflows=True)

then ``python -m workflow.http --app mymodule:app``, or mount ``app`` into your own ASGI
application. See docs/operations.md, "HTTP API".
"""

from __future__ import annotations

from importlib.util import find_spec

_missing = [m for m in ("starlette", "uvicorn") if find_spec(m) is None]
if _missing:
    raise ImportError(
        f"workflow.http needs {', '.join(_missing)}: install the extra with "
        'pip install "aioworkflow[http]"',
        name=_missing[0],
    )

from ._app import ApiError, make_app, running  # noqa: E402
from ._auth import ADMIN, DISPATCH, READ, tokens_from_env  # noqa: E402
from ._routes import Route, Routes  # noqa: E402
from ._serve import serve, serve_main  # noqa: E402

__all__ = [
    "ADMIN",
    "DISPATCH",
    "READ",
    "ApiError",
    "Route",
    "Routes",
    "make_app",
    "running",
    "serve",
    "serve_main",
    "tokens_from_env",
]
