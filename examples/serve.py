"""The HTTP API and web UI over the main example's SQLite file, ready to serve:

    python -m examples.gettingstarted --db gettingstarted.db
    AIOWORKFLOW_TOKENS="$ADMIN_TOKEN:admin,$DISPATCH_TOKEN:dispatch" \\
        aioworkflow serve --app examples.serve:app --port 8000

It serves two workflows on one database: the getting-started workflow
(examples/gettingstarted.py) and the sign-up of examples/callback.py, a run that waits at
STARTED until someone answers (so there is a running run to pause and resume in the UI).
``POST /dispatch`` routes three event names:

- ``getting-started``: triggers a getting-started run (the foreign id is the event's),
- ``signup``: triggers a sign-up, the payload is its object (``{"email": "..."}``),
- ``signup.answered``: the sign-up's callback at STARTED (``{"confirmed": true}``).

The database is ``$AIOWORKFLOW_URL`` (the command line's variable), by default
``gettingstarted.db`` in the working directory. Tokens come from ``$AIOWORKFLOW_TOKENS``
(``token:scope[+scope],...``). The application runs the workflows' background processes,
so a dispatched run moves on. With ``OTEL_TRACES_EXPORTER=console`` (and opentelemetry-sdk
installed) every span is printed to stderr, one line each. See README.md, "Operate it".
"""

from __future__ import annotations

import json
import os
import sys

from examples import callback, gettingstarted
from workflow.adapters.sql import SQLRecordStore, SQLRoleScheduler, SQLStreamer, make_engine
from workflow.http import Routes, make_app, tokens_from_env


def console_tracing() -> None:
    """With ``OTEL_TRACES_EXPORTER=console``, print each span as it ends, one line each:
    ``span NAME trace=ID workflow="..." foreign_id=... status=... next_status=...``."""
    if os.environ.get("OTEL_TRACES_EXPORTER") != "console":
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        print("tracing off: pip install opentelemetry-sdk", file=sys.stderr)
        return

    def one_line(span: ReadableSpan) -> str:
        attrs = span.attributes or {}
        trace_id = span.context.trace_id if span.context else 0
        fields = [f"span {span.name} trace={trace_id:032x}"]
        for key in ("name", "foreign_id", "status", "next_status"):
            if f"workflow.{key}" in attrs:
                value = str(attrs[f"workflow.{key}"])
                fields.append(f"{'workflow' if key == 'name' else key}={json.dumps(value)}")
        return " ".join(fields) + "\n"

    provider = TracerProvider()
    exporter = ConsoleSpanExporter(out=sys.stderr, formatter=one_line)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


console_tracing()
engine = make_engine(os.environ.get("AIOWORKFLOW_URL", "sqlite+aiosqlite:///gettingstarted.db"))
streamer, roles = SQLStreamer(engine), SQLRoleScheduler(engine)
store = SQLRecordStore(engine, streamer=streamer)  # one store for both workflows
started = gettingstarted.build(streamer, store, roles)
signup = callback.build(streamer, store, roles)

routes = (
    Routes()
    .trigger("getting-started", started)
    .trigger("signup", signup)
    .callback("signup.answered", signup, callback.Status.STARTED, model=callback.Confirmation)
)
app = make_app(
    [started, signup],
    tokens=tokens_from_env("AIOWORKFLOW_TOKENS"),
    routes=routes,
    run_workflows=True,  # the server runs the workflows' consumers, and stops them at exit
)
