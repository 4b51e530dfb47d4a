"""List+watch of the Kubernetes API with a cache, as client-go's reflector and informer do.

    watcher = Watcher(api)
    watcher.subscribe("pods", on_add=..., on_update=..., on_delete=..., on_synced=...)
    watcher.subscribe("pods", field_selector=on_node("node1"), on_add=...)   # a second, node-local view
    watcher.start(); watcher.wait_synced(60); ...; watcher.stop()

A Reflector lists a resource (in pages), remembers the list's resourceVersion and watches from it; each
new watch resumes from the last resourceVersion seen (events and bookmarks), so nothing is missed or
delivered twice. When the API server no longer has that version (410 Gone, e.g. after etcd compacted
it while we were disconnected), it lists again and delivers only the differences from its cache:
changed objects as updates, new ones as adds, vanished ones as deletes.

Objects are the API server's JSON as plain dicts (no model classes: decoding 10k pods into the
package's models and back takes about 17 times as long as json.loads). They are shared between the
cache and every handler, so handlers must not modify them.

Handlers of one reflector run in order in its own thread (the watch itself never waits for them);
an exception in a handler is logged and counted, and the next event is delivered as usual.
"""
from __future__ import annotations

import functools
import json
import logging
import queue
import random
import socket
import threading
import time

import kubernetes.client
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from apiary.k8s.client import CONNECT_TIMEOUT, error_message

log = logging.getLogger("apiary.k8s.watch")

PAGE_SIZE = 500
WATCH_TIMEOUT = 300  # seconds the API server keeps a watch open; each watch takes 1-2 times this
READ_MARGIN = 30  # a watch that stays silent this long after its timeout means a dead connection
BACKOFF = (0.8, 30.0)  # first and largest wait after a failure (client-go's values)


class Resource:
    """A kind the watcher can list and watch, and the generated function that does it."""

    def __init__(self, name, kind, api_version, namespaced, lister):
        self.name, self.kind, self.api_version, self.namespaced = name, kind, api_version, namespaced
        self.lister = lister  # ApiClient -> the generated list function (all namespaces)


def _custom(plural):
    return lambda api: functools.partial(kubernetes.client.CustomObjectsApi(api).list_cluster_custom_object,
                                         "cilium.io", "v2", plural)


RESOURCES = {r.name: r for r in (
    Resource("pods", "Pod", "v1", True, lambda api: kubernetes.client.CoreV1Api(api).list_pod_for_all_namespaces),
    Resource("namespaces", "Namespace", "v1", False, lambda api: kubernetes.client.CoreV1Api(api).list_namespace),
    Resource("nodes", "Node", "v1", False, lambda api: kubernetes.client.CoreV1Api(api).list_node),
    Resource("services", "Service", "v1", True,
             lambda api: kubernetes.client.CoreV1Api(api).list_service_for_all_namespaces),
    Resource("endpointslices", "EndpointSlice", "discovery.k8s.io/v1", True,
             lambda api: kubernetes.client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces),
    Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", True,
             lambda api: kubernetes.client.NetworkingV1Api(api).list_network_policy_for_all_namespaces),
    Resource("ciliumnetworkpolicies", "CiliumNetworkPolicy", "cilium.io/v2", True,
             _custom("ciliumnetworkpolicies")),
    Resource("ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", "cilium.io/v2", False,
             _custom("ciliumclusterwidenetworkpolicies")),
)}


def on_node(node_name: str) -> str:
    """The field selector of the pods scheduled to one node."""
    return "spec.nodeName=" + node_name


def key_of(obj: dict) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects (client-go's MetaNamespaceKeyFunc)."""
    meta = obj.get("metadata") or {}
    return "%s/%s" % (meta["namespace"], meta["name"]) if meta.get("namespace") else meta["name"]


def _meta(obj: dict, field: str):
    return (obj.get("metadata") or {}).get(field)


class Gone(Exception):
    """The resourceVersion we would watch from is no longer available: list again."""


def _is_gone(exc: ApiException) -> bool:
    # 410 Gone/Expired; a version newer than the API server has (it was restored from a backup, or
    # an API server lags behind) is answered with 504 "Too large resource version": list again too.
    return exc.status == 410 or "Too large resource version" in error_message(exc)


class _DictWatch(kubernetes.watch.Watch):
    """kubernetes.watch.Watch that keeps each event's object as the API server's JSON (a dict).

    The package would decode every object into its model classes (slow), and bookmarks it does not
    decode at all; the reflector reads resourceVersions from the dicts itself."""

    def unmarshal_event(self, data, return_type):
        event = json.loads(data)
        event["raw_object"] = event.get("object")  # Watch.stream reads ERROR events' code from here
        return event


class Reflector:
    """One resource (and selector): list, watch, cache, and the handlers of its subscribers."""

    def __init__(self, api, resource: str | Resource, field_selector: str | None = None,
                 label_selector: str | None = None, page_size: int | None = PAGE_SIZE,
                 watch_timeout: int = WATCH_TIMEOUT, backoff=BACKOFF):
        self.resource = resource if isinstance(resource, Resource) else RESOURCES[resource]
        self.field_selector, self.label_selector = field_selector, label_selector
        self.name = self.resource.name + ("(%s)" % field_selector if field_selector else "") + \
            ("[%s]" % label_selector if label_selector else "")
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self._list_function = self.resource.lister(api)
        self._watch = _DictWatch()
        self._handlers: list[dict] = []
        self._cache: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._response = None  # the open list or watch response; stop() shuts its socket
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()  # set once the handlers have seen the whole first list
        self.resource_version: str | None = None
        # What `apiary status` shows.
        self.connected = False
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.lists = self.watches = self.bookmarks = self.events = self.handler_errors = 0

    # --- subscribers ----------------------------------------------------------------------------
    def add_handler(self, on_add=None, on_update=None, on_delete=None, on_synced=None) -> None:
        """on_add(obj), on_update(old, new), on_delete(obj) (the object's last state), on_synced()."""
        if self._threads:
            raise RuntimeError("subscribe to %s before the watcher starts" % self.name)
        self._handlers.append({"add": on_add, "update": on_update, "delete": on_delete, "synced": on_synced})

    # --- the cache --------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        """The cached object `namespace/name` (or `name`), or None."""
        with self._lock:
            return self._cache.get(key)

    def list(self) -> list[dict]:
        with self._lock:
            return list(self._cache.values())

    def __len__(self) -> int:
        return len(self._cache)

    def status(self) -> dict:
        return {"resource": self.name, "connected": self.connected, "synced": self.synced.is_set(),
                "resource_version": self.resource_version, "objects": len(self._cache),
                "last_error": self.last_error, "last_error_time": self.last_error_time,
                "lists": self.lists, "watches": self.watches, "bookmarks": self.bookmarks,
                "events": self.events, "handler_errors": self.handler_errors}

    # --- running ----------------------------------------------------------------------------------
    def start(self) -> "Reflector":
        for target, role in ((self._run, "watch"), (self._dispatch, "handlers")):
            thread = threading.Thread(target=target, name="k8s-%s-%s" % (role, self.resource.name), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def alive(self) -> bool:
        """Whether any of its threads still runs."""
        return any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop at once: the open request's socket is shut down, not waited for."""
        self._stopping.set()
        self._interrupt()
        self._queue.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _interrupt(self) -> None:
        # Closing a socket does not wake a thread blocked reading it; shutting it down does. The
        # plain socket's shutdown, not SSLSocket's, which would also tear down TLS state in use.
        connection = getattr(self._response, "_connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass

    def _run(self) -> None:
        delay = self.backoff[0]
        must_list = True
        while not self._stopping.is_set():
            try:
                if must_list:
                    self._list()
                    must_list = False
                began = time.monotonic()
                self._watch_once()
                delay = self.backoff[0]
                if time.monotonic() - began < 1.0 and not self._stopping.is_set():
                    self._stopping.wait(delay)  # a server that ends watches at once is not hammered
            except Gone as exc:
                log.info("%s: %s; listing again", self.name, exc)
                must_list = True
            except Exception as exc:  # noqa: BLE001 - the API server may be down for a while
                if self._stopping.is_set():
                    break
                self.connected = False
                self.last_error, self.last_error_time = error_message(exc), time.time()
                wait = delay * random.uniform(1.0, 1.5)
                log.warning("%s: %s; trying again in %.1f s", self.name, self.last_error, wait)
                self._stopping.wait(wait)
                delay = min(delay * 2, self.backoff[1])

    def _call(self, **kwargs):
        """The list function, with its response kept where stop() can reach it."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs["_preload_content"] = False  # the raw response: JSON read by us, a socket stop() can shut
        try:
            response = self._list_function(field_selector=self.field_selector,
                                           label_selector=self.label_selector, **kwargs)
        except ApiException as exc:
            if _is_gone(exc):
                raise Gone(error_message(exc)) from exc
            raise
        self._response = response
        if self._stopping.is_set():
            self._interrupt()
        self.connected = True
        return response

    def _list(self) -> None:
        """A full list in pages; the cache becomes it and the handlers get the differences."""
        items, token, limit, version = [], None, self.page_size, None
        while True:
            try:
                response = self._call(limit=limit, _continue=token)
            except Gone as exc:
                if token is None:  # not a resumable state: an ordinary failure, with backoff
                    raise RuntimeError(str(exc)) from exc
                # The continue token expired between pages (etcd compacted): one list without pages.
                items, token, limit, version = [], None, None, None
                continue
            body = json.loads(response.data)
            if version is None:  # every page belongs to the first page's snapshot
                version = body["metadata"]["resourceVersion"]
            items.extend(body.get("items") or [])
            token = body["metadata"].get("continue")
            if not token:
                break
        for obj in items:  # list items of built-in kinds come without these; watch events have them
            obj.setdefault("kind", self.resource.kind)
            obj.setdefault("apiVersion", self.resource.api_version)
        self._replace(items, version)

    def _replace(self, items: list, version: str) -> None:
        new = {key_of(obj): obj for obj in items}
        with self._lock:
            old, self._cache = self._cache, new
            self.resource_version = version
        # Deletes first (also of objects made again under the same name: another uid): a pod IP
        # or Service address that moved to another object is released before it is taken again.
        for key, obj in old.items():
            if key not in new or _meta(obj, "uid") != _meta(new[key], "uid"):
                self._queue.put(("delete", obj))
        for key, obj in new.items():
            previous = old.get(key)
            if previous is None or _meta(previous, "uid") != _meta(obj, "uid"):
                self._queue.put(("add", obj))
            elif _meta(previous, "resourceVersion") != _meta(obj, "resourceVersion"):
                self._queue.put(("update", previous, obj))
        if self.lists == 0:
            self._queue.put(("synced",))
        self.lists += 1

    def _changed(self, old: dict | None, new: dict) -> None:
        if old is None:
            self._queue.put(("add", new))
        elif _meta(old, "uid") != _meta(new, "uid"):  # deleted and made again under the same name
            self._queue.put(("delete", old))
            self._queue.put(("add", new))
        elif _meta(old, "resourceVersion") != _meta(new, "resourceVersion"):
            self._queue.put(("update", old, new))

    def _watch_once(self) -> None:
        """One watch, from the last resourceVersion seen, until the server ends it or it fails."""
        timeout = random.randint(self.watch_timeout, 2 * self.watch_timeout)  # not all at once
        self.watches += 1
        stream = self._watch.stream(self._call, resource_version=self.resource_version,
                                    allow_watch_bookmarks=True, timeout_seconds=timeout,
                                    _request_timeout=(CONNECT_TIMEOUT, timeout + READ_MARGIN))
        try:
            for event in stream:
                if self._stopping.is_set():
                    return
                self._handle(event["type"], event["object"])
        except ApiException as exc:  # an ERROR event (Watch.stream raises it with the event's code)
            if _is_gone(exc):
                raise Gone("watch from resourceVersion %s: %s" % (self.resource_version, exc.reason)) from exc
            raise
        finally:
            stream.close()  # closes the response now, also when we return early
            self._response = None

    def _handle(self, kind: str, obj: dict) -> None:
        version = _meta(obj, "resourceVersion")
        if kind == "BOOKMARK":  # nothing changed for us up to this version
            self.resource_version = version
            self.bookmarks += 1
            return
        key = key_of(obj)
        with self._lock:
            old = self._cache.get(key)
            if kind == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
            self.resource_version = version
        self.events += 1
        if kind == "DELETED":
            if old is not None:
                self._queue.put(("delete", obj))
        else:
            self._changed(old, obj)

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            what, args = item[0], item[1:]
            if what == "synced":
                self.synced.set()
            for handler in self._handlers:
                func = handler[what]
                if func is None:
                    continue
                try:
                    func(*args)
                except Exception:  # noqa: BLE001 - one bad handler must not stop the others or the watch
                    self.handler_errors += 1
                    log.exception("%s: %s handler %s failed on %s", self.name, what,
                                  getattr(func, "__qualname__", func), _meta(args[-1], "name") if args else "")


class Watcher:
    """One reflector per resource and selector, shared by every subscriber (one watcher, many managers)."""

    def __init__(self, api, **reflector_options):
        self.api = api
        self.options = reflector_options  # page_size, watch_timeout, backoff
        self.reflectors: dict[tuple, Reflector] = {}
        self.started = False

    def subscribe(self, resource: str, on_add=None, on_update=None, on_delete=None, on_synced=None,
                  field_selector: str | None = None, label_selector: str | None = None) -> Reflector:
        """Handlers for `resource` (a RESOURCES name); returns the reflector, whose cache the
        subscriber may read. Subscribers of the same resource and selectors share one reflector."""
        if resource not in RESOURCES:
            raise ValueError("unknown resource %r (known: %s)" % (resource, ", ".join(RESOURCES)))
        key = (resource, field_selector, label_selector)
        if key not in self.reflectors:
            if self.started:
                raise RuntimeError("subscribe to %s before the watcher starts" % resource)
            self.reflectors[key] = Reflector(self.api, resource, field_selector, label_selector, **self.options)
        reflector = self.reflectors[key]
        reflector.add_handler(on_add, on_update, on_delete, on_synced)
        return reflector

    def start(self) -> "Watcher":
        self.started = True
        for reflector in self.reflectors.values():
            reflector.start()
        return self

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once every reflector's handlers have seen its first list (False on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for reflector in self.reflectors.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not reflector.synced.wait(left):
                return False
        return True

    def stop(self) -> None:
        for reflector in self.reflectors.values():  # all interrupted first, then joined
            reflector._stopping.set()
            reflector._interrupt()
        for reflector in self.reflectors.values():
            reflector.stop()

    def status(self) -> list[dict]:
        return [reflector.status() for reflector in self.reflectors.values()]
