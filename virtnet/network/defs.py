"""Defined networks: net-define/net-undefine with libvirt's conflict rules, and what net-list and
net-info show. Files and locking are virtnet.store's (NetworkFiles, under the store's lock)."""

import sys

from virtnet.errors import StoreError

BRIDGE_PREFIX = "virbr"


def files(store):
    from virtnet.store import NetworkFiles

    return NetworkFiles(store)


def load_defined(store, name):
    from virtnet.network.load import load_text

    nets = files(store)
    return load_text(nets.read(name), f"{nets.dir}/{name}.xml")


def _others(store, name):
    """(name, network) of every other defined network that loads; one warning per one that does not."""
    from virtnet.errors import VirtnetError

    found = []
    for other in files(store).names():
        if other == name:
            continue
        try:
            found.append((other, load_defined(store, other).network))
        except VirtnetError as e:
            print(f"virtnet: warning: network '{other}' is skipped: {e}", file=sys.stderr)
    return found


def _free_bridge(taken, names_in_use):
    index = 0
    while f"{BRIDGE_PREFIX}{index}" in taken or f"{BRIDGE_PREFIX}{index}" in names_in_use:
        index += 1
    return f"{BRIDGE_PREFIX}{index}"


def define(store, loaded, names_in_use=frozenset()):
    """Store a loaded network in canonical form; True when new, False for an update. A network that
    makes its own bridge and names none gets the first free virbrN (libvirt's rule), avoiding other
    networks' bridges and NAMES_IN_USE (the host's interfaces)."""
    from virtnet.network.format import format_network

    network = loaded.network
    with store.lock():
        nets = files(store)
        existing = None
        if nets.exists(network.name):
            existing = load_defined(store, network.name).network
            if loaded.uuid_generated:
                network.uuid = existing.uuid
            elif existing.uuid != network.uuid:
                raise StoreError(f"network '{network.name}' is already defined with uuid {existing.uuid}; to "
                                 f"update it, keep that uuid (or omit <uuid>), or `virtnet net-undefine "
                                 f"{network.name}` first").located(loaded.filename)
        others = _others(store, network.name)
        for other, net in others:
            if net.uuid == network.uuid:
                raise StoreError(f"uuid {network.uuid} is already used by network '{other}'; give this network "
                                 "its own <uuid>").located(loaded.filename)
        taken = {net.bridge_name for _, net in others if net.bridge_name}
        if network.own_bridge and not network.bridge_name:
            if existing is not None and existing.bridge_name:
                network.bridge.name = existing.bridge_name
            else:
                network.bridge.name = _free_bridge(taken, names_in_use)
        if network.own_bridge and network.bridge_name in taken:
            owner = next(o for o, net in others if net.bridge_name == network.bridge_name)
            raise StoreError(f"bridge '{network.bridge_name}' is already used by network '{owner}'; choose another "
                             "<bridge name>").located(loaded.filename)
        nets.write(network.name, format_network(network))
    return existing is None


def undefine(store, name):
    from virtnet.network import runner

    with store.lock():
        runner.reap(store)
        nets = files(store)
        if nets.read_runtime(name) is not None:
            raise StoreError(f"network '{name}' is active; `virtnet net-destroy {name}` first")
        nets.remove(name)


def list_rows(store, all_networks):
    """net-list rows: (name, state, autostart, persistent), as virsh prints them."""
    from virtnet.network import runner

    nets = files(store)
    with store.lock():
        runner.reap(store)
    active = set(nets.running_names())
    rows = []
    for name in nets.names():
        state = "active" if name in active else "inactive"
        if state == "active" or all_networks:
            rows.append((name, state, "yes" if nets.autostart(name) else "no", "yes"))
    return rows


def info(store, name):
    """net-info's lines, as virsh's."""
    from virtnet.network import runner

    network = load_defined(store, name).network
    nets = files(store)
    with store.lock():
        runner.reap(store)
    active = nets.read_runtime(name) is not None
    rows = [("Name:", network.name), ("UUID:", network.uuid), ("Active:", "yes" if active else "no"),
            ("Persistent:", "yes"), ("Autostart:", "yes" if nets.autostart(name) else "no"),
            ("Bridge:", network.bridge_name or "-")]
    return "".join(f"{key:<15} {value}\n" for key, value in rows)


def set_autostart(store, name, on):
    with store.lock():
        nets = files(store)
        nets.read(name)  # "no network named ..."
        nets.set_autostart(name, on)
