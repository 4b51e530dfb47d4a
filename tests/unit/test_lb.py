"""apiary.datapath.lb without a kernel: the Maglev table, the datapath's flow hash, input checks."""
import collections

import pytest

from apiary.datapath.lb import Backend, Frontend, LoadBalancer, jhash_3words, maglev_table
from apiary.errors import UserError

BACKENDS = ["10.233.64.%d:8080/TCP" % i for i in range(10, 20)]


def test_the_same_backends_give_the_same_table_in_any_order():
    table = maglev_table(BACKENDS, 16381)
    assert len(table) == 16381 and set(table) == set(BACKENDS)
    assert maglev_table(list(reversed(BACKENDS)), 16381) == table
    assert maglev_table(BACKENDS + BACKENDS[:2], 16381) == table  # a duplicate is the same backend


def test_every_backend_gets_a_near_equal_share():
    for m in (251, 16381):
        shares = collections.Counter(maglev_table(BACKENDS, m)).values()
        assert max(shares) - min(shares) <= max(2, m // 100), (m, sorted(shares))


def test_removing_a_backend_moves_little_more_than_its_own_slots():
    m = 16381
    before = maglev_table(BACKENDS, m)
    after = maglev_table(BACKENDS[:3] + BACKENDS[4:], m)
    moved = sum(1 for old, new in zip(before, after) if old != new)
    own = before.count(BACKENDS[3])
    assert own <= moved <= own * 1.5, (own, moved)
    # and slots of the other backends mostly keep theirs
    kept = sum(1 for old, new in zip(before, after) if old == new)
    assert kept >= m - own * 1.5


def test_ids_work_as_well_as_names():
    table = maglev_table([3, 1, 2], 251)
    assert set(table) == {1, 2, 3} and maglev_table([1, 2, 3], 251) == table


def test_table_sizes_are_ciliums_primes():
    with pytest.raises(UserError, match="maglev table size"):
        maglev_table(BACKENDS, 1000)
    assert maglev_table([], 251) == []


def test_the_flow_hash_spreads_source_ports():
    # The datapath's own hash is checked against the kernel in tests/datapath/test_services.py
    # (Maglev picks predicted here); here only that it is a usable hash.
    slots = collections.Counter(jhash_3words(0x0A63000A, 0x0A630001, port << 16 | 0x7576, 6) % 251
                                for port in range(5000))
    assert len(slots) > 240 and max(slots.values()) < 50


@pytest.mark.parametrize("kwargs, field", [
    ({"address": "10.96.0.300", "port": 80}, "not an IPv4 address"),
    ({"address": "10.96.0.10", "port": 0}, "port 0 is out of range"),
    ({"address": "10.96.0.10", "port": 80, "protocol": "ICMP"}, "protocol"),
    ({"address": "10.96.0.10", "port": 80, "kind": "Ingress"}, "type 'Ingress'"),
])
def test_bad_frontends_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        Frontend(**kwargs)


def test_bad_backends_name_the_field():
    with pytest.raises(UserError, match="backend id"):
        Backend(0, "10.233.64.10", 80)
    with pytest.raises(UserError, match="state 'gone'"):
        Backend(1, "10.233.64.10", 80, state="gone")


def test_bad_settings_are_refused_before_any_map_is_opened():
    with pytest.raises(UserError, match="algorithm"):
        LoadBalancer("/nonexistent", algorithm="roundrobin")
    with pytest.raises(UserError, match="maglev table size"):
        LoadBalancer("/nonexistent", algorithm="maglev", maglev_table_size=16384)
