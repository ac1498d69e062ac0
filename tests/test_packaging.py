"""virtnet as a user installs it: a wheel built from a copy of the sources, installed outside the
repository in the three layouts people use, and run from a folder of its own.

- a fresh venv (`python -m venv`, then pip install);
- `pip install --user` with the system's python3 (PYTHONUSERBASE: the data is not under sys.prefix);
- `pip install --prefix` (the layout of a /usr/local install: again not under sys.prefix).

Each installed virtnet must import from where it was installed, find its RelaxNG grammar and the
plan's templates as package data (validate, a schema refusal in plain words, plan --format sh), and
have its man page and bash/zsh completions in PREFIX/share. The wheel is built once with
--no-build-isolation and installed with --no-deps --no-index, so nothing is downloaded; the run-time
dependencies (lxml, pyroute2, jinja2) come from this interpreter's site-packages. About 10-20 s.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from virtnet import cli

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "net-eth-unmanaged-tap.xml"
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "virtnet")
BUILD_MODULES = ("setuptools", "wheel", "shtab", "argparse_manpage")
SITE = sysconfig.get_path("platlib")  # lxml, pyroute2 and jinja2, for the installed virtnet to import
PY_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"

# What every installed virtnet must ship outside its package, relative to its prefix.
SHARED_FILES = ("share/man/man1/virtnet.1", "share/bash-completion/completions/virtnet",
                "share/zsh/site-functions/_virtnet")


def run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    missing = [m for m in BUILD_MODULES if subprocess.run([sys.executable, "-c", f"import {m}"]).returncode]
    assert not missing, f"the build needs {', '.join(missing)} in {sys.executable}'s environment: `make test-deps` installs them"
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:  # a copy: the build writes build/ and *.egg-info next to setup.cfg
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy(path, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(work / "dist"), str(source)], cwd=work)
    (built,) = (work / "dist").glob("virtnet-*.whl")
    return built


def _domain_files(folder):
    folder.mkdir()
    shutil.copy(SEED, folder / "seed.xml")
    text = SEED.read_text().replace("</devices>", "<frobnicator/></devices>")
    (folder / "bad.xml").write_text(text)
    return folder


def check_installed(virtnet, python, env, prefix, workdir):
    """VIRTNET (the installed console script) works from WORKDIR, a folder outside the repository,
    with the package, its grammar, its templates and its shared files all under PREFIX."""
    env = {k: v for k, v in env.items() if not k.startswith("VIRTNET_") and k != "PYTHONSAFEPATH"}
    where = run([python, "-c", "import virtnet, virtnet.conf.schema as s; print(virtnet.__file__); "
                 "print(s.schema_dir())"], env=env, cwd=workdir).stdout.split()
    for path in where:
        assert path.startswith(str(prefix) + "/"), f"{path} is not from the install in {prefix}"
    assert Path(where[1], "domain.rng").is_file()

    domains = _domain_files(workdir / "domains")
    run([virtnet, "validate", "domains/seed.xml"], env=env, cwd=workdir)
    bad = subprocess.run([virtnet, "validate", "domains/bad.xml"], capture_output=True, text=True, env=env,
                         cwd=workdir)
    assert bad.returncode == 1, bad
    assert bad.stderr.startswith("virtnet: error: domains/bad.xml:") and "unknown element <frobnicator>" \
        in bad.stderr, bad.stderr
    script = run([virtnet, "plan", "--format", "sh", "--owner", "root", str(domains / "seed.xml")], env=env,
                 cwd=workdir).stdout
    assert 'ip tuntap add dev mytap0 mode tap user "$OWNER" vnet_hdr' in script, script

    for name in SHARED_FILES:
        assert (prefix / name).is_file(), f"{name} is not installed in {prefix}"


def test_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         "--no-index", str(wheel)])
    (venv / "lib" / PY_VERSION / "site-packages" / "deps.pth").write_text(SITE + "\n")
    check_installed(str(venv / "bin" / "virtnet"), str(venv / "bin" / "python"), os.environ, venv, tmp_path)
    check_man_page_and_completions(venv, tmp_path)


def check_man_page_and_completions(prefix, workdir):
    """The installed man page documents every verb with an example, and both completions offer every
    verb; bash's completes a verb's prefix and NAME from the defined domains."""
    verbs = list(cli.COMMANDS)
    man = (prefix / "share/man/man1/virtnet.1").read_text()
    examples = man[man.index(".SH EXAMPLES"):]
    for verb in verbs:
        roff = verb.replace("-", "\\-")  # roff's hyphen
        assert f"COMMAND \\fI\\,'virtnet {roff}'" in man, f"the man page has no section for {verb}"
        assert f"virtnet {roff} " in examples, f"the man page has no example of {verb}"
    bash = (prefix / "share/bash-completion/completions/virtnet").read_text()
    offered = re.search(r"^_shtab_virtnet_subparsers=\((.*)\)$", bash, re.M).group(1).split()
    assert sorted(offered) == sorted(verbs)
    zsh = (prefix / "share/zsh/site-functions/_virtnet").read_text()
    assert zsh.startswith("#compdef virtnet")
    for verb in verbs:
        assert re.search(rf"^\s*{verb}:'", zsh, re.M), f"zsh completion does not offer {verb}"
        assert re.search(rf"^\s*{verb}\) _arguments ", zsh, re.M), f"zsh completion has no arguments of {verb}"

    state = workdir / "state"
    env = {**os.environ, "VIRTNET_STATE_DIR": str(state), "PATH": f"{prefix}/bin:{os.environ['PATH']}"}
    run([prefix / "bin" / "virtnet", "define", str(SEED)], env=env)
    script = f"""source {prefix}/share/bash-completion/completions/virtnet
complete() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
  _shtab_virtnet virtnet "${{@: -1}}" "${{@: -2:1}}"; echo "${{COMPREPLY[*]}}"; }}
complete virtnet undef
complete virtnet start ''
"""
    lines = run(["bash", "-c", script], env=env).stdout.splitlines()
    assert lines == ["undefine", "QEMUGuest1"], lines


def test_prefix_install_like_usr_local(wheel, tmp_path):
    prefix = tmp_path / "local"
    # --ignore-installed: else pip uninstalls the virtnet of the environment it runs in.
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
         "--prefix", str(prefix), str(wheel)])
    assert (Path(sys.executable).parent / "virtnet").exists(), "the installing environment lost its virtnet"
    site = prefix / "lib" / PY_VERSION / "site-packages"
    env = {**os.environ, "PYTHONPATH": f"{site}:{SITE}"}
    check_installed(str(prefix / "bin" / "virtnet"), sys.executable, env, prefix, tmp_path)


def test_user_install(wheel, tmp_path):
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = system and subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                                        capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"no system python3 of this version ({sys.version_info[:2]}) to install --user with")
    if subprocess.run([system, "-m", "pip", "--version"], capture_output=True).returncode:
        reason = f"{system} has no pip (Debian: apt install python3-pip, which `make test-deps` installs as root)"
        if os.geteuid() == 0:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    userbase = tmp_path / "user"
    env = {**os.environ, "PYTHONUSERBASE": str(userbase)}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    # --break-system-packages: Debian refuses --user installs by default (PEP 668); this one only
    # writes into the temporary PYTHONUSERBASE.
    run([system, "-m", "pip", "install", "-q", "--user", "--break-system-packages", "--no-deps", "--no-index",
         str(wheel)], env=env)
    env["PYTHONPATH"] = SITE  # the run-time dependencies only: it holds no virtnet package
    check_installed(str(userbase / "bin" / "virtnet"), system, env, userbase, tmp_path)


def test_make_demo_installs_again_only_when_the_install_inputs_change(tmp_path):
    """`make demo` twice: the second run only converts (no pip), until setup or the CLI changes."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    inputs = ["setup.py", "setup.cfg", "pyproject.toml", "virtnet/cli.py", ".venv/bin/python"]
    for name in inputs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (1_000_000_000, 1_000_000_000))
    (tmp_path / ".venv" / ".virtnet-installed").touch()

    def dry_run():
        # As a reader runs it, not as a sub-make of `make test` (which would announce its directory).
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        return run(["make", "-n", "--no-print-directory", "demo"], cwd=tmp_path, env=env).stdout.splitlines()

    assert dry_run() == [".venv/bin/virtnet xml2argv examples/net-eth-unmanaged-tap.xml"]
    (tmp_path / "virtnet" / "cli.py").touch()  # the man page and completions come from the parser
    planned = dry_run()
    assert any("pip install -q --no-build-isolation -e '.'" in line for line in planned), planned
