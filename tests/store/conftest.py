"""One etcd for the store tests, in a network namespace of their own."""
import pytest

from tests.helpers.etcd import requires_etcd, running_etcd, temp_netns


@pytest.fixture(scope="package")
def etcd_ns(tmp_path_factory):
    """(namespace name, client URL) of a running etcd; tests talk to it with netns.call_in."""
    if requires_etcd.args[0]:
        pytest.skip(requires_etcd.kwargs["reason"])
    with temp_netns() as ns, running_etcd(ns, tmp_path_factory.mktemp("etcd")) as url:
        yield ns, url
