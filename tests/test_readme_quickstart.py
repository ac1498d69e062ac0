"""The README's Quickstart, run as written, so that it cannot drift from what virtnet does.

The commands are the fenced ```sh block under the `## Quickstart` heading of README.md. They run
in one bash (as root, from the repository, as a reader pastes them), with three things made this
test's own so that it neither touches nor collides with anything else: the network namespace
(`vnt-demo` becomes a fresh name), the guest's serial file (a copy of examples/quickstart.xml
names one in the test's temp dir) and virtnet's state and runtime dirs (VIRTNET_STATE_DIR,
VIRTNET_RUNTIME_DIR). One TCG guest: about 10-30 s.
"""

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import require_host_privileges
from hostcases import REPO, kill, qemu_pids, require_qemu

README = REPO / "README.md"
EXAMPLE = "examples/quickstart.xml"
NETNS = "vnt-demo"
SERIAL = "/tmp/virtnet-quickstart.serial"
TAP = "mytap0"
TIMEOUT = 400  # `make guest` may download and build (~5 s), the guest may boot slowly under TCG


def quickstart_commands(text):
    """The lines of the first ```sh block under the `## Quickstart` heading."""
    match = re.search(r"^## Quickstart\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "README.md has no `## Quickstart` section"
    block = re.search(r"^```sh\n(.*?)^```$", match.group(1), re.M | re.S)
    assert block, "the README's Quickstart has no ```sh block"
    return block.group(1)


def substitute(text, old, new):
    assert old in text, f"the quickstart no longer mentions {old!r}; update this test with it"
    return text.replace(old, new)


def test_quickstart_block_is_where_the_issue_wants_it():
    """Right after the two set-up commands, which stay first."""
    text = README.read_text()
    first_block = re.search(r"^```sh\n(.*?)^```$", text, re.M | re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo"), first_block
    assert first_block.splitlines()[1].startswith("make test"), first_block
    after = text[text.index(first_block) + len(first_block):]
    assert re.match(r"```\n\n## Quickstart\n", after), after[:200]
    commands = quickstart_commands(text)
    assert len(commands.splitlines()) <= 14, commands


def test_readme_quickstart_runs_as_written(tmp_path):
    require_host_privileges()
    require_qemu()
    if not (REPO / ".venv" / "bin" / "virtnet").exists():
        pytest.skip("no .venv/bin/virtnet: the quickstart comes after `make demo`, which creates it")

    ns = f"vnt-{uuid.uuid4().hex[:10]}"
    serial = tmp_path / "quickstart.serial"
    example = (REPO / EXAMPLE).read_text()
    ping_target = re.search(r"\btg\.ping=([0-9.]+)", example).group(1)
    xml = tmp_path / "quickstart.xml"
    xml.write_text(substitute(example, SERIAL, str(serial)))

    script = quickstart_commands(README.read_text())
    for old, new in ((NETNS, ns), (SERIAL, str(serial)), (EXAMPLE, str(xml))):
        script = substitute(script, old, new)

    state = tmp_path / "state"
    runtime = Path(tempfile.mkdtemp(prefix="vnt-", dir="/tmp"))  # short: QMP's socket path is limited
    # A shell as the reader has it: no virtnet or make settings of this run (the README's paths are
    # the Makefile's defaults), only this test's own state and runtime dirs.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIRTNET_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH")}
    env.update(VIRTNET_STATE_DIR=str(state), VIRTNET_RUNTIME_DIR=str(runtime))
    try:
        result = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT)
        out = result.stdout
        where = f"script:\n{script}\nstdout:\n{out}\nstderr:\n{result.stderr[-4000:]}"
        assert result.returncode == 0, f"the quickstart failed ({result.returncode})\n{where}"

        report = [line.rstrip("\r") for line in out.splitlines() if line.startswith("TG: ")]
        assert any(re.fullmatch(rf"TG: ping {re.escape(ping_target)} ok tries \d+", line) for line in report), where
        assert report[-1] == "TG: done", where
        lines = out.splitlines()
        destroyed = lines.index("Domain 'quickstart' destroyed")
        assert any(line.split()[:1] == [TAP] for line in lines[destroyed + 1:]), \
            f"{TAP} was not listed after destroy\n{where}"

        # The cleanup line left nothing behind.
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        assert not serial.exists()
        assert not qemu_pids(str(runtime))
    finally:
        for pid in qemu_pids(str(runtime)):
            kill(pid)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)
