#!/usr/bin/env python3
"""The DR drill's independent reference: the rows `orderflow restore` must leave in a database,
computed from the archive alone, written apart from the Rust restore and sharing none of its code.

`scripts/dr-drill --under-load` lets the disaster strike while orders flow, so the archive holds a
prefix of the log that no running pipeline ever had as its whole state. This script folds that
prefix the way the restore replays it (consumers/src/restore/, projections/src/restore.rs) and
writes, per compared table, the rows the restored database must hold at the end of the restore,
before the pipeline resumes; the drill then reads the same columns from the restored database and
compares them row by row.

    dr_reference.py --archive DIR --out DIR    write OUT/<table>.rows (sorted), print a summary
    dr_reference.py --self-test                the fold and the comparison on handmade events

It needs fastavro (run it with the python `scripts/check-schemas --print-python` prints). Events
are decoded by the CRC-64-AVRO fingerprint their single-object header carries, looked up in
schemas/fingerprints.lock; OrderCreated is read for its non-personal fields only (order id,
customer id, lines, currency, country).

How the restore is modelled (read the Rust before changing anything here):
- Records are taken partition by partition in ascending partition number, in offset order, as
  archive::ArchiveReader hands them to every step. A record that does not decode is skipped by
  every step and the read models (the restore dead-letters it).
- Each step sees only the event types it wants and applies an event id once (its inbox).
- Answers of the outside world come from archived replies: a payment authorization from the
  PaymentAuthorized / PaymentDeclined caused by the InventoryReserved, a void from the
  PaymentVoided caused by the event that asked for it, a shipment from the ShipmentScheduled /
  ShipmentFailed caused by the PaymentAuthorized, a carrier cancellation from the
  ShipmentCancelled of that shipment. When the answer is not archived, the step parks the order:
  that event and every later event of the order in that step change nothing during the restore.
- The inventory step applies the archived decision (InventoryReserved / InventoryRejected caused
  by the OrderCreated). Without one it decides from the stock it rebuilt so far: the sum of the
  adjustments replayed before, less what the reservations rebuilt before still hold. Stock is
  booked once at the end: available = sum of all adjustments - held, reserved = held.
- The saga decides as consumers/src/saga/machine.rs; a SagaStepTimedOut found in the archive
  gives the order up right after the event it names as its cause.
- The read models fold every decodable event once (first occurrence of its id).

Left out, because their restored value does not follow from the archive alone:
- times a database wrote (created_at, updated_at, recorded_at, ...) and sequence keys
  (payment.ledger.id), as `orderflow state digest` leaves them out;
- saga.orders.deadline (the `[saga]` deadlines of the restoring configuration) and
  last_event_at (a timestamp; the id and type of the last event are compared);
- shipping.orders.address (personal fields, being sealed on the log);
- the read models' timestamps (formatting depends on the session's time zone; the events
  and types that set them are compared through status, event_count and last_event_type);
- pipeline.* (inbox, outbox, parked, dead letters: the restore's own bookkeeping of what it
  replayed, published or parked) and the steps' abandoned_orders tables;
- the other read models (order_lines, order_events, daily aggregates, step durations).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "orders.events"

# The compared tables: for each, the SQL expressions the drill reads from the restored database,
# in the order the reference writes its rows. A row is `ROW(expressions)::text`, the format of
# `orderflow state digest --dump` (which holds every compared column; some tables here hold fewer).
TABLES: dict[str, list[str]] = {
    "saga.orders": ["order_id", "state", "awaiting", "customer_id", "total_minor", "currency",
                    "cancel_reason", "cancel_detail", "array_to_string(pending, ' ')",
                    "last_event_type", "last_event_id", "correlation_id", "attempts"],
    "inventory.stock": ["sku", "available", "reserved"],
    "inventory.reservations": ["order_id", "reservation_id", "status", "items::text"],
    "payment.blocked_customers": ["customer_id", "note"],
    "payment.orders": ["order_id", "customer_id", "amount_minor", "currency"],
    "payment.payments": ["payment_id", "order_id", "customer_id", "amount_minor", "currency", "status",
                         "decline_reason", "provider_reference"],
    "payment.ledger": ["payment_id", "order_id", "entry", "amount_minor", "currency", "caused_by"],
    "shipping.orders": ["order_id", "country"],
    "shipping.shipments": ["order_id", "shipment_id", "carrier", "status", "tracking_number",
                           "failure_reason", "country"],
    "analytics.orders": ["order_id", "customer_id", "status", "currency", "total_minor", "line_count",
                         "units", "ship_country", "carrier", "cancel_reason", "event_count",
                         "last_event_type"],
}


def select(table: str) -> str:
    """The query the drill runs on the restored database for `table`."""
    return f"SELECT ROW({', '.join(TABLES[table])})::text AS r FROM {table} ORDER BY r"


# ---------------------------------------------------------------------------- row text


def _field(value) -> str:
    """One field as PostgreSQL's record output writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "t" if value else "f"
    else:
        text = str(value)
    if text == "" or any(c in text for c in '"\\(),') or any(c.isspace() for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
    return text


def row_text(values) -> str:
    """A row as `ROW(...)::text` prints it (NULL is nothing, '' is "")."""
    return "(" + ",".join(_field(v) for v in values) + ")"


def items_text(items: list[tuple[str, int]]) -> str:
    """A reservation's items as jsonb prints them (keys by length: sku before quantity)."""
    return "[" + ", ".join(f'{{"sku": {json.dumps(sku)}, "quantity": {qty}}}' for sku, qty in items) + "]"


def reply_id(cause: str, step: str) -> str:
    """events::reply_event_id: the UUIDv5 of `step` in the namespace of the causing event id."""
    return str(uuid.uuid5(uuid.UUID(cause), step))


# ---------------------------------------------------------------------------- events


@dataclass
class Event:
    """A decoded event: the envelope and the body's fields (a dict)."""
    type: str
    event_id: str
    order_id: str
    correlation_id: str
    causation_id: str
    body: dict


def _schemas():
    """Writer schemas by the fingerprint bytes (hex) of their single-object header."""
    import fastavro  # noqa: PLC0415 - only the fold needs it; dr-drill imports this module without it

    out = {}
    for line in (ROOT / "schemas" / "fingerprints.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, fingerprint, _sha = line.split()
        if path.startswith("archive/"):
            continue
        out[fingerprint] = fastavro.parse_schema(json.loads((ROOT / "schemas" / path).read_text()))
    return out


class Decoder:
    def __init__(self) -> None:
        import fastavro  # noqa: PLC0415

        self._read = fastavro.schemaless_reader
        self._schemas = _schemas()

    def decode(self, value: bytes | None) -> Event | None:
        """The event in `value`, or None when it does not decode (the restore dead-letters it)."""
        if not value or len(value) < 10 or value[:2] != b"\xc3\x01":
            return None
        schema = self._schemas.get(value[2:10].hex())
        if schema is None:
            return None
        try:
            datum = self._read(io.BytesIO(value[10:]), schema, None)
        except Exception:  # noqa: BLE001 - any decoding failure is "does not decode"
            return None
        return event_of(datum)


def event_of(datum: dict) -> Event:
    envelope = ("event_id", "event_type", "schema_version", "order_id", "occurred_at",
                "correlation_id", "causation_id")
    body = {k: v for k, v in datum.items() if k not in envelope}
    if datum["event_type"] == "OrderCreated":
        # Non-personal fields only: the personal ones are sealed on the log.
        body = {"customer_id": body["customer_id"], "lines": body["lines"], "currency": body["currency"],
                "country": body["shipping_address"]["country"]}
    return Event(type=datum["event_type"], event_id=str(datum["event_id"]), order_id=datum["order_id"],
                 correlation_id=str(datum["correlation_id"]), causation_id=str(datum["causation_id"]),
                 body=body)


def archived_values(archive: Path):
    """Every archived record's value, partition by partition in offset order (as ArchiveReader)."""
    import fastavro  # noqa: PLC0415

    manifest = json.loads((archive / "manifest.json").read_text())
    for _partition, part in sorted(manifest["partitions"].items(), key=lambda kv: int(kv[0])):
        for segment in part["segments"]:
            with open(archive / segment["file"], "rb") as f:
                for record in fastavro.reader(f):
                    yield record["value"]


# ---------------------------------------------------------------------------- the fold

MARKERS = ("OrderCancellationAccepted", "SagaStepTimedOut")
MARKER_REASON = {"OrderCancellationAccepted": "order_cancelled", "SagaStepTimedOut": "step_timed_out"}
REFUSED = "order_abandoned"


def total_minor(created: dict) -> int:
    return sum(int(line["quantity"]) * int(line["unit_price_minor"]) for line in created["lines"])


@dataclass
class Answers:
    """What the archive says the steps decided, gathered in a first pass (consumers' Recorded)."""
    reservations: dict = field(default_factory=dict)  # OrderCreated id -> ("reserved",) | ("rejected",)
    authorizations: dict = field(default_factory=dict)  # payment id -> ("authorized", ref) | ("declined", reason)
    voids: set = field(default_factory=set)  # ids of the events whose void was archived
    shipments: dict = field(default_factory=dict)  # shipment id -> ("scheduled", tracking) | ("failed", reason)
    cancelled_shipments: set = field(default_factory=set)
    timeouts: dict = field(default_factory=dict)  # cause event id -> SagaStepTimedOut
    carrier: str | None = None

    def observe(self, e: Event) -> None:
        b = e.body
        if e.type == "InventoryReserved":
            self.reservations[e.causation_id] = ("reserved",)
        elif e.type == "InventoryRejected":
            self.reservations[e.causation_id] = ("rejected",)
        elif e.type == "PaymentAuthorized":
            self.authorizations[str(b["payment_id"])] = ("authorized", b["provider_reference"])
        elif e.type == "PaymentDeclined":
            self.authorizations[reply_id(e.causation_id, "payment-id")] = ("declined", b["reason"])
        elif e.type == "PaymentVoided":
            self.voids.add(e.causation_id)
        elif e.type == "ShipmentScheduled":
            self.shipments[str(b["shipment_id"])] = ("scheduled", b["tracking_number"])
            self.carrier = self.carrier or b["carrier"]
        elif e.type == "ShipmentFailed":
            self.shipments[reply_id(e.causation_id, "shipment-id")] = ("failed", b["reason"])
            self.carrier = self.carrier or b["carrier"]
        elif e.type == "ShipmentCancelled":
            self.cancelled_shipments.add(str(b["shipment_id"]))
        elif e.type == "SagaStepTimedOut":
            self.timeouts[e.causation_id] = e


class Step:
    """What every step shares: its inbox (an event id once) and its parked orders."""
    wants: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.parked: set[str] = set()
        self.totals = Counter()

    def offer(self, e: Event) -> None:
        if e.type not in self.wants or e.event_id in self.seen:
            return
        self.seen.add(e.event_id)
        if e.order_id in self.parked:
            self.totals["held behind a parked event"] += 1
            return
        self.apply(e)

    def park(self, e: Event) -> None:
        self.parked.add(e.order_id)
        self.totals["parked"] += 1

    def apply(self, e: Event) -> None:
        raise NotImplementedError


class Inventory(Step):
    wants = ("OrderCreated", "PaymentDeclined", "ShipmentFailed", "StockAdjusted", *MARKERS)

    def __init__(self, answers: Answers) -> None:
        super().__init__()
        self.answers = answers
        self.adjusted: dict[str, int] = {}  # sum of the deltas, by sku with a row
        self.reservations: dict[str, dict] = {}  # order id -> reservation_id, status, items
        self.abandoned: set[str] = set()

    def held(self, sku: str) -> int:
        return sum(q for r in self.reservations.values() if r["status"] == "reserved"
                   for s, q in r["items"] if s == sku)

    def apply(self, e: Event) -> None:
        if e.type == "StockAdjusted":
            sku, delta = e.body["sku"], int(e.body["delta"])
            if delta != 0 or sku in self.adjusted:
                self.adjusted[sku] = self.adjusted.get(sku, 0) + delta
        elif e.type == "OrderCreated":
            self.reserve(e)
        elif e.type in MARKERS:
            self.abandoned.add(e.order_id)
            self.release(e)
        else:
            self.release(e)

    def reserve(self, e: Event) -> None:
        if e.order_id in self.reservations:
            return  # a second OrderCreated: dead-lettered
        wanted: dict[str, int] = {}
        for line in e.body["lines"]:
            wanted[line["sku"]] = wanted.get(line["sku"], 0) + int(line["quantity"])
        items = sorted(wanted.items())
        decision = self.answers.reservations.get(e.event_id)
        if decision is not None:
            status = decision[0]
        elif e.order_id in self.abandoned:
            status = "rejected"
        else:
            # No archived answer: the restore decides from the stock it rebuilt so far.
            self.totals["decided from the rebuilt stock"] += 1
            short = any(self.adjusted.get(s, 0) - self.held(s) < q for s, q in items)
            status = "rejected" if short else "reserved"
        self.reservations[e.order_id] = {"id": reply_id(e.event_id, "inventory-reservation"),
                                         "status": status, "items": items}

    def release(self, e: Event) -> None:
        reservation = self.reservations.get(e.order_id)
        if reservation is not None and reservation["status"] == "reserved":
            reservation["status"] = "released"

    def rows(self) -> dict[str, list[str]]:
        held: dict[str, int] = {}
        for r in self.reservations.values():
            if r["status"] == "reserved":
                for sku, qty in r["items"]:
                    held[sku] = held.get(sku, 0) + qty
        missing = sorted(set(held) - set(self.adjusted))
        if missing:
            raise SystemExit(f"dr_reference: reservations hold skus no archived StockAdjusted gives "
                             f"({', '.join(missing)}); the restore refuses such an archive")
        return {
            "inventory.stock": [row_text((sku, total - held.get(sku, 0), held.get(sku, 0)))
                                for sku, total in self.adjusted.items()],
            "inventory.reservations": [row_text((o, r["id"], r["status"], items_text(r["items"])))
                                       for o, r in self.reservations.items()],
        }


class Payment(Step):
    wants = ("OrderCreated", "InventoryReserved", "ShipmentFailed", "CustomerBlocked", "CustomerUnblocked",
             *MARKERS)

    def __init__(self, answers: Answers) -> None:
        super().__init__()
        self.answers = answers
        self.terms: dict[str, tuple] = {}
        self.payments: dict[str, dict] = {}
        self.ledger: list[tuple] = []
        self.blocked: dict[str, str | None] = {}
        self.abandoned: set[str] = set()

    def apply(self, e: Event) -> None:
        b = e.body
        if e.type == "OrderCreated":
            self.terms.setdefault(e.order_id, (b["customer_id"], total_minor(b), b["currency"]))
        elif e.type == "CustomerBlocked":
            self.blocked[b["customer_id"]] = b["note"]
        elif e.type == "CustomerUnblocked":
            self.blocked[b["customer_id"]] = None
        elif e.type == "InventoryReserved":
            self.authorize(e)
        elif e.type == "ShipmentFailed":
            self.void(e)
        else:
            self.abandoned.add(e.order_id)
            self.void(e)

    def authorize(self, e: Event) -> None:
        terms = self.terms.get(e.order_id)
        if terms is None or e.order_id in self.payments:
            return  # dead-lettered
        customer, amount, currency = terms
        payment_id = reply_id(e.event_id, "payment-id")
        row = {"id": payment_id, "customer": customer, "amount": amount, "currency": currency,
               "status": "declined", "reason": None, "reference": None}
        if e.order_id in self.abandoned:
            row["reason"] = REFUSED
            self.payments[e.order_id] = row
            return
        answer = self.answers.authorizations.get(payment_id)
        if answer is None:
            self.park(e)
            return
        if answer[0] == "authorized":
            row.update(status="authorized", reference=answer[1])
        else:
            row["reason"] = answer[1]
        self.payments[e.order_id] = row
        entry = "authorization" if answer[0] == "authorized" else "decline"
        self.ledger.append((payment_id, e.order_id, entry, amount, currency, e.event_id))

    def void(self, e: Event) -> None:
        payment = self.payments.get(e.order_id)
        if payment is None or payment["status"] != "authorized":
            return
        if e.event_id not in self.answers.voids:
            self.park(e)
            return
        payment["status"] = "voided"
        self.ledger.append((payment["id"], e.order_id, "void", -payment["amount"], payment["currency"],
                            e.event_id))

    def rows(self) -> dict[str, list[str]]:
        return {
            "payment.blocked_customers": [row_text((c, note)) for c, note in self.blocked.items()
                                          if note is not None],
            "payment.orders": [row_text((o, *t)) for o, t in self.terms.items()],
            "payment.payments": [row_text((p["id"], o, p["customer"], p["amount"], p["currency"], p["status"],
                                           p["reason"], p["reference"])) for o, p in self.payments.items()],
            "payment.ledger": [row_text(entry) for entry in self.ledger],
        }


class Shipping(Step):
    wants = ("OrderCreated", "PaymentAuthorized", *MARKERS)

    def __init__(self, answers: Answers) -> None:
        super().__init__()
        self.answers = answers
        self.countries: dict[str, str] = {}
        self.shipments: dict[str, dict] = {}
        self.abandoned: set[str] = set()

    def apply(self, e: Event) -> None:
        if e.type == "OrderCreated":
            self.countries.setdefault(e.order_id, e.body["country"])
        elif e.type == "PaymentAuthorized":
            self.schedule(e)
        else:
            self.abandoned.add(e.order_id)
            self.cancel(e, MARKER_REASON[e.type])

    def schedule(self, e: Event) -> None:
        country = self.countries.get(e.order_id)
        if country is None or e.order_id in self.shipments:
            return  # dead-lettered
        shipment_id = reply_id(e.event_id, "shipment-id")
        row = {"id": shipment_id, "status": "failed", "tracking": None, "reason": None, "country": country}
        if e.order_id in self.abandoned:
            row["reason"] = REFUSED
            self.shipments[e.order_id] = row
            return
        answer = self.answers.shipments.get(shipment_id)
        if answer is None:
            self.park(e)
            return
        if answer[0] == "scheduled":
            row.update(status="scheduled", tracking=answer[1])
        else:
            row["reason"] = answer[1]
        self.shipments[e.order_id] = row

    def cancel(self, e: Event, reason: str) -> None:
        shipment = self.shipments.get(e.order_id)
        if shipment is None or shipment["status"] != "scheduled":
            return
        if shipment["id"] not in self.answers.cancelled_shipments:
            self.park(e)
            return
        shipment.update(status="cancelled", reason=reason)

    def rows(self) -> dict[str, list[str]]:
        carrier = self.answers.carrier
        return {
            "shipping.orders": [row_text((o, c)) for o, c in self.countries.items()],
            "shipping.shipments": [row_text((o, s["id"], carrier, s["status"], s["tracking"], s["reason"],
                                             s["country"])) for o, s in self.shipments.items()],
        }


# The saga: consumers/src/saga/machine.rs, written again.
FORWARD = {"awaiting_inventory": "inventory", "awaiting_payment": "payment", "awaiting_shipment": "shipping"}
GIVE_UP = {"awaiting_inventory": {"marker", "inventory_reply"},
           "awaiting_payment": {"marker", "release_inventory", "payment_reply"},
           "awaiting_shipment": {"marker", "release_inventory", "void_payment", "shipping_reply"}}
PENDING_ORDER = ["marker", "inventory_reply", "payment_reply", "shipping_reply", "release_inventory",
                 "void_payment", "cancel_shipment"]


def _deadline_text(deadline) -> str:
    """chrono's `to_rfc3339_opts(Millis, true)` of a deadline (fastavro gives a datetime; the
    self-test, microseconds)."""
    if isinstance(deadline, datetime):
        at = deadline.astimezone(timezone.utc)
    else:
        at = datetime.fromtimestamp(deadline // 1_000_000, tz=timezone.utc).replace(
            microsecond=deadline % 1_000_000)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{at.microsecond // 1000:03d}Z"


class Saga(Step):
    wants = ("OrderCreated", "InventoryReserved", "InventoryRejected", "InventoryReleased", "PaymentAuthorized",
             "PaymentDeclined", "PaymentVoided", "ShipmentScheduled", "ShipmentFailed", "ShipmentCancelled",
             "OrderCancellationRequested", *MARKERS)

    def __init__(self, answers: Answers) -> None:
        super().__init__()
        self.answers = answers
        self.orders: dict[str, dict] = {}

    def offer(self, e: Event) -> None:
        super().offer(e)
        marker = self.answers.timeouts.get(e.event_id)
        if marker is not None:
            self.time_out(marker)

    def time_out(self, marker: Event) -> None:
        order = self.orders.get(marker.order_id)
        if order is None or order["state"] not in GIVE_UP:
            raise SystemExit(f"dr_reference: SagaStepTimedOut {marker.event_id} gives up order "
                             f"{marker.order_id}, which awaits no step here; the restore refuses it")
        step = FORWARD[order["state"]]
        order.update(state="compensating", pending=set(GIVE_UP[order["state"]]), reason="step_timed_out",
                     detail=f"{step} did not answer by {_deadline_text(marker.body['deadline'])}")
        order["attempts"] += 1

    def apply(self, e: Event) -> None:
        order = self.orders.get(e.order_id)
        nxt = self.decide(order, e)
        if nxt is None:
            return
        if order is None:
            b = e.body
            order = {"customer": b["customer_id"], "total": total_minor(b), "currency": b["currency"],
                     "correlation": e.correlation_id, "attempts": 0}
            self.orders[e.order_id] = order
        order.update(nxt)
        order["last_type"], order["last_id"] = e.type, e.event_id

    @staticmethod
    def decide(order: dict | None, e: Event) -> dict | None:
        """The order's next state (a dict of changed fields), or None when the event changes nothing."""
        if order is None:
            if e.type == "OrderCreated":
                return {"state": "awaiting_inventory", "pending": set(), "reason": None, "detail": None}
            return None
        state = order["state"]
        if e.type == "OrderCreated":
            return None
        if e.type == "OrderCancellationRequested":
            if state in GIVE_UP:
                b = e.body
                return {"state": "compensating", "pending": set(GIVE_UP[state]),
                        "reason": "cancellation_requested",
                        "detail": f"cancellation requested by {b['requested_by']}: {b['reason']}"}
            return {}  # refused: the state stays, the last event moves
        if state in ("completed", "cancelled"):
            return None
        step = (state, e.type)
        if step == ("awaiting_inventory", "InventoryReserved"):
            return {"state": "awaiting_payment"}
        if step == ("awaiting_inventory", "InventoryRejected"):
            return {"state": "cancelled", "reason": "out_of_stock", "detail": e.body["reason"]}
        if step == ("awaiting_payment", "PaymentAuthorized"):
            return {"state": "awaiting_shipment"}
        if step == ("awaiting_payment", "PaymentDeclined"):
            return {"state": "compensating", "pending": {"release_inventory"}, "reason": "payment_declined",
                    "detail": f"payment declined: {e.body['reason']}"}
        if step == ("awaiting_shipment", "ShipmentScheduled"):
            return {"state": "completed"}
        if step == ("awaiting_shipment", "ShipmentFailed"):
            return {"state": "compensating", "pending": {"release_inventory", "void_payment"},
                    "reason": "shipment_failed", "detail": f"shipment failed: {e.body['reason']}"}
        if state != "compensating":
            return None
        pending = set(order["pending"])
        ahead = "marker" in pending
        done, then = {
            "OrderCancellationAccepted": ("marker", ()),
            "SagaStepTimedOut": ("marker", ()),
            "InventoryReserved": ("inventory_reply", ("release_inventory", "payment_reply") if ahead
                                  else ("release_inventory",)),
            "InventoryRejected": ("inventory_reply", ()),
            "PaymentAuthorized": ("payment_reply", ("void_payment", "shipping_reply") if ahead
                                  else ("void_payment",)),
            "PaymentDeclined": ("payment_reply", ()),
            "ShipmentScheduled": ("shipping_reply", ("cancel_shipment",)),
            "ShipmentFailed": ("shipping_reply", ()),
            "InventoryReleased": ("release_inventory", ()),
            "PaymentVoided": ("void_payment", ()),
            "ShipmentCancelled": ("cancel_shipment", ()),
        }.get(e.type, (None, ()))
        if done not in pending:
            return None
        pending.discard(done)
        pending.update(then)
        if not pending:
            return {"state": "cancelled", "pending": set()}
        return {"pending": pending}

    def rows(self) -> dict[str, list[str]]:
        out = []
        for order_id, o in self.orders.items():
            state = o["state"]
            awaiting = FORWARD.get(state) or ("compensation" if state == "compensating" else None)
            pending = " ".join(p for p in PENDING_ORDER if p in o["pending"]) if state == "compensating" else ""
            out.append(row_text((order_id, state, awaiting, o["customer"], o["total"], o["currency"],
                                 o["reason"], o["detail"], pending, o["last_type"], o["last_id"],
                                 o["correlation"], o["attempts"])))
        return {"saga.orders": out}


# The read models' orders (projections/src/fold.rs), written again.
STATUS_AFTER = {"OrderCreated": "pending", "InventoryReserved": "stock_reserved", "PaymentAuthorized": "paid",
                "ShipmentScheduled": "shipment_scheduled", "InventoryRejected": "cancelling",
                "PaymentDeclined": "cancelling", "ShipmentFailed": "cancelling",
                "OrderCancellationAccepted": "cancelling", "SagaStepTimedOut": "cancelling",
                "OrderCompleted": "completed", "OrderCancelled": "cancelled"}
NOT_AN_ORDERS_EVENT = ("StockAdjusted", "CustomerBlocked", "CustomerUnblocked")


class ReadModels:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.orders: dict[str, dict] = {}

    def offer(self, e: Event) -> None:
        if e.event_id in self.seen:
            return
        self.seen.add(e.event_id)
        if e.type in NOT_AN_ORDERS_EVENT:
            return
        o = self.orders.get(e.order_id)
        if e.type == "OrderCreated":
            if o is None:
                b = e.body
                self.orders[e.order_id] = {
                    "customer": b["customer_id"], "status": "pending", "currency": b["currency"],
                    "total": total_minor(b), "lines": len(b["lines"]),
                    "units": sum(int(line["quantity"]) for line in b["lines"]), "country": b["country"],
                    "carrier": None, "cancel_reason": None, "events": 1, "last": e.type,
                    "terminal": False}
            return
        if o is None:
            return
        progressing = o["status"] not in ("completed", "cancelled", "cancelling")
        was_terminal = o["terminal"]
        if e.type == "ShipmentScheduled" and o["carrier"] is None:
            o["carrier"] = e.body["carrier"]
        if e.type == "OrderCompleted" and not was_terminal:
            o["terminal"] = True
        if e.type == "OrderCancelled" and not was_terminal:
            o["terminal"] = True
            o["cancel_reason"] = e.body["reason"]
        status = STATUS_AFTER.get(e.type)
        if status is not None and (progressing or (not was_terminal and status in ("completed", "cancelled"))):
            o["status"] = status
        o["events"] += 1
        o["last"] = e.type

    def rows(self) -> dict[str, list[str]]:
        return {"analytics.orders": [
            row_text((i, o["customer"], o["status"], o["currency"], o["total"], o["lines"], o["units"],
                      o["country"], o["carrier"], o["cancel_reason"], o["events"], o["last"]))
            for i, o in self.orders.items()]}


def fold(events: list[Event | None]) -> tuple[dict[str, list[str]], Counter]:
    """The rows of every compared table after a restore of `events` (log order, None = undecodable),
    sorted, and what the steps did."""
    answers = Answers()
    for e in events:
        if e is not None:
            answers.observe(e)
    steps = [Inventory(answers), Payment(answers), Shipping(answers), Saga(answers)]
    models = ReadModels()
    totals = Counter(undecodable=sum(1 for e in events if e is None))
    for e in events:
        if e is None:
            continue
        models.offer(e)
        for step in steps:
            step.offer(e)
    rows: dict[str, list[str]] = {}
    for part in (*steps, models):
        rows.update(part.rows())
        if isinstance(part, Step):
            for what, n in part.totals.items():
                totals[f"{type(part).__name__.lower()}: {what}"] += n
    assert set(rows) == set(TABLES), sorted(set(rows) ^ set(TABLES))
    return {t: sorted(r) for t, r in rows.items()}, totals


# ---------------------------------------------------------------------------- comparing


@dataclass
class Compared:
    table: str
    rows_reference: int
    rows_restored: int
    equal: int
    only_reference: list[str]
    only_restored: list[str]

    @property
    def differs(self) -> bool:
        return bool(self.only_reference or self.only_restored)


def compare(table: str, reference: list[str], restored: list[str]) -> Compared:
    """Row by row, as multisets: equal rows, and the rows only one side has."""
    want, got = Counter(reference), Counter(restored)
    return Compared(table, len(reference), len(restored), sum((want & got).values()),
                    sorted((want - got).elements()), sorted((got - want).elements()))


# ---------------------------------------------------------------------------- self-test


def _self_test() -> int:
    """The fold on a handmade log, table by table, and the comparison on fabricated rows."""
    n = iter(range(1, 10_000))

    def ev(kind: str, order: str, cause: str | None = None, **body) -> Event:
        eid = str(uuid.UUID(int=next(n)))
        return Event(kind, eid, order, eid, cause or eid, body)

    def created(order, customer="c1", lines=(("A", 2, 100),), country="DE"):
        return ev("OrderCreated", order, customer_id=customer, currency="EUR", country=country,
                  lines=[{"sku": s, "quantity": q, "unit_price_minor": p} for s, q, p in lines])

    log: list[Event | None] = [ev("StockAdjusted", "", sku="A", delta=10, reason="r"),
                               ev("StockAdjusted", "", sku="B", delta=1, reason="r"),
                               ev("CustomerBlocked", "", customer_id="bad", note="chargeback"),
                               ev("CustomerBlocked", "", customer_id="ok", note="mistake"),
                               ev("CustomerUnblocked", "", customer_id="ok"), None]
    # o1: the happy path, every answer archived.
    o1 = created("o1")
    r1 = ev("InventoryReserved", "o1", o1.event_id, reservation_id="x", items=[])
    p1 = ev("PaymentAuthorized", "o1", r1.event_id, payment_id=reply_id(r1.event_id, "payment-id"),
            provider_reference="ref1", customer_id="c1", amount_minor=200, currency="EUR")
    s1 = ev("ShipmentScheduled", "o1", p1.event_id, shipment_id=reply_id(p1.event_id, "shipment-id"),
            carrier="sim", tracking_number="T1")
    log += [o1, r1, p1, s1, ev("OrderCompleted", "o1", s1.event_id, total_minor=200, currency="EUR")]
    # o2: declined; the release is archived, the saga's cancellation is not.
    o2 = created("o2", customer="bad", lines=(("A", 1, 50),))
    r2 = ev("InventoryReserved", "o2", o2.event_id, reservation_id="x", items=[])
    d2 = ev("PaymentDeclined", "o2", r2.event_id, customer_id="bad", amount_minor=50, currency="EUR",
            reason="customer_blocked")
    log += [o2, r2, d2, ev("InventoryReleased", "o2", d2.event_id, reservation_id="x", items=[],
                           reason="payment_declined")]
    # o3: reserved, the payment's answer lost with the disaster: parked in payment.
    o3 = created("o3", lines=(("A", 3, 10), ("B", 1, 5)))
    log += [o3, ev("InventoryReserved", "o3", o3.event_id, reservation_id="x", items=[])]
    # o4: the inventory answer lost: decided from the rebuilt stock (10 - 2 - 3 = 5 >= 4).
    # o5: likewise, but B has 1 - 1 = 0 left: rejected.
    log += [created("o4", lines=(("A", 4, 1),)), created("o5", lines=(("B", 1, 1),))]
    # o6: a customer cancellation accepted before the inventory step's (archived) reservation:
    # released at the marker, payment refuses (order_abandoned), the saga awaits the release.
    o6 = created("o6", lines=(("A", 1, 7),))
    q6 = ev("OrderCancellationRequested", "o6", o6.event_id, reason="changed mind", requested_by="customer")
    a6 = ev("OrderCancellationAccepted", "o6", q6.event_id, reason="changed mind", requested_by="customer")
    log += [o6, q6, a6, ev("InventoryReserved", "o6", o6.event_id, reservation_id="x", items=[])]
    # o7: shipment failed; the void archived, the release not (the saga still awaits it).
    o7 = created("o7", lines=(("B", 0, 1),))
    r7 = ev("InventoryReserved", "o7", o7.event_id, reservation_id="x", items=[])
    p7 = ev("PaymentAuthorized", "o7", r7.event_id, payment_id=reply_id(r7.event_id, "payment-id"),
            provider_reference="ref7", customer_id="c1", amount_minor=0, currency="EUR")
    f7 = ev("ShipmentFailed", "o7", p7.event_id, carrier="sim", reason="destination_not_served")
    log += [o7, r7, p7, f7, ev("PaymentVoided", "o7", f7.event_id, payment_id="x", amount_minor=0,
                               currency="EUR", reason="shipment_failed")]
    # o8: timed out awaiting payment (the marker names the InventoryReserved as its cause); the
    # payment's answer is not archived: parked.
    o8 = created("o8", lines=(("A", 1, 1),))
    r8 = ev("InventoryReserved", "o8", o8.event_id, reservation_id="x", items=[])
    t8 = ev("SagaStepTimedOut", "o8", r8.event_id, step="payment", deadline=1_700_000_000_123_456, attempts=1)
    log += [o8, r8, t8]

    got, totals = fold(log)
    p1id, p2id, p7id = (reply_id(r.event_id, "payment-id") for r in (r1, r2, r7))
    expect = {
        "inventory.stock": ["(A,1,9)", "(B,0,1)"],
        "payment.blocked_customers": ["(bad,chargeback)"],
        "payment.ledger": sorted([f"({p1id},o1,authorization,200,EUR,{r1.event_id})",
                                  f"({p2id},o2,decline,50,EUR,{r2.event_id})",
                                  f"({p7id},o7,authorization,0,EUR,{r7.event_id})",
                                  f"({p7id},o7,void,0,EUR,{f7.event_id})"]),
        "shipping.orders": [f"(o{i},DE)" for i in range(1, 9)],
        "shipping.shipments": [f"(o1,{reply_id(p1.event_id, 'shipment-id')},sim,scheduled,T1,,DE)",
                               f"(o7,{reply_id(p7.event_id, 'shipment-id')},sim,failed,,"
                               "destination_not_served,DE)"],
    }
    problems = [f"{t}: got {got[t]}, expected {rows}" for t, rows in expect.items() if got[t] != rows]
    saga = {row.split(",")[0][1:]: row for row in got["saga.orders"]}
    reservations = {row.split(",")[0][1:]: row.split(",")[2] for row in got["inventory.reservations"]}
    payments = {row.split(",")[1]: row.split(",")[5] for row in got["payment.payments"]}
    read = {row.split(",")[0][1:]: row.split(",")[2] for row in got["analytics.orders"]}
    checks = [
        (saga["o1"].split(",")[1], "completed"), (saga["o2"].split(",")[1], "cancelled"),
        (saga["o2"].split(",")[8], '""'), (saga["o3"].split(",")[1], "awaiting_payment"),
        (saga["o4"].split(",")[1], "awaiting_inventory"), (saga["o6"].split(",")[1], "compensating"),
        (saga["o6"].split(",")[8], "release_inventory"),
        (saga["o7"].split(",")[1], "compensating"), (saga["o8"].split(",")[1], "compensating"),
        (saga["o8"].split(",")[7], '"payment did not answer by 2023-11-14T22:13:20.123Z"'),
        (saga["o8"].split(",")[-1], "1)"),
        (reservations, {"o1": "reserved", "o2": "released", "o3": "reserved", "o4": "reserved",
                        "o5": "rejected", "o6": "released", "o7": "released", "o8": "released"}),
        (payments, {"o1": "authorized", "o2": "declined", "o6": "declined", "o7": "voided"}),
        (read, {"o1": "completed", "o2": "cancelling", "o3": "stock_reserved", "o4": "pending",
                "o5": "pending", "o6": "cancelling", "o7": "cancelling", "o8": "cancelling"}),
        (totals["payment: parked"], 2), (totals["inventory: decided from the rebuilt stock"], 2),
        (totals["undecodable"], 1),
    ]
    problems += [f"got {g!r}, expected {w!r}" for g, w in checks if g != w]
    # The comparison: equal rows pass, a changed, a missing and an extra row are each caught.
    same = compare("t", ["(a,1)", "(b,2)"], ["(b,2)", "(a,1)"])
    changed = compare("t", ["(a,1)", "(b,2)"], ["(a,1)", "(b,3)"])
    missing = compare("t", ["(a,1)", "(a,1)"], ["(a,1)"])
    problems += [f"comparison: {c}" for c in (same,) if c.differs or c.equal != 2]
    problems += [f"comparison missed a difference: {c}" for c in (changed, missing) if not c.differs]
    if changed.only_reference != ["(b,2)"] or changed.only_restored != ["(b,3)"]:
        problems.append(f"comparison: {changed}")
    # Row text: NULL, '', and quoting as PostgreSQL prints records.
    for values, want in [((None, ""), '(,"")'), (("a b", 'q"', "x,y", 5, True), '("a b","q""","x,y",5,t)')]:
        if row_text(values) != want:
            problems.append(f"row_text{values} = {row_text(values)}, expected {want}")
    for p in problems:
        print(f"dr_reference self-test: {p}", file=sys.stderr)
    print(f"dr_reference self-test: {len(checks) + len(expect) + 5} checks, {len(problems)} failed")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="the archive directory (manifest.json and files)")
    parser.add_argument("--out", type=Path, help="where to write <table>.rows")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args(argv)
    if args.self_test:
        return _self_test()
    if not args.archive or not args.out:
        parser.error("give --archive DIR and --out DIR, or --self-test")
    if not (args.archive / "manifest.json").is_file():
        print(f"dr_reference: {args.archive}/manifest.json not found; give the archive directory "
              "(archive.dir)", file=sys.stderr)
        return 2
    decoder = Decoder()
    try:
        events = [decoder.decode(v) for v in archived_values(args.archive)]
    except (OSError, ValueError, KeyError, EOFError) as e:
        print(f"dr_reference: cannot read the archive in {args.archive} ({type(e).__name__}: {e}); "
              "`orderflow archive --check --dir DIR` says which file is damaged", file=sys.stderr)
        return 2
    rows, totals = fold(events)
    args.out.mkdir(parents=True, exist_ok=True)
    for table, table_rows in rows.items():
        (args.out / f"{table}.rows").write_text("".join(r + "\n" for r in table_rows))
    print(f"reference: {len(events)} archived records folded into {sum(map(len, rows.values()))} rows "
          f"of {len(rows)} tables" + "".join(f"; {k} {v}" for k, v in sorted(totals.items()) if v))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
