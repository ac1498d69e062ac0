"""Build step: the man page and the bash/zsh completions, generated from virtnet's own argument
parser (argparse-manpage, shtab) when the package is built, and installed with it under
PREFIX/share, where man(1), bash-completion and zsh look. Everything else is in setup.cfg."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED = "build/generated"  # relative: data_files must be
SHARE = {  # install folder under the prefix: the generated file
    "share/man/man1": "virtnet.1",
    "share/bash-completion/completions": "virtnet",
    "share/zsh/site-functions": "_virtnet",
}

# Domain names for NAME arguments, from `virtnet list --all` (its first two lines are the header).
# Completers of defined domains and networks: the first column of `virtnet list --all` and of
# `virtnet net-list --all`, after their two header lines.
_LISTS = {"domains": "virtnet list --all", "networks": "virtnet net-list --all"}
PREAMBLE = {
    "bash": "".join('_shtab_virtnet_%s() {\n  compgen -W "$(%s 2>/dev/null | awk \'NR > 2 {print $1}\')" -- "$1"\n}\n'
                    % (kind, command) for kind, command in _LISTS.items()),
    "zsh": "".join('_virtnet_%s() {\n  local -a names\n  names=(${(f)"$(%s 2>/dev/null | awk \'NR > 2 {print $1}\')"})'
                   '\n  _describe %s names\n}\n' % (kind, command, kind) for kind, command in _LISTS.items()),
}


def _verbs(parser):
    """{verb: its sub-parser}."""
    import argparse

    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _mark_completions(parser):
    """Tell shtab what each argument completes to: files, folders, or defined domains."""
    import shtab

    kinds = {"file": shtab.FILE, "target": shtab.FILE, "dir": shtab.DIRECTORY, "state_dir": shtab.DIRECTORY,
             "runtime_dir": shtab.DIRECTORY, "bridge_helper": shtab.FILE}
    for verb, sub in [(None, parser), *_verbs(parser).items()]:
        names = "networks" if verb and verb.startswith("net-") else "domains"  # what NAME is for this verb
        for action in sub._actions:
            if action.dest == "name":
                action.complete = {"bash": f"_shtab_virtnet_{names}", "zsh": f"_virtnet_{names}"}
            elif action.dest in kinds:
                action.complete = kinds[action.dest]


def _examples(parser):
    """The EXAMPLES section: each verb's `example:` epilog, as `virtnet VERB --help` shows it."""
    lines = []
    for verb, sub in _verbs(parser).items():
        epilog = (sub.epilog or "").strip()
        if epilog.startswith("example"):
            lines += [line.strip() for line in epilog.splitlines()[1:] if line.strip()]
    body = "\n".join(line.replace("\\", "\\e").replace("-", "\\-") for line in lines)
    return f".nf\n{body}\n.fi\n"


def generate(folder):
    """Write the man page and the completions into FOLDER."""
    import shtab
    from argparse_manpage.manpage import Manpage

    sys.path.insert(0, HERE)  # this source tree's virtnet, not an installed one
    try:
        from virtnet import __version__
        from virtnet.cli import build_parser
    finally:
        sys.path.remove(HERE)
    os.makedirs(folder, exist_ok=True)
    os.environ["COLUMNS"] = "80"  # the same page whatever terminal builds it
    parser = build_parser()
    _mark_completions(parser)
    page = Manpage(parser, _data={
        "project_name": "virtnet", "version": __version__, "manual_title": "User Commands",
        "description": "libvirt-style guest networking for QEMU, without libvirtd"})
    page.add_section("examples", ">", _examples(parser))
    outputs = {"virtnet.1": str(page), "virtnet": shtab.complete(parser, "bash", preamble=PREAMBLE),
               "_virtnet": shtab.complete(parser, "zsh", preamble=PREAMBLE)}
    for name, text in outputs.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")


class BuildPy(build_py):
    """build_py, which every build (wheel, editable, sdist's wheel) runs, also generates them."""

    def run(self):
        generate(os.path.join(HERE, GENERATED))
        super().run()


setup(cmdclass={"build_py": BuildPy},
      data_files=[(folder, [f"{GENERATED}/{name}"]) for folder, name in SHARE.items()])
