"""The one place that builds a client for the Kubernetes API.

    api = client.api_client("/etc/kubernetes/apiary.conf")   # client certificate and CA from a kubeconfig
    api = client.api_client()                               # in a pod: its service account

Every request made through it has a connect and a read timeout, also when the caller forgets one
(the generated API functions pass `_request_timeout=None` by default, which would wait for ever on
an API server that stopped answering).
"""
from __future__ import annotations

import json

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from apiary.errors import UserError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
USER_AGENT = "apiary/0.1.0"
# The package sizes its connection pool as 5 per CPU; every watch holds a connection for minutes,
# so on a 1-CPU node ten watches would keep opening and discarding connections ("pool is full").
POOL_SIZE = 32


class ApiClient(kubernetes.client.ApiClient):
    """kubernetes.client.ApiClient with a default (connect, read) timeout for every call."""

    def __init__(self, configuration, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)):
        super().__init__(configuration)
        self.timeout = timeout
        self.user_agent = USER_AGENT

    def call_api(self, *args, **kwargs):
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.timeout
        return super().call_api(*args, **kwargs)


def configuration(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.Configuration:
    """The connection settings from a kubeconfig file, or the in-cluster ones when no path is given."""
    config = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            # persist_config=False: the file is only read (the package would write refreshed tokens back).
            kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                               client_configuration=config, persist_config=False)
        else:
            kubernetes.config.load_incluster_config(client_configuration=config)
    except (ConfigException, OSError) as exc:
        where = kubeconfig or "the in-cluster service account (no kubeconfig given)"
        raise UserError("cannot use %s to reach the Kubernetes API: %s" % (where, exc)) from exc
    config.connection_pool_maxsize = POOL_SIZE
    return config


def api_client(kubeconfig: str | None = None, context: str | None = None,
               timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) -> ApiClient:
    """An ApiClient for `kubeconfig` (client certificate + CA) or the in-cluster config."""
    return ApiClient(configuration(kubeconfig, context), timeout=timeout)


def error_message(exc: BaseException) -> str:
    """A one-line description of a failed call: the API server's own message when it sent one."""
    if isinstance(exc, ApiException):
        if exc.status == 0 or not exc.body:  # no answer (the package reports TLS errors this way)
            return "HTTP %s %s" % (exc.status, (exc.reason or "").strip().replace("\n", ": "))
        try:
            body = json.loads(exc.body)
            message = body.get("message") or exc.reason
        except (ValueError, AttributeError):
            message = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body)
        return "HTTP %s %s: %s" % (exc.status, exc.reason, message)
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the socket error
    if isinstance(reason, BaseException):
        return "%s: %s" % (type(reason).__name__, reason)
    return "%s: %s" % (type(exc).__name__, exc)
