"""Where an active network's files live, and the identifiers derived from its name.

A network's runtime directory is RUNTIME_DIR/.networks/ID: domains use RUNTIME_DIR/NAME, and no
domain name starts with '.', so the two never meet. ID is the name itself when it is made of
letters, digits, '.', '_' and '-', and otherwise those characters with a hash of the real name
(a name with a quote or a space never reaches dnsmasq's configuration or an nft command)."""

import hashlib
import re
from pathlib import Path

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def safe_id(name, limit=40):
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:limit]
    if safe != name:
        safe = f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def table_name(name):
    """The network's own nftables table (in family inet): virtnet-net-ID."""
    return f"virtnet-net-{safe_id(name)}"


class NetworkPaths:
    def __init__(self, runtime_dir, name):
        self.dir = Path(runtime_dir) / ".networks" / safe_id(name)

    @property
    def conf(self):
        return self.dir / "dnsmasq.conf"

    @property
    def hostsfile(self):
        return self.dir / "dnsmasq.hostsfile"

    @property
    def addnhosts(self):
        return self.dir / "dnsmasq.addnhosts"

    @property
    def leases(self):
        return self.dir / "dnsmasq.leases"

    @property
    def pid(self):
        return self.dir / "dnsmasq.pid"
