"""A marathon sign-up: one registration however often the form is sent, a welcome e-mail as a
child workflow that becomes a dead letter while the mail server is down, and the runner's
data deleted on request, the e-mail's with it.

    python -m examples.signup

The real-world need: people double-click "register" and retry on a slow page; the mail
server goes down for an afternoon; a runner asks for their data to be deleted (GDPR).

- **Idempotent registration.** ``trigger(..., idempotency_key=...)``: a second submit creates
  nothing and returns the first run's id. The key and the foreign id are a hash of the
  normalised e-mail, not the e-mail itself: both are kept with the record for as long as it
  exists, also after ``delete_data``, which only replaces the object (so the key also
  answers a sign-up with the same e-mail after the deletion: one per address and workflow).
- **A child workflow.** Registering starts the e-mail as a run of its own workflow
  (``run.start_child``), in the same transaction as the sign-up's move: a retried
  registration never sends two welcome e-mails, and the sign-up does not wait for it.
- **A dead letter.** Sending is retried 1, 2 and 4 min apart; after the 4th failure the
  e-mail is paused with ``paused_by`` "retries exhausted", and ``pause_retry_for=()`` keeps it
  paused until an operator fixes the mail server and resumes it (a fresh set of attempts).
- **Deletion.** ``delete_data`` on the sign-up goes to its children too: each workflow's own
  delete consumer replaces the object in the run and in every version of its history.

What to look at in the output: three submits, one run id; the e-mail paused after 4
attempts and still paused 3 h later; sent once resumed; then both runs DATA_DELETED with
empty objects, and only the e-mail's hash left. The demo runs on a ``FakeClock`` moved by
hand, so the waits take no time.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from examples.adapters import Adapters, MakeAdapters, memory
from examples.driving import run_retries
from workflow import Builder, Clock, Filter, PausedBy, RetryPolicy, Run, RunState, Workflow
from workflow.testing import FakeClock, wait_for


class Signup(enum.IntEnum):
    UNKNOWN = 0
    REQUESTED = 1
    REGISTERED = 2


class Mail(enum.IntEnum):
    UNKNOWN = 0
    QUEUED = 1
    SENT = 2


class Runner(BaseModel):
    email: str = ""
    name: str = ""
    distance_km: float = 42.195
    welcome_mail: str = ""  # the e-mail's run id


class Email(BaseModel):
    to: str = ""
    subject: str = ""
    message_id: str = ""


@dataclass
class MailServer:
    """A pretend SMTP server, down until ``up`` is set."""

    up: bool = False
    sent: list[str] = field(default_factory=list)

    async def send(self, to: str, subject: str) -> str:
        if not self.up:
            raise ConnectionError("smtp.example.org:587: connection refused")
        self.sent.append(f"{to}: {subject}")
        return f"<{len(self.sent)}@example.org>"


MAIL_RETRIES = RetryPolicy(
    max_attempts=4,
    initial_backoff=timedelta(minutes=1),
    backoff_coefficient=2,
    on_exhausted="pause",  # a dead letter (pause_retry_for=() keeps it for a person)
)


def runner_id(email: str) -> str:
    """The foreign id and idempotency key of a sign-up: no e-mail address in either."""
    return "runner-" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


def build(
    adapters: Adapters,
    server: MailServer,
    *,
    clock: Clock,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[Workflow[Runner, Signup], Workflow[Email, Mail]]:
    """The sign-up and e-mail workflows, on the same adapters (one record store object)."""

    async def send(run: Run[Email, Mail]) -> Mail:
        run.object.message_id = await server.send(run.object.to, run.object.subject)
        return Mail.SENT

    mails_b = Builder[Email, Mail]("signup-mails")
    mails_b.add_step(Mail.QUEUED, send, Mail.SENT).with_options(retry=MAIL_RETRIES)

    async def register(run: Run[Runner, Signup]) -> Signup:
        welcome = Email(to=run.object.email, subject=f"Welcome to the race, {run.object.name}")
        run.object.welcome_mail = run.start_child(mails, "welcome", initial_value=welcome)
        return Signup.REGISTERED

    signups_b = Builder[Runner, Signup]("signup")
    signups_b.add_step(Signup.REQUESTED, register, Signup.REGISTERED)

    streamer, store, roles, _ = adapters  # no timers: no timeout store
    kw: dict[str, Any] = {"clock": clock, "metrics_registry": metrics_registry}
    mails = mails_b.build(streamer, store, roles, pause_retry_for=(), **kw)
    signups = signups_b.build(streamer, store, roles, **kw)
    return signups, mails


async def sign_up(signups: Workflow[Runner, Signup], email: str, name: str) -> str:
    """What the form's handler does on every submit."""
    key = runner_id(email)
    runner = Runner(email=email.strip().lower(), name=name)
    return await signups.trigger(key, initial_value=runner, idempotency_key=key)


@dataclass
class Outcome:
    submits: list[str]  # the run id each submit got
    dead_letter: Run[Email, Mail]
    sent: list[str]
    signup: Run[Runner, Signup]
    mail: Run[Email, Mail]


async def main(
    metrics_registry: CollectorRegistry | None = None, adapters: MakeAdapters = memory
) -> Outcome:
    clock = FakeClock(datetime(2024, 3, 1, 14, 0, tzinfo=UTC))
    server = MailServer()
    signups, mails = build(adapters(clock), server, clock=clock, metrics_registry=metrics_registry)
    async with signups, mails:
        fid = runner_id("ann@example.org")
        submits = [await sign_up(signups, "ann@example.org", "Ann") for _ in range(2)]
        done = await signups.await_(fid, submits[0], Signup.REGISTERED, timeout=5)
        submits.append(await sign_up(signups, " Ann@Example.org", "Ann"))  # after it finished
        print(f"  {len(submits)} submits, {len(set(submits))} run: {done.status.name}")

        mail_fid = f"{fid}/welcome"
        await run_retries(mails, clock, mail_fid, range(2, 5))  # 1, 2, 4 min apart
        dead = await wait_for(mails, mail_fid, lambda r: r.run_state is RunState.PAUSED)
        print(f"  welcome e-mail paused after {dead.meta.attempt} attempts ({dead.meta.paused_by})")
        clock.step(timedelta(hours=3))
        still = await mails.lookup(dead.run_id)
        print(f"  3 h later it is still {still.run_state.name}")

        # The operator: the mail server is fixed; resume the e-mails that gave up.
        server.up = True
        paused = await mails.list(Filter.by_run_state(RunState.PAUSED), limit=100)
        for letter in paused:
            if letter.meta.paused_by == PausedBy.RETRIES_EXHAUSTED:
                await mails.resume(letter.run_id)
        await mails.await_(mail_fid, dead.run_id, Mail.SENT, timeout=5)
        print(f"  resumed by the operator: sent {server.sent}")

        # Ann asks for her data to be deleted: the sign-up and its e-mail.
        await signups.delete_data(done.run_id, "the runner asked (GDPR)")
        signup = await wait_for(signups, fid, lambda r: r.run_state is RunState.DATA_DELETED)
        mail = await wait_for(mails, mail_fid, lambda r: r.run_state is RunState.DATA_DELETED)
    for what, run in (("sign-up", signup), ("e-mail", mail)):
        print(f"  {what:8} {run.run_state.name}: {run.object!r}")
    print(f"  kept: foreign id and idempotency key {signup.meta.idempotency_key}")
    return Outcome(submits, dead, server.sent, signup, mail)


if __name__ == "__main__":
    asyncio.run(main())
