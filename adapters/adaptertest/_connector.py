"""Conformance suite for connectors (:class:`workflow.ConnectorConstructor` adapters).

Run it against your own connector from any test runner::

    from workflow.adapters.adaptertest import run_connector_test

    async def test_my_connector() -> None:
        await run_connector_test(lambda events: MyConnector(seed_topic(events)))

``maker(events)`` (plain or ``async``) gets a list of :class:`workflow.ConnectorEvent` and
returns a constructor whose consumers replay exactly those events, in order, from a fresh
stream; the suite calls it once per behaviour. Events are identified by ``foreign_id`` (a
connector may assign its own ``id``). A failed behaviour raises ``AssertionError`` naming it,
e.g. ``connector: a new consumer of the same name did not resume at the first unacked event``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from workflow import Builder, ConnectorConstructor, ConnectorConsumer, ConnectorEvent, Run, Workflow
from workflow.abc import Ack
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import require

from ._roles import check, resolve, run_checks, within
from ._streamer import SyncStatus, User

__all__ = ["ConnectorMaker", "run_connector_test"]

ConnectorMaker = Callable[
    [list[ConnectorEvent]], ConnectorConstructor | Awaitable[ConnectorConstructor]
]

EMAIL = "connector@workflow.com"


async def _recv(consumer: ConnectorConsumer, foreign_id: str, problem: str) -> Ack:
    """Receive one event, check it is ``foreign_id`` and return its ack."""
    event, ack = await within(consumer.recv(), f"receiving connector event {foreign_id!r}")
    check(isinstance(event, ConnectorEvent), f"recv returned {event!r}, not a ConnectorEvent")
    check(event.foreign_id == foreign_id, f"{problem}: expected {foreign_id!r}, got {event!r}")
    return ack


async def _trigger(wf: Workflow[User, SyncStatus], event: ConnectorEvent) -> None:
    await wf.trigger(event.foreign_id, initial_value=User(uid=event.foreign_id))


async def _set_email(run: Run[User, SyncStatus]) -> SyncStatus:
    run.object.email = EMAIL
    return SyncStatus.EMAIL_SET


async def _workflow(maker: ConnectorMaker) -> None:
    fids = ["SKDJF-2304893-SDFKJBSD", "LSKDF-23OU5QL-23K45B23"]
    events = [ConnectorEvent(id=str(i + 1), foreign_id=fid) for i, fid in enumerate(fids)]
    b = Builder[User, SyncStatus]("connector-test")
    b.add_connector("tester", await resolve(maker(events)), _trigger)
    b.add_step(SyncStatus.STARTED, _set_email, SyncStatus.EMAIL_SET)
    wf = b.build(
        MemStreamer(),
        MemRecordStore(),
        MemRoleScheduler(),
        metrics_registry=CollectorRegistry(),
    )
    await wf.run()
    try:
        for fid in fids:
            try:
                await require(wf, fid, SyncStatus.EMAIL_SET, User(uid=fid, email=EMAIL))
            except TimeoutError as err:
                raise AssertionError(
                    f"the connector's event {fid!r} never started a run that reached EMAIL_SET "
                    f"({err})"
                ) from None
    finally:
        await wf.stop()


async def _consumers(maker: ConnectorMaker) -> None:
    fids = ["c-1", "c-2", "c-3", "c-4"]
    connector = await resolve(
        maker(
            [
                ConnectorEvent(id=f"id-{i}", foreign_id=fid, type="created", headers={"n": str(i)})
                for i, fid in enumerate(fids)
            ]
        )
    )
    first = await connector.make("adaptertest-consumer")
    try:
        for fid in fids[:2]:
            await (await _recv(first, fid, "connector events out of order"))()
        await _recv(first, fids[2], "connector events out of order")  # received, not acked
    finally:
        await first.close()
    second = await connector.make("adaptertest-consumer")
    try:
        ack = await _recv(
            second,
            fids[2],
            "a new consumer of the same name did not resume at the first unacked event "
            "(an acked event came again, or an unacked one was lost)",
        )
        await ack()
        await (await _recv(second, fids[3], "connector events out of order"))()
    finally:
        await second.close()
    other = await connector.make("adaptertest-other")
    try:
        for fid in fids:
            await (await _recv(other, fid, "another consumer name did not get every event"))()
    finally:
        await other.close()


async def run_connector_test(maker: ConnectorMaker) -> None:
    """Check a connector: a workflow triggered by its events (luno's ``RunConnectorTest``), and
    its consumers' order, durable named cursors and redelivery of unacked events."""
    await run_checks(
        "connector",
        [
            ("consumers: order, cursors, redelivery", lambda: _consumers(maker)),
            ("workflow triggered by a connector", lambda: _workflow(maker)),
        ],
    )
