"""Every ```console block of README.md is run and its output compared, so the README cannot drift.

The convention, which README.md follows:

- A ```console block is a shell session: a user's when its first line is `$ COMMAND`, root's when
  it is `# COMMAND`, and then the lines with that prompt are its commands. The lines after a
  command, up to the next one, are what it prints: its standard output, then its standard error.
  Trailing spaces are ignored. In an expected line `…` stands for any text, and a line that is only
  `…` for any number of lines.
- Output quoted without a command (a message, a guest's report) is in a ```text block, not here.
- The blocks of one section (everything under one `##`/`###` heading) are one session, run in
  order: a later block may use what an earlier one made.
- A section whose commands boot the tiny guest (examples/web.xml) gets it built and linked first,
  as `make guest` does.
- A section that writes qemu-bridge-helper's ACL (/etc/qemu/bridge.conf) has the file to itself
  meanwhile (tests/test_bridge_helper.py's `bridge_conf`), and the one there before back afterwards.

How a session runs, so that it is the reader's and touches nothing else:

- in one bash, from a fresh folder holding links to the repository's examples/ and testdata/ (the
  paths read as in the README; what a block writes stays in the folder), with .venv/bin first in
  PATH, as after `make demo` and `. .venv/bin/activate`;
- with this test's own state and runtime dirs (VIRTNET_STATE_DIR, VIRTNET_RUNTIME_DIR), which the
  output shows as root's defaults, /var/lib/virtnet and /run/virtnet, as the README does;
- as root in a fresh network namespace (`ip netns exec`), where taps and QEMU live and die; `NS`
  in a command is that namespace, `sudo ` is dropped, and the user `alice` is one this test
  creates (hostcases' `unprivileged_user`). Without root every section skips, saying so;
- with COLUMNS=80, so that usage lines wrap as the README shows them.
"""

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from hostcases import REPO, kill, qemu_pids
from test_bridge_helper import bridge_conf

__all__ = ["bridge_conf"]  # a fixture these tests use

README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
SHOWN_STATE, SHOWN_RUNTIME = "/var/lib/virtnet", "/run/virtnet"
TIMEOUT = 180

GUEST_EXAMPLES = ("examples/web.xml", "examples/quickstart.xml")  # they boot the tiny guest (`make guest`)
BRIDGE_ACL = "/etc/qemu/bridge.conf"  # qemu-bridge-helper's ACL: a section that writes it owns it meanwhile


class Block:
    def __init__(self, section, line, commands):
        self.section, self.line, self.commands = section, line, commands  # [(prompt, command, expected)]


def console_blocks(text):
    """{section heading: [Block]} of every ```console block, in order."""
    sections, heading, block, start = {}, None, None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if block is None:
            if line.startswith("#") and re.match(r"#{2,3} ", line):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```console":
                block, start = [], number
            continue
        if line.strip() == "```":
            commands = []
            prompt = block[0][:2] if block and block[0][:2] in ("$ ", "# ") else None
            for entry in block:
                match = prompt and entry.startswith(prompt) and re.match(r"([$#]) (.*)", entry)
                if match:
                    commands.append((match.group(1), match.group(2), []))
                elif commands:
                    commands[-1][2].append(entry)
                else:
                    NOT_SESSIONS.append(start)
                    break
            sections.setdefault(heading, []).append(Block(heading, start, commands))
            block = None
        else:
            block.append(line)
    return sections


NOT_SESSIONS = []  # lines of ```console blocks that do not start with a command
SECTIONS = console_blocks(README.read_text())


def test_every_console_block_is_a_session():
    assert not NOT_SESSIONS, (f"README.md:{NOT_SESSIONS}: a ```console block starts with a command ($ or #); "
                              "quoted output goes in a ```text block")


def matches(expected, actual):
    """Whether ACTUAL lines are EXPECTED lines, `…` matching any text (a lone `…`: any lines)."""
    if not expected:
        return not actual
    head = expected[0]
    if head.strip() == "…":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    pattern = ".*".join(re.escape(part) for part in head.split("…"))
    return bool(actual) and re.fullmatch(pattern, actual[0]) is not None and matches(expected[1:], actual[1:])


@pytest.mark.parametrize("heading", list(SECTIONS), ids=lambda h: re.sub(r"\W+", "-", h).strip("-"))
def test_readme_console_section(heading, tmp_path, request):
    if os.geteuid() != 0:
        pytest.skip(f"`## {heading}`: runs in a network namespace of its own, which needs root")
    if not (VENV_BIN / "virtnet").exists():
        pytest.fail("no .venv/bin/virtnet: the README's examples come after `make demo`, which creates it",
                    pytrace=False)
    blocks = SECTIONS[heading]
    commands = [entry for block in blocks for entry in block.commands]
    wants_alice = any("alice" in command for _, command, _ in commands)
    user = request.getfixturevalue("unprivileged_user") if wants_alice else "alice"
    if any(BRIDGE_ACL in command for _, command, _ in commands):
        from test_bridge_helper import real_helper

        real_helper()  # skips, saying why, where there is none
        request.getfixturevalue("bridge_conf")(None)  # none until the section writes it; restored after
    if any(example in command for _, command, _ in commands for example in GUEST_EXAMPLES):
        request.getfixturevalue("tiny_guest")  # built once per run
        from conftest import load_tool

        load_tool("tiny-guest.py").ensure_image(link=True)  # what `make guest` does: the examples' kernel paths

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    for name in ("examples", "testdata"):
        (work / name).symlink_to(REPO / name)
    state = tmp_path / "state"
    runtime = Path(tempfile.mkdtemp(prefix="vnt-", dir="/tmp"))  # short: QMP's socket path is limited
    runtime.chmod(0o711)  # as /run/virtnet: passt, run as nobody, must reach its folder in it
    ns = f"vnt-{uuid.uuid4().hex[:10]}"

    def local(text):
        text = re.sub(r"\bNS\b", ns, text)
        return re.sub(r"\balice\b", user, text)

    script = ["set +e", f"cd {work}"]
    for index, (_, command, _) in enumerate(commands):
        command = local(re.sub(r"(^|[;&|]\s*)sudo ", r"\1", command))
        script.append(f"{{ {command}\n}} >{out}/{index}.out 2>{out}/{index}.err </dev/null")
    script.append("exit 0")  # each command's output is compared, not the last one's status
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIRTNET_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", VIRTNET_STATE_DIR=str(state),
               VIRTNET_RUNTIME_DIR=str(runtime), COLUMNS="80")  # usage lines wrap as on an 80-column terminal

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "bash", "-c", "\n".join(script)], env=env, timeout=TIMEOUT,
                       check=True)
        for index, (prompt, command, expected) in enumerate(commands):
            printed = (out / f"{index}.out").read_text() + (out / f"{index}.err").read_text()
            printed = printed.replace(str(state), SHOWN_STATE).replace(str(runtime), SHOWN_RUNTIME)
            actual = [line.rstrip() for line in printed.splitlines()]
            wanted = [local(line).rstrip() for line in expected]
            assert matches(wanted, actual), (
                f"README.md `## {heading}`: `{prompt} {command}` printed\n" + "\n".join(actual)
                + "\nwhere the README shows\n" + "\n".join(wanted))
    finally:
        for pid in qemu_pids(str(runtime)):
            kill(pid)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)


def test_the_virsh_table_names_every_verb_and_only_those():
    """`## From virsh to virtnet`: its virtnet column names each verb the parser has, and no other."""
    from virtnet.cli import COMMANDS

    text = README.read_text()
    section = re.search(r"^## From virsh to virtnet\n(.*?)(?=^## )", text, re.M | re.S).group(1)
    named = set()
    for row in re.findall(r"^\| (.*) \|$", section, re.M)[2:]:  # after the header and its rule
        cell = row.split(" | ")[1]
        named |= set(re.findall(r"`(?:virtnet )?([a-z][a-z0-9-]*)", cell))
    assert named == set(COMMANDS), (f"missing: {sorted(set(COMMANDS) - named)}; "
                                    f"not verbs: {sorted(named - set(COMMANDS))}")
