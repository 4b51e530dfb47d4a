"""The Observer: a node's ring of the last events, read as flows; live subscribers; lost events.

`add()` is on the hot path (the ring-buffer reader calls it for every event), so it only appends the
decoded event to a fixed-size deque and hands it to the subscribers' bounded queues; conversion to a
flow (enrichment) and filtering happen on the reader's side, in the client's thread. A subscriber
whose queue is full is closed there and then ("client too slow") rather than slowing `add()`.
"""
from __future__ import annotations

import collections
import json
import threading
import time

from apiary.observe.flow import Converter

DEFAULT_CAPACITY = 4095
# Hubble's LostEventSource names.
LOST_DATAPATH = "PERF_EVENT_RING_BUFFER"
LOST_OBSERVER = "OBSERVER_EVENTS_QUEUE"


class SubscriptionClosed(Exception):
    """The subscription ended; the message says why (e.g. the client was too slow)."""


def lost_record(source: str, count: int, when: float | None = None) -> dict:
    return {"type": "lost", "time": time.time() if when is None else when, "source": source,
            "num_events_lost": count}


class Subscription:
    """A live feed of events (raw) from the Observer, through a bounded queue.

    next_batch() returns what arrived (possibly nothing after `timeout`), raising SubscriptionClosed
    once the observer dropped it. The queue is a deque: the producer appends, the consumer pops, and
    neither takes a lock (one producer at a time: Observer.add holds the observer's lock)."""

    def __init__(self, observer, queue_size: int):
        self.observer = observer
        self.queue_size = queue_size
        self.items = collections.deque()
        self.closed = None          # the reason, once closed
        self.wakeup = threading.Event()

    def offer(self, item) -> bool:
        if len(self.items) >= self.queue_size:
            # Called by Observer.add with the observer's lock held.
            self.closed = "client too slow: %d events not delivered" % (len(self.items) + 1)
            self.items.clear()
            self.observer._remove(self, dropped=True)
            self.wakeup.set()
            return False
        self.items.append(item)
        if not self.wakeup.is_set():
            self.wakeup.set()
        return True

    def close(self, reason: str = "closed") -> None:
        with self.observer._lock:
            if self.closed is None:
                self.closed = reason
                self.observer._remove(self, dropped=False)
        self.wakeup.set()

    def next_batch(self, timeout: float = 0.5, limit: int = 1000) -> list:
        if not self.items and self.closed is None:
            self.wakeup.wait(timeout)
            self.wakeup.clear()
        batch = []
        while self.items and len(batch) < limit:
            batch.append(self.items.popleft())
        if not batch and self.closed is not None:
            raise SubscriptionClosed(self.closed)
        return batch


class Observer:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, node_name: str = "", lookup=None):
        if capacity < 1:
            raise ValueError("observer capacity must be at least 1, not %r" % capacity)
        self.capacity = capacity
        self.converter = Converter(node_name, lookup)
        self.started = time.time()
        self._ring = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seen = 0
        self._lost = {}
        self._subscribers = ()      # replaced, never changed in place: add() iterates it without copying
        self._dropped_clients = 0

    # --- producer side -------------------------------------------------------------------------
    def add(self, event: dict) -> None:
        with self._lock:
            self._ring.append(event)
            self._seen += 1
            for sub in self._subscribers:
                sub.offer(event)

    def lost(self, count: int, source: str = LOST_DATAPATH) -> None:
        """Events lost before reaching the observer: kept in the ring, counted, sent to followers."""
        if count <= 0:
            return
        record = lost_record(source, count)
        with self._lock:
            self._lost[source] = self._lost.get(source, 0) + count
            self._ring.append(record)
            for sub in self._subscribers:
                sub.offer(record)

    # --- reader side (never under the lock: conversion must not hold up add()) ----------------
    @property
    def node_name(self) -> str:
        return self.converter.node_name

    @property
    def lookup(self):
        return self.converter.lookup

    def flow(self, event: dict) -> dict:
        """The event as a flow, converted once (the first read) and kept with the event."""
        flow = event.get("_flow")
        if flow is None:
            flow = event["_flow"] = self.converter.flow(event)
        return flow

    def line(self, item: dict) -> bytes:
        """The item's API record as an NDJSON line, built once and shared by every reader."""
        line = item.get("_line")
        if line is None:
            if item.get("type") == "lost":
                line = (json.dumps(_lost_events(item), separators=(",", ":")) + "\n").encode()
            else:
                line = self.converter.line(item)
            item["_line"] = line
        return line

    def record(self, item: dict, query=None, encoded: bool = False):
        """An item of the ring as an API record ({"flow"} or {"lost_events"}; its line as bytes when
        `encoded`), None if filtered out."""
        if query is not None and not query.in_range(item["time"]):
            return None
        lost = item.get("type") == "lost"
        if not lost and query is not None and not getattr(query, "matches_all", False) \
                and not query.match(self.flow(item)):
            return None
        if encoded:
            return self.line(item)
        return _lost_events(item) if lost else {"flow": self.flow(item)}

    def get_flows(self, query=None, since=None, until=None, last=None, first=None, encoded: bool = False) -> list:
        """Records (flows and lost-event notices) of the ring that match, oldest first; NDJSON lines
        (bytes) when `encoded`.

        `query` is a filters.Query (its since/until/last/first are used unless given here)."""
        if query is not None:
            since = query.since if since is None else since
            until = query.until if until is None else until
            last = query.last if last is None else last
            first = query.first if first is None else first
        with self._lock:
            items = list(self._ring)
        return self._select(items, query, since, until, last, first, encoded)

    def _select(self, items, query, since, until, last, first, encoded=False) -> list:
        flt = _Range(query, since, until)
        out, flows = [], 0
        # --last reads from the newest backwards and stops early; everything else reads forwards.
        for item in (reversed(items) if last else items):
            rec = self.record(item, flt, encoded)
            if rec is None:
                continue
            out.append(rec)
            if item.get("type") != "lost":
                flows += 1
                if (last and flows >= last) or (first and flows >= first):
                    break
        if last:
            out.reverse()
        return out

    def subscribe(self, queue_size: int = 10000) -> Subscription:
        return self._subscribe(queue_size)[0]

    def _subscribe(self, queue_size: int):
        """A new subscription and the ring as it was at that moment (no event in both, none in neither)."""
        sub = Subscription(self, queue_size)
        with self._lock:
            self._subscribers = self._subscribers + (sub,)
            items = list(self._ring)
        return sub, items

    def _remove(self, sub, dropped: bool) -> None:
        """Called with self._lock held."""
        self._subscribers = tuple(s for s in self._subscribers if s is not sub)
        if dropped:
            self._dropped_clients += 1

    def follow(self, query=None, queue_size: int = 10000, history: bool = True, encoded: bool = False):
        """Records for a follow stream: the matching history first, then live records as they come
        (as NDJSON when `encoded`: bytes of one line or, live, of a batch's lines).

        Yields None after each batch and when nothing arrived for a while (the writer sends what it
        has, or checks its client is still there); ends with {"error": reason} if the observer dropped the subscription. Closing the
        generator unsubscribes."""
        sub, items = self._subscribe(queue_size)
        try:
            if history and query is not None and (query.since is not None or query.last):
                for rec in self._select(items, query, query.since, query.until, query.last, None, encoded):
                    yield rec
            del items
            live = _Range(query, None, query.until if query is not None else None)
            while True:
                try:
                    batch = sub.next_batch()
                except SubscriptionClosed as exc:
                    yield {"error": str(exc)}
                    return
                records, ended = [], False
                for item in batch:
                    if live.until is not None and item["time"] > live.until:
                        ended = True
                        break
                    rec = self.record(item, live, encoded)
                    if rec is not None:
                        records.append(rec)
                if encoded and records:
                    records = [b"".join(records)]   # the batch's lines as one piece: less work per flow
                yield from records
                if ended:
                    return
                yield None      # a pause: the writer sends what it has
        finally:
            sub.close()

    def events(self, types=None, queue_size: int = 10000):
        """Raw decoded events for `apiary monitor`, live, filtered by type names; None when idle."""
        sub = self.subscribe(queue_size)
        try:
            while True:
                try:
                    batch = sub.next_batch()
                except SubscriptionClosed as exc:
                    yield {"error": str(exc)}
                    return
                for item in batch:
                    if item.get("type") == "lost":
                        yield _lost_events(item)
                    elif not types or item["type"] in types:
                        yield {k: v for k, v in item.items() if k not in ("_flow", "_line")}
                yield None
        finally:
            sub.close()

    def status(self) -> dict:
        with self._lock:
            return {"num_flows": sum(1 for item in self._ring if item.get("type") != "lost"),
                    "max_flows": self.capacity, "seen_flows": self._seen, "lost_events": dict(self._lost),
                    "uptime": round(time.time() - self.started, 3), "subscribers": len(self._subscribers),
                    "dropped_clients": self._dropped_clients, "node_name": self.node_name}


def _lost_events(item: dict) -> dict:
    return {"lost_events": {"source": item["source"], "num_events_lost": item["num_events_lost"]}}


class _Range:
    """A Query's filter with an explicit time range (the caller may override the query's)."""

    def __init__(self, query, since, until):
        self.query, self.since, self.until = query, since, until
        # No flow filter: a flow need not be built as a dict to be matched (its line is enough).
        self.matches_all = query is None or not any(query.filters.values())

    def in_range(self, seconds: float) -> bool:
        return (self.since is None or seconds >= self.since) and (self.until is None or seconds <= self.until)

    def match(self, flow: dict) -> bool:
        return self.query is None or self.query.match(flow)
