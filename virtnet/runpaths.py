"""Where a running domain's files live (QMP socket, QEMU log, passt socket and pid file).

Pure path arithmetic, so xml2argv can print the same paths start will use without touching disk.
"""

from pathlib import Path


class DomainPaths:
    def __init__(self, runtime_dir, name):
        self.dir = Path(runtime_dir) / name

    @property
    def qmp(self):
        return self.dir / "qmp.sock"

    @property
    def log(self):
        return self.dir / "qemu.log"

    @property
    def passt_dir(self):
        # Its own directory: passt started by root drops to user nobody before it binds its socket
        # and writes its pid file, so this one is handed to nobody (virtnet.host.passt).
        return self.dir / "passt"

    def passt_socket(self, alias):
        return self.passt_dir / f"{alias}.socket"

    def passt_pid(self, alias):
        return self.passt_dir / f"{alias}.pid"
