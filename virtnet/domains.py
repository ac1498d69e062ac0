"""Defined domains: define/undefine with libvirt's conflict rules, and what list/domiflist show.

A domain's name is the name of its file, domains/NAME.xml: define stores a domain under its <name>,
and every verb finds it by that file name. A file whose <name> says otherwise (copied or renamed by
hand) is listed under its file name with a warning, not skipped: skipping it would drop its uuid,
MACs and target devs from the index, and define would then accept another domain that reuses them
(and one under the <name> inside). Defining it again under the file's name (same uuid) is an update
that makes the two agree; `virtnet undefine FILENAME` removes it.

A stored definition that no longer loads is skipped, with a warning, by the verbs that go through
all of them (list, and define's conflict checks); undefine removes it like any other.
"""

import os
import sys

from virtnet.errors import StoreError, UsageError, VirtnetError


def summarize(domain):
    """What the store's index keeps per domain, so list and conflict checks need no XML parsing:
    uuid, macs and targets are its keys, looked up by define's checks; the rest is what list shows."""
    return {
        "name": domain.name,  # compared with the file's name when the index is rebuilt; not kept
        "uuid": domain.uuid,
        "macs": [i.mac for i in domain.interfaces if i.mac],
        # Only fixed names conflict; '%d' templates and generated names are allocated at start.
        "targets": [i.target_dev for i in domain.interfaces if i.target_dev and "%" not in i.target_dev],
        "interfaces": [i.type for i in domain.interfaces],
    }


def summarize_xml(text):
    from virtnet.conf.load import load_text

    return summarize(load_text(text, "stored definition").domain)


def start_refusals(loaded, runtime_dir):
    """What `start` will refuse in a domain define accepts, as warnings, so that define says so at
    once rather than start later: each interface of a type virtnet reads and writes but does not
    run yet; else what building QEMU's command line refuses (as validate does; RUNTIME_DIR: where
    the domain's generated sockets go)."""
    from virtnet.conf import iftypes

    warnings = []
    for iface in loaded.domain.interfaces:
        if not iftypes.kind(iface.type).driven:
            where = f"{loaded.filename}:{iface.line}" if iface.line else loaded.filename
            warnings.append(f"{where}: <interface type='{iface.type}'> is not supported yet by start and "
                            f"xml2argv: `virtnet start {loaded.domain.name}` will refuse it; supported: "
                            f"{', '.join(iftypes.DRIVEN)}")
    if not warnings:
        from virtnet import convert

        try:
            convert.check(loaded, runtime_dir=runtime_dir)
        except VirtnetError as e:
            warnings.append(f"{e}; `virtnet start {loaded.domain.name}` will refuse it")
    return warnings


def unknown_networks(store, loaded):
    """One warning per <interface type='network'> whose network is not defined: start will refuse it
    until `virtnet net-define` has it (libvirt's define does not check either; its start does)."""
    from virtnet.network.defs import files

    nets = files(store)
    warnings = []
    for iface in loaded.domain.interfaces:
        network = iface.source.network if iface.type == "network" and iface.source is not None else None
        if network and not nets.exists(network):
            where = f"{loaded.filename}:{iface.line}" if iface.line else loaded.filename
            warnings.append(f"{where}: network '{network}' is not defined: `virtnet start {loaded.domain.name}` "
                            f"will refuse it until `virtnet net-define` and `virtnet net-start {network}`")
    return warnings


def refuse_file_as_name(store, verb, name):
    """`virtnet start FILE`, as a virsh user may type it: a file where a defined domain's name belongs
    (and no domain has that name) is a usage error that names the verbs taking a file."""
    if ("/" in name or name.endswith(".xml") or os.path.isfile(name)) and name not in store.names():
        what = "is a file" if os.path.isfile(name) else "looks like a file name"
        raise UsageError(f"{verb} takes a defined domain's name, and '{name}' {what}: `virtnet define {name}` "
                         f"keeps it and `virtnet {verb} NAME` then starts it, or `virtnet create {name}` "
                         "starts it without keeping it")


def open_store(state_dir=None, runtime_dir=None):
    from virtnet.runpaths import default_runtime_dir, default_state_dir
    from virtnet.store import Store

    return Store(state_dir or default_state_dir(), runtime_dir or default_runtime_dir(), summarize=summarize_xml)


def _conflicts(store, name, summary):
    """Refuse what libvirt refuses, looking each key up in the store's index. Of several conflicts,
    the one with the first other domain (by name) is reported, and for one domain its uuid before
    a MAC before a target dev, as when the domains are read one by one. Returns the summary stored
    under this name, or None when the name is new."""
    mine = store.summary_of(name)
    found = []  # (other domain, rank, key, message)
    if mine is not None and mine.get("uuid") != summary["uuid"]:
        found.append((name, 0, "", (
            f"domain '{name}' is already defined with uuid {mine.get('uuid')}; to update it, keep "
            f"that uuid (or omit <uuid>), or `virtnet undefine {name}` first")))
    for other in store.owners_of_uuid(summary["uuid"]):
        if other != name:
            found.append((other, 1, "", f"uuid {summary['uuid']} is already used by domain '{other}'; "
                                        "give this domain its own <uuid>"))
    for mac, owners in store.owners_of_macs(summary["macs"]).items():
        found.extend((other, 2, mac, f"MAC address {mac} is already used by domain '{other}'; "
                                     "choose another <mac address>") for other in owners if other != name)
    for dev, owners in store.owners_of_targets(summary["targets"]).items():
        found.extend((other, 3, dev, f"target dev '{dev}' is already used by domain '{other}'; "
                                     "choose another <target dev>") for other in owners if other != name)
    if found:
        raise StoreError(min(found)[3])
    return mine


def define(store, loaded):
    """Store a loaded domain (canonical form). Returns True when it was new, False for an update."""
    from virtnet.conf.format import format_domain

    domain = loaded.domain
    summary = summarize(domain)
    text = format_domain(domain)
    with store.lock():
        for name, warning, skipped in store.problems():
            if skipped and name != domain.name:  # the conflict checks cannot see its keys
                print(f"virtnet: warning: {warning}", file=sys.stderr)
        try:
            existing = _conflicts(store, domain.name, summary)
        except StoreError as e:
            raise e.located(loaded.filename) from None
        store.write_domain(domain.name, text, summary)
    return existing is None


def undefine(store, name, nvram=None):
    """Forget a stopped domain. The caller reaps dead domains first (runner.reap_dead), so that one
    whose QEMU died counts as stopped. Its file or its index entry is enough: a definition that no
    longer loads, or an index entry whose file was deleted by hand, is removed too.

    A UEFI guest's variable store (its NVRAM file, made by its first start) is its state, so as
    libvirt does, undefine refuses to leave it behind unasked: NVRAM True removes it with the
    definition, False keeps it, None refuses while it exists."""
    from virtnet import livestate

    with store.lock():
        if livestate.load(store, name) is not None:  # a damaged record: that error, in doubt
            raise StoreError(f"domain '{name}' is running; `virtnet destroy {name}` first")
        variables = _nvram_file(store, name)
        if variables is not None and nvram is None:
            raise StoreError(f"domain '{name}' has a UEFI variable store, {variables}; `virtnet undefine {name} "
                             "--nvram` removes it with the definition, `--keep-nvram` keeps it")
        store.remove_domain(name)  # "no domain named …" when there is neither
        if variables is not None and nvram:
            os.unlink(variables)


def _nvram_file(store, name):
    """The NVRAM file of defined domain NAME when it exists, else None (a definition that no longer
    loads has none virtnet can find)."""
    from virtnet.qemu.machine import nvram_path

    try:
        path = nvram_path(load_defined(store, name).domain, store.state_dir)
    except VirtnetError:
        return None
    return path if path is not None and os.path.isfile(path) else None


def changed_definition(store, name, change):
    """Domain NAME's definition with CHANGE(domain) applied to its model, loaded again (so checked by
    the whole pipeline) and ready for define. The verbs that change a definition (attach, detach,
    domif-setlink, domiftune) all go through here. A domain started by create has none to change."""
    from virtnet import livestate
    from virtnet.conf.format import format_domain
    from virtnet.conf.load import load_text
    from virtnet.conf.xmlmodel import thaw

    store.read_domain(name)  # no such domain: that error first
    if livestate.is_transient(store, name):
        raise StoreError(f"domain '{name}' was started by create and has no definition to change; change the "
                         f"running guest (--live), or `virtnet define` it first")
    domain = thaw(load_defined(store, name).domain)
    change(domain)
    return load_text(format_domain(domain), f"{store.state_dir}/domains/{name}.xml")  # generated aliases dropped


def load_defined(store, name):
    from virtnet.conf.load import load_text

    return load_text(store.read_domain(name), f"{store.state_dir}/domains/{name}.xml")


def interface_rows(domain):
    """domiflist rows: (interface, type, source, model, MAC), like `virsh domiflist`. For the live
    XML of a running domain, the interface is the tap in use."""
    rows = []
    for iface in domain.interfaces:
        src = iface.source
        if iface.type == "bridge":
            source = src.bridge
        elif iface.type == "network":
            source = src.network
        elif iface.type == "vhostuser":
            source = src.path
        elif iface.kind.socket:
            source = f"{src.address or ''}:{src.port}"
        elif iface.type == "user":
            source = "passt" if iface.uses_passt else "slirp"
        else:
            source = getattr(src, "dev", None) if src is not None else None
        ifname = iface.target_dev or "-"
        rows.append((ifname, iface.type, source or "-", iface.model or "-", iface.mac or "-"))
    return rows


def table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]) + "\n"
