"""apiary.k8s.client: a kubeconfig with client certificates, errors said in words, timeouts on
every call."""
from __future__ import annotations

import socket

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from apiary import netns
from apiary.errors import UserError
from apiary.k8s import client
from tests.helpers import upstream
from tests.helpers.kube_apiserver import write_kubeconfig


def test_a_kubeconfig_with_a_client_certificate_reaches_the_api_server(api):
    version = kubernetes.client.VersionApi(api).get_code()
    assert version.git_version == "v" + upstream.versions()["kubernetes"]
    assert isinstance(api, client.ApiClient) and api.user_agent.startswith("apiary/")


def test_a_missing_kubeconfig_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nowhere.conf"):
        client.api_client(str(tmp_path / "nowhere.conf"))


def test_no_kubeconfig_outside_a_pod_is_a_user_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError, match="in-cluster service account"):
        client.api_client()


def test_errors_carry_the_api_servers_message(api):
    with pytest.raises(ApiException) as failed:
        kubernetes.client.CoreV1Api(api).read_namespace("not-there")
    assert client.error_message(failed.value) == 'HTTP 404 Not Found: namespaces "not-there" not found'


def test_a_server_that_never_answers_times_out(inside, tmp_path):
    # Accepts connections (the kernel does, into the backlog) and never says a word.
    silent = netns.call_in_thread(inside.netns, socket.create_server, ("127.0.0.1", 0))
    try:
        kubeconfig = write_kubeconfig(str(tmp_path / "silent.conf"),
                                      "https://127.0.0.1:%d" % silent.getsockname()[1], inside.pki)
        api = client.api_client(kubeconfig, timeout=(1, 1))

        def call():
            with pytest.raises(Exception) as failed:  # noqa: PT011 - urllib3's errors differ by phase
                kubernetes.client.VersionApi(api).get_code()
            return client.error_message(failed.value)
        # A thread, so that a missing timeout fails the test instead of hanging it.
        message = netns.call_in_thread(inside.netns, call, timeout=120)
        assert "timed out" in message.lower()
    finally:
        silent.close()
