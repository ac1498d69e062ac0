"""Running nftables' `nft -f -`: the one place virtnet hands nft a ruleset (a domain's guest filter,
a network's forwarding table) and deletes a table of its own."""

import os
import shutil
import subprocess

from virtnet.errors import HostError

NFT_TIMEOUT = 30


def load(script, what):
    """Run SCRIPT through `nft -f -`; HostError `cannot WHAT: …` with nft's first line when it fails."""
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if nft is None:
        raise HostError(f"cannot {what}: needs nftables' `nft` command (Debian: apt install nftables)")
    try:
        result = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise HostError(f"cannot {what}: nft did not finish within {NFT_TIMEOUT} s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise HostError(f"cannot {what}: {detail}")


def delete_table(family, table):
    """Delete TABLE; one already gone (with its namespace, or by hand) is fine."""
    load(f"table {family} {table}\ndelete table {family} {table}\n", f"remove the nftables table {family} {table}")
