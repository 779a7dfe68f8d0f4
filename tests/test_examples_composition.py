"""The composition examples (payment, signup, booking, orders), each tested on memory and on
SQLite (a file in the test's ``tmp_path``, all four adapters SQL), on a FakeClock: their
``main()`` as ``python -m examples.<name>`` runs it, and the paths ``main()`` does not take
through each example's own ``build``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from examples import booking, orders, payment, signup
from examples.adapters import MakeAdapters
from examples.driving import history, run_retries
from workflow import Filter, PausedBy, RunState
from workflow.abc import RecordHistory
from workflow.testing import FakeClock, await_timeout_insert, wait_for

from .backends import Backend
from .test_examples import adapters as adapters
from .test_examples import backend_engine as backend_engine

# every test on memory and on SQLite, with the example adapters of test_examples.py


# -- payment -----------------------------------------------------------------------------


async def test_payment_charges_once_fails_a_decline_and_refunds_when_fulfilment_gives_up(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    out = await payment.main(metrics_registry=registry, adapters=adapters)
    assert out.statuses == {"alice": "SHIPPED", "bob": "FAILED", "carol": "REFUNDED"}
    alice, bob, carol = (out.orders[who] for who in ("alice", "bob", "carol"))
    p = out.provider
    # alice's first reply was lost: two calls with one key (her run id), one charge
    assert sorted(p.calls.values()) == [1, 1, 2]
    assert len(p.charges) == 2 and alice.charge_id in p.charges.values()
    assert alice.tracking == "TRK-ALICE" and not alice.refunded
    assert bob.charge_id == "" and "insufficient funds" in bob.declined
    assert carol.refunded and p.refunds == [carol.charge_id]
    lines = out.histories["carol"]
    assert [line.split()[1] for line in lines] == ["NEW"] + ["PAID"] * 4 + ["REFUNDED"]
    assert "attempt 2 due at 09:01:00" in lines[2] and "attempt 3 due at 09:03:00" in lines[3]
    assert lines[4].endswith("; compensating") and "retries exhausted (3 errors" in lines[4]
    assert lines[5] == "v6 REFUNDED    COMPLETED compensated the step at NEW (Steps.refund)"
    assert [line.split()[1] for line in out.histories["bob"]] == ["NEW", "FAILED"]
    printed = capsys.readouterr().out
    assert "alice SHIPPED  2 charge call(s), ch_1: TRK-ALICE" in printed
    assert "compensated the step at NEW (Steps.refund)" in printed


class DownProvider(payment.Provider):
    """Takes every charge, and loses every reply until ``up``."""

    up = False

    async def charge(self, key: str, card: str, cents: int) -> str:
        charge_id = await super().charge(key, card, cents)
        if not self.up:
            raise payment.ProviderTimeout("no reply")
        return charge_id


async def test_payment_a_charge_without_a_reply_pauses_and_its_resume_charges_once(
    backend: Backend, clock: FakeClock
) -> None:
    provider = DownProvider()
    warehouse = payment.Warehouse()
    wf = payment.build(
        backend.adapters(), provider, warehouse, clock=clock, metrics_registry=backend.registry
    )
    async with wf:
        rid = await wf.trigger("dave", initial_value=payment.Order(customer="dave", card="c"))
        await run_retries(wf, clock, "dave", range(2, 4))
        paused = await wait_for(wf, "dave", lambda r: r.run_state is RunState.PAUSED)
        assert paused.meta.paused_by == PausedBy.RETRIES_EXHAUSTED
        assert paused.status is payment.Status.NEW  # not FAILED: the money may be taken
        assert provider.calls == {rid: 3} and provider.refunds == []
        provider.up = True
        await wf.resume(rid)  # a person checked: same run, same key
        done = await wf.await_("dave", rid, payment.Status.SHIPPED, timeout=5)
    assert provider.calls == {rid: 4} and provider.charges == {rid: "ch_1"}
    assert done.object.charge_id == "ch_1"
    lines = await history(backend.adapters()[1], rid, payment.Status)
    assert "automatically paused (3 errors" in lines[3]


# -- signup ------------------------------------------------------------------------------


async def test_signup_registers_once_resumes_a_dead_letter_and_deletes_both_runs(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    out = await signup.main(metrics_registry=registry, adapters=adapters)
    assert len(out.submits) == 3 and len(set(out.submits)) == 1
    dead = out.dead_letter
    assert dead.run_state is RunState.PAUSED and dead.meta.paused_by == PausedBy.RETRIES_EXHAUSTED
    assert dead.meta.attempt == 4 and dead.status is signup.Mail.QUEUED
    assert out.sent == ["ann@example.org: Welcome to the race, Ann"]  # once, after the resume
    s, m = out.signup, out.mail
    assert s.run_id == out.submits[0] and s.run_state is RunState.DATA_DELETED
    assert m.run_state is RunState.DATA_DELETED and m.status is signup.Mail.SENT
    assert (m.meta.parent_workflow, m.meta.parent_run_id) == ("signup", s.run_id)
    assert s.object == signup.Runner() and m.object == signup.Email()
    assert "@" not in s.foreign_id + str(s.meta.idempotency_key) + m.foreign_id
    printed = capsys.readouterr().out
    assert "3 submits, 1 run: REGISTERED" in printed
    assert "welcome e-mail paused after 4 attempts (retries exhausted)" in printed
    assert "3 h later it is still PAUSED" in printed


async def test_signup_concurrent_submits_start_one_run_and_one_email(
    backend: Backend, clock: FakeClock
) -> None:
    server = signup.MailServer(up=True)
    made = backend.adapters()
    signups, mails = signup.build(made, server, clock=clock, metrics_registry=backend.registry)
    async with signups, mails:
        ids = await asyncio.gather(*(signup.sign_up(signups, "Bo@x.org", "Bo") for _ in range(5)))
        assert len(set(ids)) == 1
        fid = signup.runner_id("bo@x.org")
        done = await signups.await_(fid, ids[0], signup.Signup.REGISTERED, timeout=5)
        sent = await wait_for(mails, f"{fid}/welcome", lambda r: r.status is signup.Mail.SENT)
        assert [r.run_id for r in await mails.list(Filter.by_parent(ids[0]))] == [sent.run_id]
        assert done.object.welcome_mail == sent.run_id
        await signups.delete_data(ids[0])
        await wait_for(mails, f"{fid}/welcome", lambda r: r.run_state is RunState.DATA_DELETED)
        await wait_for(signups, fid, lambda r: r.run_state is RunState.DATA_DELETED)
    assert server.sent == ["bo@x.org: Welcome to the race, Bo"]
    store = made[1]
    assert isinstance(store, RecordHistory)
    for rid in (ids[0], sent.run_id):  # no version of either run keeps the address
        versions = await store.history(rid)
        assert len(versions) >= 3 and all(b"bo@x.org" not in v.object for v in versions)


async def test_signup_deleting_while_the_email_is_a_dead_letter_deletes_it_too(
    backend: Backend, clock: FakeClock
) -> None:
    signups, mails = signup.build(
        backend.adapters(), signup.MailServer(), clock=clock, metrics_registry=backend.registry
    )
    async with signups, mails:
        rid = await signup.sign_up(signups, "cy@x.org", "Cy")
        fid = signup.runner_id("cy@x.org")
        await run_retries(mails, clock, f"{fid}/welcome", range(2, 5))
        await wait_for(mails, f"{fid}/welcome", lambda r: r.run_state is RunState.PAUSED)
        await signups.delete_data(rid, "GDPR")
        await wait_for(signups, fid, lambda r: r.run_state is RunState.DATA_DELETED)
        await wait_for(
            mails, f"{fid}/welcome", lambda r: r.run_state is RunState.DATA_DELETED, timeout=1.5
        )


# -- booking -----------------------------------------------------------------------------


async def test_booking_releases_the_reservations_newest_first_when_a_later_step_gives_up(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    out = await booking.main(metrics_registry=registry, adapters=adapters)
    a, b = out.trips["trip-a"], out.trips["trip-b"]
    for trip in (a, b):
        assert trip.status is booking.Trip.COMPENSATED and trip.run_state is RunState.COMPLETED
        assert trip.meta.compensations == () and not trip.meta.compensating
    # (a) all three reserved, the charge gave up: car, hotel, flight released
    assert a.object.released == ["car trip-a:car", "hotel trip-a:hotel", "flight trip-a:flight"]
    assert a.object.refs == {k: f"trip-a:{k}" for k in booking.KINDS}
    # (b) no hotel: the fan-in gave up at once; the car and the flight released
    assert b.object.released == ["car trip-b:car", "hotel (nothing held)", "flight trip-b:flight"]
    assert b.object.refs == {}
    assert out.suppliers.held == {} and out.payments.charged == []
    for fid, held in (("trip-a", ("car", "hotel", "flight")), ("trip-b", ("car", "flight"))):
        log = [line for line in out.suppliers.log if f" {fid}:" in line]
        # reserved in parallel (any order), then released newest first
        assert sorted(log[: len(held)]) == sorted(f"reserved {fid}:{k}" for k in held)
        assert log[len(held) :] == [f"released {fid}:{k}" for k in held]
    ha, hb = out.histories["trip-a"], out.histories["trip-b"]
    assert [line.split()[1] for line in ha] == ["NEW", "RESERVING"] + ["RESERVED"] * 4 + [
        "COMPENSATED"
    ]
    assert ha[5].endswith("ConnectionError('payment gateway timed out')); compensating")
    assert hb == [
        "v1 NEW         INITIATED",
        "v2 RESERVING   RUNNING",
        "v3 RESERVING   RUNNING   no hotel available; compensating",
        "v4 COMPENSATED COMPLETED compensated the step at NEW (Agency.release)",
    ]
    assert ha[-1] == "v7 COMPENSATED COMPLETED compensated the step at NEW (Agency.release)"
    printed = capsys.readouterr().out
    assert "trip-a: COMPENSATED, released car trip-a:car, hotel trip-a:hotel, flight" in printed
    assert "the suppliers still hold: nothing" in printed


async def test_booking_a_trip_that_is_charged_keeps_its_reservations(
    backend: Backend, clock: FakeClock
) -> None:
    suppliers, payments = booking.Suppliers(), booking.Payments()
    trips, reservations = booking.build(
        backend.adapters(), suppliers, payments, clock=clock, metrics_registry=backend.registry
    )
    async with trips, reservations:
        rid = await trips.trigger("trip-c", initial_value=booking.Itinerary(customer="cy"))
        done = await trips.await_("trip-c", rid, booking.Trip.CHARGED, timeout=5)
        kids = await reservations.list(Filter.by_parent(rid))
    assert payments.charged == ["cy"] and done.object.released == []
    assert done.object.refs == {k: f"trip-c:{k}" for k in booking.KINDS}
    assert done.meta.compensations == (booking.Trip.NEW,)  # the saga, unused
    assert {k.object.kind: k.run_id for k in kids} == done.object.reservations
    assert all(k.status is booking.Reservation.CONFIRMED for k in kids)
    assert all(k.meta.parent_run_id == rid for k in kids)
    assert sorted(suppliers.held) == sorted(done.object.reservations.values())


# -- orders ------------------------------------------------------------------------------


async def test_orders_use_the_fulfilments_tracking_number_or_stop_waiting_at_the_deadline(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry, adapters: MakeAdapters
) -> None:
    out = await orders.main(metrics_registry=registry, adapters=adapters)
    one, two = out.orders["order-1"], out.orders["order-2"]
    assert one.status is orders.Status.NOTIFIED and one.run_state is RunState.COMPLETED
    assert one.object.tracking == "TRK-ORDER-1" == out.parcels["order-1"].object.tracking
    assert out.messages == ["to ann: shipped, track TRK-ORDER-1"]
    for fid, run in out.orders.items():
        parcel = out.parcels[fid]
        assert parcel.run_id == run.object.fulfilment and parcel.foreign_id == f"{fid}/fulfilment"
        assert (parcel.meta.parent_workflow, parcel.meta.parent_run_id) == ("orders", run.run_id)
    assert out.parcels["order-1"].status is orders.Fulfilment.SHIPPED
    # order-2: 48 h at FULFILLING, then DELAYED while its parcel still waited for stock
    assert two.status is orders.Status.DELAYED and two.run_state is RunState.COMPLETED
    assert two.object.tracking == "" and two.updated_at - two.created_at == orders.DEADLINE
    assert out.parcels["order-2"].status is orders.Fulfilment.BACKORDERED
    assert out.parcels["order-2"].run_state is RunState.RUNNING
    assert out.late_parcel.status is orders.Fulfilment.SHIPPED
    assert out.late_parcel.object.tracking == "TRK-ORDER-2"
    printed = capsys.readouterr().out
    assert "order-2: DELAYED  tracking -" in printed
    assert "the order stays DELAYED" in printed


async def test_orders_a_parcel_restocked_before_the_deadline_ships_the_order(
    backend: Backend, clock: FakeClock
) -> None:
    shop = orders.Shop()  # nothing in stock
    streamer, store, roles, timeouts = backend.adapters()
    wf, fulfilments = orders.build(
        (streamer, store, roles, timeouts), shop, clock=clock, metrics_registry=backend.registry
    )
    async with wf, fulfilments:
        rid = await wf.trigger("order-3", initial_value=orders.Order(customer="cy", sku="lamp"))
        await await_timeout_insert(wf, "order-3", rid, orders.Status.FULFILLING)
        parcel = await wait_for(
            fulfilments, "order-3/fulfilment", lambda r: r.status is orders.Fulfilment.BACKORDERED
        )
        clock.step(orders.DEADLINE - timedelta(minutes=1))
        await fulfilments.callback("order-3/fulfilment", orders.Fulfilment.BACKORDERED, b"")
        done = await wf.await_("order-3", rid, orders.Status.NOTIFIED, timeout=5)
        assert await timeouts.list(wf.name) == []  # the deadline went with the status
        clock.step(timedelta(minutes=2))
        assert (await wf.lookup(rid)).status is orders.Status.NOTIFIED
    assert done.object.tracking == "TRK-ORDER-3" and done.object.fulfilment == parcel.run_id
    assert shop.messages == ["to cy: shipped, track TRK-ORDER-3"]
