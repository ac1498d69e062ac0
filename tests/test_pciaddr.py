"""qemu.pciaddr.address_element: its look at the last two children, and the walk behind it."""

import random
from types import SimpleNamespace

import pytest
from lxml import etree

from virtnet.qemu.pciaddr import address_element


def _device(*tags):
    node = etree.Element("interface")
    for tag in tags:
        etree.SubElement(node, tag)
    return SimpleNamespace(node=node)


@pytest.mark.parametrize("tags", [
    ("address", "model", "source"),  # not among the last two: found by the walk
    ("address", "alias"),
    ("source", "address"),
    ("source", "address", "alias"),
    ("address",),
])
def test_the_address_is_found_wherever_it_is(tags):
    device = _device(*tags)
    found = address_element(device)
    assert found is not None and found is device.node[tags.index("address")]


@pytest.mark.parametrize("tags", [(), ("source",), ("source", "model", "alias")])
def test_no_address_is_none(tags):
    assert address_element(_device(*tags)) is None


def test_the_element_found_is_a_full_searchs_for_random_orders():
    rng = random.Random(0)
    tags = ["address", "alias", "model", "source", "target", "driver"]
    for _ in range(500):
        chosen = rng.sample(tags, rng.randint(0, len(tags)))
        if rng.random() < 0.2:
            chosen.insert(rng.randint(0, len(chosen)), etree.Comment("a comment"))
        node = etree.Element("disk")
        for tag in chosen:
            node.append(tag if not isinstance(tag, str) else etree.Element(tag))
        assert address_element(SimpleNamespace(node=node)) is node.find("address"), chosen
