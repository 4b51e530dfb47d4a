"""The Observer: a ring of the last events, lost events reported, live subscribers that cannot stall
add()."""
from __future__ import annotations

import threading
import time

import pytest

from apiary.observe import filters
from apiary.observe.observer import Observer, SubscriptionClosed
from tests.observe.conftest import drop, event, make_lookup

T0 = 1795450000.0


def observer(capacity=4095):
    return Observer(capacity=capacity, node_name="node2", lookup=make_lookup())


def test_the_ring_keeps_the_last_capacity_events():
    obs = observer(capacity=10)
    for n in range(25):
        obs.add(event(time=T0 + n, src_port=1000 + n))
    records = obs.get_flows()
    assert [r["flow"]["l4"]["TCP"]["source_port"] for r in records] == list(range(1015, 1025))
    status = obs.status()
    assert (status["num_flows"], status["max_flows"], status["seen_flows"]) == (10, 10, 25)


def test_last_first_since_until_and_filters():
    obs = observer()
    for n in range(10):
        obs.add((drop if n % 2 else event)(time=T0 + n, src_port=1000 + n))
    ports = lambda recs: [r["flow"]["l4"]["TCP"]["source_port"] for r in recs]  # noqa: E731
    assert ports(obs.get_flows(last=3)) == [1007, 1008, 1009]
    assert ports(obs.get_flows(first=2)) == [1000, 1001]
    assert ports(obs.get_flows(since=T0 + 4, until=T0 + 6)) == [1004, 1005, 1006]
    dropped = filters.parse({"verdict": ["DROPPED"], "last": ["2"]})
    assert ports(obs.get_flows(dropped)) == [1007, 1009]
    assert ports(obs.get_flows(filters.parse({"verdict": ["DROPPED"], "since": ["2026-11-23T16:06:42Z"],
                                              "until": ["2026-11-23T16:06:45Z"]}))) == [1003, 1005]


def test_lost_events_are_reported_in_order_and_in_status():
    obs = observer()
    obs.add(event(time=T0))
    obs.lost(7)
    obs.lost(2, source="OBSERVER_EVENTS_QUEUE")
    obs.add(event(time=time.time() + 1))
    records = obs.get_flows()
    assert [next(iter(r)) for r in records] == ["flow", "lost_events", "lost_events", "flow"]
    assert records[1] == {"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 7}}
    assert obs.status()["lost_events"] == {"PERF_EVENT_RING_BUFFER": 7, "OBSERVER_EVENTS_QUEUE": 2}
    follow = obs.follow(filters.parse({"follow": ["1"]}))
    assert next(follow) is None            # subscribed (a generator starts at its first next())
    obs.lost(3)
    got = _drain(follow, 1)
    assert got == [{"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 3}}]
    follow.close()
    assert obs.status()["subscribers"] == 0


def _drain(gen, count, timeout=5.0):
    out, deadline = [], time.monotonic() + timeout
    for rec in gen:
        if rec is not None:
            out.append(rec)
        if len(out) >= count or time.monotonic() > deadline:
            return out
    return out


def test_follow_gives_history_then_live_flows_that_match():
    obs = observer()
    obs.add(drop(time=T0, src_port=1))
    obs.add(event(time=T0 + 1, src_port=2))
    follow = obs.follow(filters.parse({"verdict": ["DROPPED"], "last": ["5"], "follow": ["1"]}))
    assert _drain(follow, 1)[0]["flow"]["l4"]["TCP"]["source_port"] == 1
    threading.Timer(0.2, lambda: [obs.add(event(time=T0 + 2, src_port=3)), obs.add(drop(time=T0 + 3, src_port=4))]).start()
    assert [r["flow"]["l4"]["TCP"]["source_port"] for r in _drain(follow, 1)] == [4]
    follow.close()


def test_a_slow_subscriber_is_dropped_and_add_keeps_its_pace():
    obs = observer()
    events = [event(time=T0 + n / 1e6, src_port=n % 60000 + 1) for n in range(50_000)]
    start = time.perf_counter()
    for ev in events:
        obs.add(ev)
    alone = time.perf_counter() - start

    slow = obs.subscribe(queue_size=100)              # never reads
    fast = obs.subscribe(queue_size=100_000)
    received = []
    done = threading.Event()

    def consume():
        while not done.is_set() or fast.items:
            received.extend(fast.next_batch(timeout=0.05))

    reader = threading.Thread(target=consume)
    reader.start()
    start = time.perf_counter()
    for ev in events:
        obs.add(ev)
    with_subscribers = time.perf_counter() - start
    done.set()
    reader.join(10)

    assert slow.closed == "client too slow: 101 events not delivered"
    with pytest.raises(SubscriptionClosed, match="client too slow: 101 events not delivered"):
        slow.next_batch(timeout=0)
    assert len(received) == len(events) and received[-1] is events[-1]
    assert fast.closed is None
    # Each add() costs a bounded amount more with subscribers; a stalled one never blocks it.
    assert with_subscribers < alone * 4 + 0.5, (alone, with_subscribers)
    status = obs.status()
    assert (status["subscribers"], status["dropped_clients"], status["seen_flows"]) == (1, 1, 100_000)
    fast.close()
    assert obs.status()["subscribers"] == 0


def test_the_follow_stream_ends_with_the_reason_when_dropped():
    obs = observer()
    follow = obs.follow(filters.parse({"follow": ["1"]}), queue_size=5)
    assert next(follow) is None            # subscribed, nothing yet
    for n in range(20):
        obs.add(event(time=T0 + n))
    records = [r for r in follow if r is not None]
    assert records == [{"error": "client too slow: 6 events not delivered"}]
    assert obs.status()["subscribers"] == 0 and obs.status()["dropped_clients"] == 1


def test_monitor_events_filtered_by_type():
    obs = observer()
    stream = obs.events({"drop"})
    assert next(stream) is None
    obs.add(event(time=T0))
    obs.add(drop(time=T0 + 1))
    got = _drain(stream, 1)
    assert got[0]["type"] == "drop" and "_flow" not in got[0]
    stream.close()
