"""The structure-aware fuzzer (tools/fuzz.py) at `make test` size; `make fuzz` runs 100 000 documents.

Per seed, mutated golden documents go through every conversion in-process (load, xml2xml and its
fixed point, xml2argv with the case's and random options, plan text/json/sh/networkd, `sh -n`);
a sample goes through the real CLI, and a few accepted pre-create scripts run as root in fresh
network namespaces with stub commands. Sizes, on 2 cores well under a minute in all:

  - the fixed seed: 1500 documents in-process, and 250 more with 20 CLI runs and 3 scripts run;
  - a random seed: 1000 documents in-process, and 250 more with 20 CLI runs and 3 scripts run.

The random seed is in the test ids, printed, and in every failure message; VIRTNET_FUZZ_SEED=N
replays it. A failure names the seed and the document index (`python tools/fuzz.py --seed S
--index I` shows, checks and minimises that document) and carries the minimised document.
"""

import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest

from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
fuzz = load_tool("fuzz.py")

FIXED_SEED = 20251126


def _random_seed():
    """VIRTNET_FUZZ_SEED, else one per test run: pytest-xdist's workers share the run's id, so they
    collect the same test ids; without xdist, a fresh random seed."""
    if os.environ.get("VIRTNET_FUZZ_SEED"):
        return int(os.environ["VIRTNET_FUZZ_SEED"])
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:
        return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "big") >> 1
    return random.SystemRandom().randrange(1 << 31)


RANDOM_SEED = _random_seed()
SEEDS = [pytest.param(FIXED_SEED, id=f"fixed-seed-{FIXED_SEED}"),
         pytest.param(RANDOM_SEED, id=f"random-seed-{RANDOM_SEED}")]
IN_PROCESS = {FIXED_SEED: 1500, RANDOM_SEED: 1000}
SAMPLE_DOCUMENTS, CLI_RUNS, SCRIPT_RUNS = 250, 20, 3
SAMPLE_START = 1_000_000  # the sample documents are others than the in-process ones
MINIMISED, MINIMISE_BUDGET = 8, 200  # distinct failures minimised (the others are shown whole), checks each


def _verdict(summary):
    replay = "" if summary.seed == FIXED_SEED else f" (replay: VIRTNET_FUZZ_SEED={summary.seed})"
    return f"fuzzing found failures{replay}:\n{summary.text()}"


@pytest.mark.parametrize("seed", SEEDS)
def test_in_process_documents_are_refused_in_one_line_or_convert_cleanly(seed):
    print(f"fuzz seed {seed}: reproduce with python tools/fuzz.py --seed {seed} --count {IN_PROCESS[seed]}")
    summary = fuzz.run(seed, IN_PROCESS[seed], max_minimise=MINIMISED, minimise_budget=MINIMISE_BUDGET)
    print(summary.text())
    assert not summary.failures, _verdict(summary)
    # The generator stays useful: many documents are accepted, many refused, some reach the script.
    assert summary.count == IN_PROCESS[seed]
    assert 0.2 * summary.count <= summary.accepted <= 0.8 * summary.count, summary.text()
    assert summary.with_taps > 0 and summary.payload_in_script > 0, summary.text()
    assert summary.sh_runs > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_the_cli_agrees_and_generated_scripts_only_create_the_planned_taps(seed):
    print(f"fuzz seed {seed}: reproduce with python tools/fuzz.py --seed {seed} --start {SAMPLE_START} "
          f"--count {SAMPLE_DOCUMENTS} --cli {CLI_RUNS} --netns {SCRIPT_RUNS}")
    summary = fuzz.run(seed, SAMPLE_DOCUMENTS, start=SAMPLE_START, cli=CLI_RUNS, netns=SCRIPT_RUNS,
                       max_minimise=MINIMISED, minimise_budget=MINIMISE_BUDGET)
    print(summary.text())
    assert not summary.failures, _verdict(summary)
    assert summary.cli_runs == CLI_RUNS
    if fuzz.netns_available() is None:
        # As many as asked for, unless the sample holds fewer documents with taps to pre-create.
        assert summary.netns_runs == min(SCRIPT_RUNS, summary.with_taps), summary.text()


# -- the fuzzer itself --------------------------------------------------------------------------------


def test_documents_are_a_pure_function_of_seed_and_index():
    first = [fuzz.generate(7, i) for i in range(200)]
    again = [fuzz.generate(7, i) for i in reversed(range(200))][::-1]
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.ops for c in first] == [c.ops for c in again]
    assert len({c.text for c in first}) == 200
    assert all(c.ops for c in first)
    assert {c.base for c in first} <= {p.stem for p in (REPO / "testdata" / "xml2argv").glob("*.args")}
    assert sum(fuzz.MARKER in c.text or ">P" in c.text for c in first) >= 20  # payloads are common


def test_the_oracle_tells_a_difference(monkeypatch):
    from virtnet import convert
    from virtnet.errors import XMLInputError

    with fuzz.Checker() as checker:
        seed_case = next(c for c in (fuzz.generate(3, i) for i in range(300))
                         if c.base == "net-eth-unmanaged-tap" and checker.check(c).accepted)
        assert checker.check(seed_case).failure is None

        real_xml2xml = convert.xml2xml
        calls = []

        def drifting(loaded):  # a different canonical form every time
            calls.append(1)
            result = real_xml2xml(loaded)
            result.text = result.text.replace("</domain>", f"<!-- {len(calls)} --></domain>")
            return result

        monkeypatch.setattr(convert, "xml2xml", drifting)
        assert checker.check(seed_case).failure.kind == "not-fixed-point"
        monkeypatch.setattr(convert, "xml2xml", real_xml2xml)

        def crash(*args, **kwargs):
            return {}["boom"]

        monkeypatch.setattr(convert, "xml2argv", crash)
        failure = checker.check(seed_case).failure
        assert failure.kind == "crash" and "KeyError" in failure.detail

        class Unescaped(XMLInputError):  # VirtnetError escapes line breaks; a subclass might not
            def __str__(self):
                return "first line\nsecond line"

        def two_lines(*args, **kwargs):
            raise Unescaped("first line")

        monkeypatch.setattr(convert, "xml2argv", two_lines)
        assert checker.check(seed_case).failure.kind == "multiline-error"

        monkeypatch.undo()
        real_plan = convert.plan

        def plan_with(fmt, text):
            def plan(loaded, format="text", **kwargs):
                return convert.Result(text) if format == fmt else real_plan(loaded, format, **kwargs)
            return plan

        monkeypatch.setattr(convert, "plan", plan_with("text", "0  set x\u2028y up\n"))
        assert checker.check(seed_case).failure.kind == "control-in-output"
        monkeypatch.setattr(convert, "plan", plan_with("json", "{"))
        assert checker.check(seed_case).failure.kind == "plan-json"
        monkeypatch.setattr(convert, "plan", plan_with("sh", "#!/bin/sh\nif then fi\n"))
        assert checker.check(seed_case).failure.kind == "sh-syntax"
        monkeypatch.undo()

        # the CLI's output is compared with the in-process one
        verdict = checker.check(seed_case, keep=True)
        verdict.outputs["xml2xml"] += "<!-- not what the CLI prints -->\n"
        failure, runs = fuzz.cli_check(checker, seed_case, "xml2xml", verdict)
        assert runs == 1 and failure.kind == "cli-differs"
        assert fuzz.cli_check(checker, seed_case, "xml2xml") == (None, 1)

    for text in ("a\nb", "a\rb", "a\x85b", "a\u2028b", "a\u2029b"):
        assert fuzz.first_line_break(text), repr(text)
    assert fuzz.first_line_break("a\tb\u202eb") is None
    for char in ("\x01", "\t", "\x7f", "\x9b", "\u202e", "\u2066", "\u061c", "\u2028"):
        assert fuzz.is_control(char), repr(char)
    assert not any(map(fuzz.is_control, "aé名\u00a0\u200b "))
    assert fuzz.argv_words("# run first: x\n/usr/bin/qemu \\\n-name 'a b'\"'\"'c' \\\n-S\n") == [
        "/usr/bin/qemu", "-name", "a b'c", "-S"]


@pytest.mark.skipif(fuzz.netns_available() is not None, reason=str(fuzz.netns_available()))
def test_the_namespace_run_sees_an_injection_and_cleans_up(tmp_path):
    sandbox = fuzz.Sandbox(tmp_path)
    clean = "set -eu\nip tuntap add dev fz0 mode tap user root\n"
    assert sandbox.run_script(clean.replace("ip tuntap", "ip link show dev fz0 >/dev/null 2>&1 || ip tuntap"),
                              ("fz0",)) is None
    injected = (f"set -eu\nip tuntap add dev fz0 mode tap\ntouch x; curl http://example.invalid\n"
                f">{fuzz.MARKER}\n/usr/bin/touch {fuzz.ABS_MARKER}\nip tuntap add dev other mode tap\n")
    problem = sandbox.run_script(injected, ("fz0",))
    assert "files appeared in the script's working directory: ['PWNED']" in problem
    assert f"{fuzz.ABS_MARKER} was created" in problem
    assert "UNEXPECTED touch x" in problem and "UNEXPECTED curl" in problem
    assert "the namespace holds ['fz0', 'lo', 'other'], the plan names ['fz0', 'lo']" in problem
    assert not os.path.exists(fuzz.ABS_MARKER)
    assert sandbox.leftovers() == []
    shutil.rmtree(tmp_path / "stubs")
