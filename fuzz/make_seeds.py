#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the test fixtures (run from fuzz/).

corpus/delivery/ and corpus/events/ get JSON bodies as they are. corpus/signature/ gets the
`Input` of fuzz_targets/signature.rs encoded the way `arbitrary` 1.x decodes it: fixed-size
fields and string bytes from the front, string lengths from the back, the body last (the rest).
Check a seed with `cargo +nightly fuzz fmt signature corpus/signature/<file>`.
Files a fuzzer added (named by their SHA-1) are left alone.
"""
import json
import os
import re
import struct

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def encode_signature(standard, id, timestamp, signature, secrets, signed_at, now, tolerance, flip_at, flip_mask, body):
    """Bytes that `Input::arbitrary_take_rest` decodes to these values."""
    ops = [("b", bytes([standard]))]
    for text in (id, timestamp, signature):
        ops.append(("b", bytes([text is not None])))
        if text is not None:
            ops.append(("s", text.encode()))
    for secret in secrets:
        ops += [("b", b"\x01"), ("s", secret.encode())]
    ops.append(("b", b"\x00"))
    ops.append(("b", struct.pack("<qqHHB", signed_at, now, tolerance, flip_at, flip_mask)))
    front_size = sum(len(v) for _, v in ops)
    widths = [1] * sum(1 for kind, _ in ops if kind == "s")
    while True:
        total = front_size + len(body) + sum(widths)
        front, back, new_widths, lengths = 0, 0, [], []
        for kind, value in ops:
            if kind == "s":
                remaining = total - front - back
                width = 1 if remaining <= 256 else 2 if remaining <= 65537 else 4
                new_widths.append(width)
                lengths.append((len(value), width, remaining - width))
                back += width
            front += len(value)
        if new_widths == widths:
            break
        widths = new_widths
    tail = b""
    for length, width, max_size in lengths:
        assert length <= max_size
        # Big-endian, as many bytes as the range needs; the others are dropped.
        needed = 1 if max_size < 256 else 2 if max_size < 65536 else 4
        encoded = length.to_bytes(needed, "big") + bytes(width - needed)
        tail = encoded + tail
    return b"".join(v for _, v in ops) + body + tail


def write(target, name, data):
    with open(os.path.join("corpus", target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def headers(path):
    with open(path) as f:
        return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def main():
    with open(os.path.join(FIXTURES, "treadsoft-vectors.json")) as f:
        treadsoft = json.load(f)["webhook"]
    with open(os.path.join(FIXTURES, "standard-webhooks-vectors.json")) as f:
        standard = json.load(f)["vectors"]
    deliveries = os.path.join(FIXTURES, "deliveries")

    # signature: every published vector, and the signed fixtures.
    for i, v in enumerate(treadsoft):
        ts = v["timestamp"]
        name = "treadsoft-%02d-%s" % (i, re.sub("[^a-z0-9]+", "-", v["name"].lower())[:40].strip("-"))
        data = encode_signature(False, None, ts, v["signatureHeader"], v["secrets"], int(ts), v["now"], 300, 0, 1,
                                v["body"].encode())
        write("signature", name, data)
    for i, v in enumerate(standard):
        ts = v["webhookTimestamp"]
        data = encode_signature(True, v["webhookId"], ts, v["signature"], [v["secret"]], int(ts), int(ts), 300, 0, 1,
                                v["body"].encode())
        write("signature", "standard-%02d" % i, data)
    for name, secrets in [("single-event", ["whsec_test_fixtures"]), ("unicode", ["whsec_test_fixtures"]),
                          ("rotation", ["whsec_test_fixtures_old", "whsec_test_fixtures"])]:
        h = headers(os.path.join(deliveries, name + ".headers"))
        body_name = "single-event" if name == "rotation" else name
        with open(os.path.join(deliveries, body_name + ".json"), "rb") as f:
            body = f.read()
        ts = h["x-treadsoft-timestamp"]
        data = encode_signature(False, h.get("x-treadsoft-delivery"), ts, h["x-treadsoft-signature"], secrets, int(ts),
                                int(ts) + 1, 300, 7, 0x20, body)
        write("signature", "fixture-" + name, data)

    # delivery: the fixtures as TreadSoft sends them, and bodies the parser refuses.
    for name in sorted(os.listdir(deliveries)):
        if name.endswith(".json"):
            with open(os.path.join(deliveries, name), "rb") as f:
                write("delivery", "fixture-" + name[:-5], f.read())
    event = {"id": "evt_1", "type": "property.updated", "occurredAt": "2025-01-05T10:30:00Z", "changeSource": "api",
             "requestId": "req_1", "changedFields": ["pricePerNight", "bedrooms", "currency"],
             "object": {"type": "property", "id": "crm_p_1", "externalId": "42", "version": 3,
                        "updatedAt": "2025-01-05T10:30:00Z", "deletedAt": None,
                        "data": {"ownerContactId": "crm_c_1", "title": "Hall", "location": "Haworth",
                                 "bedrooms": 2147483648, "pricePerNight": 1450.555, "currency": None,
                                 "status": "active"}}}
    edges = {
        "empty-object": {},
        "no-events": {"deliveryId": "d1", "events": []},
        "101-events": {"deliveryId": "d1", "events": [{"id": "e%d" % i} for i in range(101)]},
        "event-without-id": {"deliveryId": "d1", "events": [{"type": "contact.updated"}]},
        "empty-event-id": {"deliveryId": "d1", "events": [{"id": ""}]},
        "no-delivery-id": {"events": [{"id": "e1"}]},
        "property-edge-values": {"deliveryId": "", "events": [event]},
        "nul-in-name": {"deliveryId": "d1", "events": [{"id": "e1", "type": "contact.created", "object": {
            "type": "contact", "data": {"firstName": "Jo\u0000", "lastName": " ", "email": "a@b", "role": "guest"}}}]},
        "booking-dates": {"deliveryId": "d1", "events": [{"id": "e1", "type": "booking.updated", "object": {
            "type": "booking", "data": {"propertyId": "p", "contactId": None, "checkIn": "2025-02-30",
                                        "checkOut": "+12025-01-01", "guests": -1, "totalPrice": -0.0,
                                        "paymentStatus": "deposit_paid"}}}]},
        "membership": {"deliveryId": "d1", "events": [{"id": "e1", "type": "membership.created", "object": {
            "type": "membership", "data": {"contactId": "c", "tier": "premium", "status": "active",
                                           "startDate": "2025-01-01", "endDate": None, "autoRenew": 1,
                                           "paymentStatus": "paid"}}}]},
    }
    for name, body in edges.items():
        write("delivery", name, json.dumps(body, ensure_ascii=False))
    write("delivery", "not-json", b'{"deliveryId": "d1", "events": [{"id": "e1"}')

    # events: bodies of POST /api/events, valid and not.
    owner = {"id": "user_1", "name": "Zo\u00eb Bront\u00eb", "email": "user_1@example.com", "phone": "+44 1",
             "companyName": None, "role": "owner", "membershipStatus": "pending"}
    property_ = {"id": 4201, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth", "bedrooms": 12,
                 "pricePerNight": 145050, "currency": "GBP", "status": "active"}
    bodies = {
        "owner-registered": {"id": "ev_1", "type": "owner.registered", "occurredAt": "2025-01-05T10:30:00Z",
                             "data": owner},
        "batch": {"events": [
            {"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}},
            {"id": "ev_3", "type": "property.created", "data": property_},
            {"type": "booking.cancelled", "data": {"id": 7}},
            {"id": "ev_5", "type": "membership.created", "data": {"id": 9, "userId": "user_1",
                                                                  "membershipTier": "basic", "autoRenew": True}},
            {"id": "ev_6", "type": "enquiry.created", "data": {"id": "8", "guestName": "A", "subject": "S"}},
        ]},
        "property-deleted": {"id": "ev_7", "type": "property.deleted", "data": {"id": 4201}},
        "no-id": {"type": "owner.updated", "data": {"id": "user_1", "phone": "+44 3"}},
        "negative-amounts": {"id": "ev_8", "type": "booking.updated",
                             "data": {"id": 3, "guests": -2, "totalPrice": -1, "checkIn": "2025-07-01"}},
        "unknown-type": {"events": [{"id": "e1", "type": "owner.exploded", "data": {"id": "u"}}]},
        "bad-occurred-at": {"id": "e1", "type": "owner.updated", "occurredAt": "yesterday", "data": {"id": "u"}},
        "no-data": {"id": "e1", "type": "owner.updated"},
        "nul-in-key": {"id": "e1", "type": "owner.updated", "data": {"id": "u", "pho\u0000ne": "1"}},
        "events-not-array": {"events": {"id": "e1"}},
        "zero-events": {"events": []},
        "501-events": {"events": [{} for _ in range(501)]},
        "float-id": {"id": "e1", "type": "property.updated", "data": {"id": 1.5}},
        "not-an-object": [1, "two", None],
    }
    for name, body in bodies.items():
        write("events", name, json.dumps(body, ensure_ascii=False))


if __name__ == "__main__":
    main()
