"""Domain XML for the benchmarks: mixed-NIC domains for batch conversion and the store, and
domains with N managed ethernet interfaces for tap setup and start."""

import uuid

_NS = uuid.UUID("7b3e0c52-5d0e-4f0c-9a51-3c1f7d2b9e10")

# The rotation of interface kinds in the mixed domains: every kind virtnet renders.
MIXED_KINDS = ("ethernet", "ethernet-unmanaged", "bridge", "user", "server", "client", "mcast", "udp",
               "vhostuser")
_MODELS = ("virtio", "e1000e", "rtl8139", "e1000")


def mac(number, prefix="52:54:00"):
    return f"{prefix}:{(number >> 16) & 255:02x}:{(number >> 8) & 255:02x}:{number & 255:02x}"


def _interface(kind, domain_no, nic_no, serial):
    model = _MODELS[serial % len(_MODELS)]
    address = f"<mac address='{mac(serial)}'/>"
    if kind == "ethernet":
        mtu = "\n      <mtu size='1400'/>" if serial % 2 else ""
        return (f"<interface type='ethernet'>\n      {address}\n      <model type='{model}'/>{mtu}\n"
                "    </interface>")
    if kind == "ethernet-unmanaged":
        return (f"<interface type='ethernet'>\n      {address}\n"
                f"      <target dev='u{domain_no:05d}n{nic_no}' managed='no'/>\n"
                f"      <model type='{model}'/>\n    </interface>")
    if kind == "bridge":
        return (f"<interface type='bridge'>\n      {address}\n      <source bridge='br{serial % 3}'/>\n"
                f"      <model type='{model}'/>\n    </interface>")
    if kind == "user":
        return f"<interface type='user'>\n      {address}\n      <model type='{model}'/>\n    </interface>"
    if kind in ("server", "client"):
        return (f"<interface type='{kind}'>\n      {address}\n"
                f"      <source address='127.0.0.1' port='{20000 + serial % 30000}'/>\n"
                f"      <model type='{model}'/>\n    </interface>")
    if kind == "mcast":
        return (f"<interface type='mcast'>\n      {address}\n"
                f"      <source address='230.0.0.1' port='{20000 + serial % 30000}'/>\n"
                f"      <model type='{model}'/>\n    </interface>")
    if kind == "udp":
        port = 20000 + serial % 30000
        return (f"<interface type='udp'>\n      {address}\n      <source address='127.0.0.1' port='{port}'>\n"
                f"        <local address='127.0.0.1' port='{port + 1}'/>\n      </source>\n"
                f"      <model type='{model}'/>\n    </interface>")
    if kind == "vhostuser":
        return (f"<interface type='vhostuser'>\n      {address}\n"
                f"      <source type='unix' path='/run/vnbench/vhost-{domain_no}-{nic_no}.sock' mode='client'/>\n"
                "      <model type='virtio'/>\n    </interface>")
    raise ValueError(kind)


def _domain(name, interfaces, dom_type="qemu", memory_mib=128):
    body = "\n    ".join(interfaces)
    # vhost-user backends need guest RAM they can map (libvirt's rule, checked by virtnet too).
    shared = ("\n  <memoryBacking>\n    <access mode='shared'/>\n  </memoryBacking>"
              if "type='vhostuser'" in body else "")
    return f"""<domain type='{dom_type}'>
  <name>{name}</name>
  <uuid>{uuid.uuid5(_NS, name)}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>{shared}
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {body}
  </devices>
</domain>
"""


def mixed_domain(number, nics=4, prefix="bench"):
    """Domain NUMBER with NICS interfaces of rotating kinds; MACs and target names are unique across
    all domains, so any set of them can be defined side by side."""
    interfaces = []
    for nic in range(nics):
        serial = number * nics + nic
        interfaces.append(_interface(MIXED_KINDS[serial % len(MIXED_KINDS)], number, nic, serial))
    return _domain(f"{prefix}{number:05d}", interfaces)


def ethernet_domain(name, count, *, mtu=1400, dom_type="qemu", memory_mib=128, model="virtio",
                    spread_buses=False):
    """COUNT managed ethernet interfaces (virtnet creates vnetN taps), virtio, with MAC and MTU.

    Bus 0 has 30 free slots; with spread_buses every NIC gets an explicit address on buses 1, 2, …
    (enough for planning taps; QEMU would also need the PCI bridges)."""
    interfaces = []
    for nic in range(count):
        mtu_xml = f"\n      <mtu size='{mtu}'/>" if mtu else ""
        address = (f"\n      <address type='pci' domain='0x0000' bus='0x{1 + nic // 32:02x}' "
                   f"slot='0x{nic % 32:02x}' function='0x0'/>" if spread_buses else "")
        interfaces.append(f"<interface type='ethernet'>\n      <mac address='{mac(nic, '52:54:01')}'/>\n"
                          f"      <model type='{model}'/>{mtu_xml}{address}\n    </interface>")
    return _domain(name, interfaces, dom_type, memory_mib)


def write_mixed(folder, count, nics=4, prefix="bench"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"{prefix}{number:05d}.xml"
        path.write_text(mixed_domain(number, nics, prefix))
        paths.append(path)
    return paths
