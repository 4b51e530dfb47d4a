"""The agent's Hubble settings (hubble.json from the hubble module) and the kernel-drop tracer's
availability report, without a kernel."""
import json

import pytest

from apiary.agent.hubble import HubbleSettings, split_address
from apiary.errors import UserError
from apiary.observe import kernel_drops

GOOD = {"enabled": True, "event_buffer_capacity": 4095, "listen_address": "10.77.101.11:4244",
        "metrics": ["drop", "flow"], "metrics_address": "10.77.101.11:9965",
        "tls": {"ca": "/x/ca.crt", "cert": "/x/n.crt", "key": "/x/n.key"}}


def write(tmp_path, data):
    (tmp_path / "hubble.json").write_text(json.dumps(data))
    return str(tmp_path)


def test_no_file_means_hubble_is_off(tmp_path):
    assert HubbleSettings.load(str(tmp_path)).enabled is False


def test_the_modules_file_is_read(tmp_path):
    settings = HubbleSettings.load(write(tmp_path, GOOD))
    assert settings.enabled and settings.event_buffer_capacity == 4095 and settings.tls["ca"] == "/x/ca.crt"
    assert split_address(settings.listen_address, "x") == ("10.77.101.11", 4244)


@pytest.mark.parametrize("field, value, words", [
    ("event_buffer_capacity", 4096, "event_buffer_capacity: 4096 is not 2^n - 1"),
    ("event_buffer_capacity", 0, "event_buffer_capacity: 0"),
    ("listen_address", "node1:4244", "listen_address: 'node1:4244' is not IP:PORT"),
    ("metrics_address", "10.0.0.1:70000", "metrics_address: '10.0.0.1:70000' is not IP:PORT"),
    ("tls", {"ca": "/x"}, "tls: needs exactly ca, cert and key"),
    ("colour", "blue", "unknown field(s) colour"),
])
def test_bad_settings_name_the_file_and_field(tmp_path, field, value, words):
    with pytest.raises(UserError) as err:
        HubbleSettings.load(write(tmp_path, dict(GOOD, **{field: value})))
    assert "hubble.json" in str(err.value) and words in str(err.value)


def test_kernel_drop_reason_names_come_from_the_tracepoint_format():
    fmt = ('print fmt: "skbaddr=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->protocol, '
           'REC->location, __print_symbolic(REC->reason, { 0, "NOT_DROPPED_YET" }, { 1, "CONSUMED" }, '
           '{ 2, "NOT_SPECIFIED" }, { 7, "NETFILTER_DROP" })')
    assert kernel_drops.reason_names(fmt) == {0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED",
                                              7: "NETFILTER_DROP"}


def test_kernel_drops_say_why_they_are_unavailable(monkeypatch):
    monkeypatch.setattr(kernel_drops.importlib.util, "find_spec", lambda name: None)
    status = kernel_drops.status()
    assert status["state"] == "Unavailable" and "python3-bpfcc" in status["message"]
    monkeypatch.setattr(kernel_drops.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(kernel_drops.os.path, "isdir", lambda path: False)
    status = kernel_drops.status()
    assert status["state"] == "Unavailable" and "headers" in status["message"]
