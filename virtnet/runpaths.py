"""Where a running domain's files live (QMP socket, QEMU log, passt socket and pid file).

Pure path arithmetic, so xml2argv can print the same paths start will use without touching disk.
"""

import os
import re
from pathlib import Path

# An absolute path as pathlib writes it: no empty or '.' parts, no trailing slash.
_normalized = re.compile(r"(?:/(?!\.(?:/|$))[^/]+)+").fullmatch


def _join(base, name):
    """str(Path(BASE) / NAME), without building Paths when the text joined is already as pathlib
    writes it: pathlib's parsing was ~5 % of xml2argv's own work per domain."""
    base = os.fspath(base)
    joined = f"{base}/{name}"
    return joined if base and _normalized(joined) else str(Path(base) / name)


class DomainPaths:
    """The places as Paths (start creates them), and as text for command lines (`*_text`)."""

    def __init__(self, runtime_dir, name):
        self.dir_text = _join(runtime_dir, name)

    @property
    def dir(self):
        return Path(self.dir_text)

    def below_text(self, *names):
        """The path NAME/... below the domain's directory, as text (str(self.dir / NAME / ...))."""
        text = self.dir_text
        for name in names:
            text = _join(text, name)
        return text

    @property
    def qmp(self):
        return Path(self.qmp_text)

    @property
    def qmp_text(self):
        return self.below_text("qmp.sock")

    @property
    def log(self):
        return self.dir / "qemu.log"

    @property
    def passt_dir(self):
        return Path(self.passt_dir_text)

    @property
    def passt_dir_text(self):
        # Its own directory: passt started by root drops to user nobody before it binds its socket
        # and writes its pid file, so this one is handed to nobody (virtnet.host.passt).
        return self.below_text("passt")

    def passt_socket(self, alias):
        return Path(self.passt_socket_text(alias))

    def passt_socket_text(self, alias):
        return _join(self.passt_dir_text, f"{alias}.socket")

    def passt_pid(self, alias):
        return self.passt_dir / f"{alias}.pid"


def default_state_dir() -> Path:
    """$VIRTNET_STATE_DIR; else /var/lib/virtnet for root; else the XDG data home's virtnet."""
    explicit = os.environ.get("VIRTNET_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/virtnet")
    return _xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share") / "virtnet"


def default_runtime_dir() -> Path:
    """$VIRTNET_RUNTIME_DIR; else /run/virtnet for root; else $XDG_RUNTIME_DIR/virtnet; else
    <state dir>/run. Holds sockets, so it should have a short path."""
    explicit = os.environ.get("VIRTNET_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/virtnet")
    xdg = _xdg_dir("XDG_RUNTIME_DIR", None)
    if xdg is not None:
        return xdg / "virtnet"
    return default_state_dir() / "run"


def _xdg_dir(variable, fallback):
    # The XDG base directory spec says to ignore empty and relative values.
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else fallback
