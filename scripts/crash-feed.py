#!/usr/bin/env python3
"""Feeds `onecard play` an endless stream of place + confirm commands for random consumers of a
simulator population (c0 .. c999999, merchant m1), for crash measurements (BENCHMARKS.md):

    python3 scripts/crash-feed.py | target/release/onecard play --data DIR &
    sleep 12; kill -9 <pid of onecard>
    target/release/onecard play --data DIR </dev/null   # prints how long until serving
"""
import json, random, sys
random.seed(7)
n = 0
while True:
    n += 1
    c = random.randrange(1_000_000)
    print(json.dumps({"do": "place_order", "at": 10**9, "id": f"crash-{n}", "consumer": f"c{c}",
                      "merchant": "m1", "amount": "10.00", "release": {"on": "receipt"}}))
    print(json.dumps({"do": "confirm_receipt", "order": f"crash-{n}", "satisfied": True}))
    sys.stdout.flush()
