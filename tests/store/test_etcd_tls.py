"""The store client over TLS with a client certificate, against the upstream etcd the roles install
(https only, --client-cert-auth): what the agent, the relay and the lab CLI do."""
import threading

import pytest

from apiary import netns
from apiary.store.etcd import EtcdClient, EtcdError
from tests.helpers import upstream
from tests.helpers.etcd import running_etcd, temp_netns
from tests.helpers.kube_apiserver import make_pki


@pytest.fixture
def tls_etcd(tmp_path):
    pki = make_pki(str(tmp_path))  # a CA, a server certificate for 127.0.0.1, a client certificate
    tls = {"ca": pki["ca.crt"], "cert": pki["etcd.crt"], "key": pki["etcd.key"],
           "client_cert": pki["admin.crt"], "client_key": pki["admin.key"]}
    with temp_netns() as ns, running_etcd(ns, tmp_path, tls=tls, binary=upstream.binary("etcd")) as url:
        yield ns, url, tls


def test_put_get_and_watch_over_tls(tls_etcd):
    ns, url, tls = tls_etcd
    assert url.startswith("https://")

    def scenario():
        client = EtcdClient([url], ca_file=tls["ca"], cert_file=tls["client_cert"], key_file=tls["client_key"])
        start = client.put("/apiary/t/a", "1")
        client.put("/apiary/t/b", "2")
        assert client.get("/apiary/t/a").value == "1"
        assert [kv.key for kv in client.get_prefix("/apiary/t/")[0]] == ["/apiary/t/a", "/apiary/t/b"]
        stop, seen = threading.Event(), []
        for event in client.watch_prefix("/apiary/t/", start_revision=start, stop=stop):
            seen.append((event.type, event.kv.key))
            if len(seen) == 2:
                stop.set()
        return seen

    assert netns.call_in(ns, scenario) == [("PUT", "/apiary/t/a"), ("PUT", "/apiary/t/b")]


def test_a_client_without_a_certificate_is_refused(tls_etcd):
    ns, url, tls = tls_etcd

    def anonymous():
        try:
            EtcdClient([url], ca_file=tls["ca"], timeout=2).put("/apiary/t/x", "1")
        except EtcdError as exc:
            return str(exc)
        return "accepted"

    message = netns.call_in(ns, anonymous)
    assert message != "accepted"
    assert "no endpoint answered" in message, message


def test_plain_http_to_a_tls_member_fails(tls_etcd):
    ns, url, _ = tls_etcd
    plain = url.replace("https://", "http://")
    with pytest.raises(EtcdError):
        netns.call_in(ns, lambda: EtcdClient([plain], timeout=2).get("/apiary/t/a"))
