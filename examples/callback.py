"""Callbacks: a run waits at a status until the outside world answers.

    python -m examples.callback

A sign-up waits at STARTED for the user to confirm (say, by clicking a link in an e-mail).
Whatever receives that answer (an HTTP handler, a message consumer) calls
``wf.callback(foreign_id, Status.STARTED, payload)`` with JSON such as ``{"confirmed": true}``;
the callback function reads it and moves the run to CONFIRMED or REJECTED. A malformed
payload raises the callback's ``pydantic.ValidationError`` to the caller and changes nothing.
"""

from __future__ import annotations

import asyncio
import enum
import json
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, ValidationError

from examples.adapters import MakeAdapters, memory
from workflow import Builder, EventStreamer, RealClock, RecordStore, RoleScheduler, Run, Workflow


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1  # waiting for the user's answer
    CONFIRMED = 2
    REJECTED = 3


class Signup(BaseModel):
    email: str = ""
    confirmed: bool | None = None  # None until the user answers


class Confirmation(BaseModel):
    """The callback's payload. Strict: ``{"confirmed": "yes"}`` is refused, not guessed at."""

    model_config = ConfigDict(strict=True)
    confirmed: bool


async def on_answer(run: Run[Signup, Status], payload: bytes) -> Status:
    # Validate first: if this raises, wf.callback() raises it and the run is not touched.
    answer = Confirmation.model_validate_json(payload)
    run.object.confirmed = answer.confirmed
    to = Status.CONFIRMED if answer.confirmed else Status.REJECTED
    print(f"  {run.foreign_id}: {run.status.name} -> {to.name}")
    return to


def build(
    streamer: EventStreamer, store: RecordStore, roles: RoleScheduler, **build_kwargs: Any
) -> Workflow[Signup, Status]:
    b = Builder[Signup, Status]("callback example")
    b.add_callback(Status.STARTED, on_answer, Status.CONFIRMED, Status.REJECTED)
    return b.build(streamer, store, roles, **build_kwargs)


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> None:
    streamer, store, roles, _ = adapters(RealClock())  # no timers here: no timeout store
    wf = build(streamer, store, roles, metrics_registry=metrics_registry)
    async with wf:
        signup = Signup(email="andrew@example.com")
        run_id = await wf.trigger("andrew", initial_value=signup)
        print(f"triggered run {run_id} for 'andrew': waiting at STARTED for an answer")

        # A garbled answer is refused with the payload model's own error; nothing changes.
        try:
            await wf.callback("andrew", Status.STARTED, b'{"confirmed": "maybe"}')
        except ValidationError as err:
            print(f"  malformed payload refused ({err.errors()[0]['msg']}); still at STARTED")

        # The real answer arrives. callback() runs the callback right here, in the caller.
        payload = json.dumps({"confirmed": True}).encode()
        changed = await wf.callback("andrew", Status.STARTED, payload)
        print(f"  callback applied: {changed}")

        run = await wf.await_("andrew", run_id, Status.CONFIRMED, timeout=5)
    print(f"final status: {run.status.name} ({run.run_state.name})")
    print(f"final object: {run.object!r}")


if __name__ == "__main__":
    asyncio.run(main())
