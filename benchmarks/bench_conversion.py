"""Conversion: one `virtnet xml2argv FILE` process against interpreter floors, and a batch of 1000
generated domains converted in one process against a parse + validate floor.

Driver entry points: single(ctx), batch(ctx). Child modes (run by the driver, print JSON):
  bench_conversion.py phases-single FILE     where one conversion's time goes, step by step
  bench_conversion.py schema-once FILE...    how often the RelaxNG grammar is compiled
  bench_conversion.py modules FILE           sys.modules after xml2argv
  bench_conversion.py phases-batch DIR       per-domain cost of each pipeline stage
  bench_conversion.py reads DIR              per-domain model reads (tree look-ups, read-once hits)
  bench_conversion.py inproc DIR VARIANT     xml2argv DIR in-process, optionally with an experiment
The batch floor is benchmarks/floor.py (lxml only).
"""

import hashlib
import importlib
import io
import json
import pstats
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import domaingen  # noqa: E402

SEED = "examples/net-eth-unmanaged-tap.xml"
FORBIDDEN = ("pyroute2", "jinja2")


def seed_file(workdir):
    return benchlib.REPO / SEED


# ------------------------------------------------------------------ single conversion


BYTECODE_ENVS = {
    "bytecode cached": "`PYTHONPYCACHEPREFIX` points at a temporary folder, filled by the warm-up runs "
                       "(as an installed package, or any checkout without `PYTHONDONTWRITEBYTECODE`)",
    "PYTHONDONTWRITEBYTECODE=1, bytecode from make": "`PYTHONDONTWRITEBYTECODE=1` (as this environment "
                       "sets it) with the bytecode `make venv`/`make test-deps` compile into the checkout "
                       "(`python -m compileall -q virtnet`): what a user of this checkout gets",
    "nothing cached": "`PYTHONDONTWRITEBYTECODE=1` and a copy of the package without `__pycache__`: virtnet "
                      "compiled at every start (an editable install made without `make`)",
}
TARGET_SINGLE = 1.5  # × the `import lxml.etree` floor, in the first two situations


def stale_bytecode(root):
    """Modules of the package under ROOT whose __pycache__ .pyc is missing or out of date."""
    import importlib.util

    stale = []
    for source in sorted(Path(root, "virtnet").rglob("*.py")):
        pyc = Path(importlib.util.cache_from_source(str(source)))
        try:
            head = pyc.read_bytes()[:16]
        except OSError:
            stale.append(str(source.relative_to(root)))
            continue
        st = source.stat()
        flags = int.from_bytes(head[4:8], "little")
        if flags != 0 or int.from_bytes(head[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF \
                or int.from_bytes(head[12:16], "little") != st.st_size & 0xFFFFFFFF:
            stale.append(str(source.relative_to(root)))
    return stale


def _uncached_copy(workdir):
    """virtnet (its schemas inside) copied without bytecode; run with PYTHONPATH pointing at it."""
    import shutil

    root = workdir / "uncached"
    shutil.copytree(benchlib.REPO / "virtnet", root / "virtnet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


VIRSH = "virsh domxml-to-native qemu-argv"


def _measure(commands, env, reps, cwd):
    """{label: Series as a dict} of each command run REPS times in ENV, orders rotated."""
    series = {label: benchlib.Series(label) for label in commands}
    for label, argv in commands.items():  # warm-up (and bytecode cache fill)
        for _ in range(3):
            benchlib.run(argv, env=env, cwd=cwd)
    labels = list(commands)
    for rep in range(reps):
        for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:  # rotate the order
            run = benchlib.run(commands[label], env=env, cwd=cwd)
            series[label].add(run.wall)
    for label, argv in commands.items():
        series[label].add_rss(benchlib.peak_rss_kib(argv, env=env, cwd=cwd))
    return {label: s.as_dict() for label, s in series.items()}


def single(ctx):
    seed = seed_file(ctx.workdir)
    res = {"seed": str(seed.relative_to(benchlib.REPO) if seed.is_relative_to(benchlib.REPO) else seed),
           "target": TARGET_SINGLE, "envs": BYTECODE_ENVS}
    commands = {
        "python -c pass": [benchlib.PY, "-c", "pass"],
        "python -c 'import lxml.etree'": [benchlib.PY, "-c", "import lxml.etree"],
        "virtnet xml2argv": [benchlib.VIRTNET, "xml2argv", str(seed)],
    }
    reason = benchlib.libvirt_reason()
    if reason is None:
        commands[VIRSH] = ["virsh", "-c", benchlib.LIBVIRT_URI, "domxml-to-native", "qemu-argv", str(seed)]
    else:
        res["virsh_skipped"] = reason
    reps = max(5, round(40 * ctx.scale))
    res["reps"] = reps
    # What `make venv` leaves: the checkout's bytecode, compiled as the Makefile does it.
    res["stale_bytecode_before"] = stale_bytecode(benchlib.REPO)
    benchlib.run([benchlib.PY, "-m", "compileall", "-q", "virtnet"], cwd=benchlib.REPO)
    res["stale_bytecode_after"] = stale_bytecode(benchlib.REPO)
    uncached = _uncached_copy(ctx.workdir)
    envs = {"bytecode cached": benchlib.python_env(ctx.pycache),
            "PYTHONDONTWRITEBYTECODE=1, bytecode from make": benchlib.python_env(None),
            "nothing cached": benchlib.python_env(None, {"PYTHONPATH": str(uncached)})}
    res["series"] = {}
    for env_name, env in envs.items():
        try:
            res["series"][env_name] = _measure(commands, env, reps, ctx.workdir)
        except benchlib.VirshTimeout as e:  # measured again without virsh, which is left out everywhere
            res["virsh_skipped"] = str(e)
            del commands[VIRSH]
            for measured in res["series"].values():
                measured.pop(VIRSH, None)
            res["series"][env_name] = _measure(commands, env, reps, ctx.workdir)
    env = envs["bytecode cached"]
    # Checks: what the process imports, and how often it compiles the schema.
    run = benchlib.run([benchlib.PY, "-X", "importtime", benchlib.VIRTNET, "xml2argv", str(seed)], env=env)
    res["importtime"] = parse_importtime(run.stderr.decode(errors="replace"))
    run = benchlib.run([benchlib.PY, __file__, "modules", str(seed)], env=env, capture=True)
    res["modules"] = json.loads(run.stdout)
    files = [str(seed)] + [str(p) for p in domaingen.write_mixed(ctx.workdir / "schema-once", 9)]
    run = benchlib.run([benchlib.PY, __file__, "schema-once", *files], env=env, capture=True)
    res["schema_once"] = json.loads(run.stdout)
    phases = []
    for _ in range(max(3, round(15 * ctx.scale))):
        run = benchlib.run([benchlib.PY, __file__, "phases-single", str(seed)], env=env, capture=True)
        phases.append(json.loads(run.stdout))
    res["phases"] = {key: sorted(p[key] for p in phases)[len(phases) // 2] for key in phases[0]}
    return res


def parse_importtime(text):
    """Modules from `python -X importtime` (self and cumulative µs; nesting from the indentation)."""
    modules = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        stripped = name.rstrip()
        depth = (len(stripped) - len(stripped.lstrip()) - 1) // 2
        modules.append({"name": stripped.strip(), "self_us": int(self_us), "cumulative_us": int(cumulative),
                        "depth": depth})
    forbidden = sorted({m["name"] for m in modules
                        if m["name"].split(".")[0] in FORBIDDEN})
    top = [m for m in modules if m["depth"] == 0]
    return {"count": len(modules), "forbidden": forbidden,
            "top_level": sorted(top, key=lambda m: -m["cumulative_us"])[:12]}


def _child_modules(seed):
    from virtnet.cli import main

    with _quiet():
        main(["xml2argv", seed])
    loaded = sorted(sys.modules)
    print(json.dumps({"count": len(loaded), "forbidden": [m for m in loaded if m.split(".")[0] in FORBIDDEN],
                      "virtnet": [m for m in loaded if m.startswith("virtnet")]}))


def _child_schema_once(files):
    from lxml import etree

    counts = {"relaxng": 0, "rng_parses": 0}
    real_relaxng, real_parse = etree.RelaxNG, etree.parse

    def counting_relaxng(*args, **kwargs):
        counts["relaxng"] += 1
        return real_relaxng(*args, **kwargs)

    def counting_parse(source, *args, **kwargs):
        if str(source).endswith(".rng"):
            counts["rng_parses"] += 1
        return real_parse(source, *args, **kwargs)

    etree.RelaxNG, etree.parse = counting_relaxng, counting_parse
    from virtnet.cli import main
    from virtnet.conf import schema

    with _quiet():
        status = main(["xml2argv", "--host-caps", "none", *files])
    info = schema._compile.cache_info()
    print(json.dumps({"files": len(files), "status": status, "relaxng_compiles": counts["relaxng"],
                      "rng_file_parses": counts["rng_parses"], "compile_cache_misses": info.misses,
                      "compile_cache_hits": info.hits}))


class _quiet:
    """Swallow stdout and stderr (the conversion output and its warnings)."""

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return sys.stdout

    def __exit__(self, *exc):
        self.text = sys.stdout.getvalue()
        sys.stdout, sys.stderr = self.saved


def _child_phases_single(seed):
    """Step by step what `virtnet xml2argv FILE` does, each step timed once, in a fresh process.
    Modules a step names but the code no longer has are skipped (the conversion step then pays
    for whatever it imports itself)."""
    t = [time.perf_counter()]
    out = {}

    def mark(name):
        t.append(time.perf_counter())
        out[name] = t[-1] - t[-2]

    def load(*modules):
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:
                pass

    load("lxml.etree")
    mark("import lxml.etree (the floor's own work)")
    import virtnet.cli as cli
    mark("import virtnet.cli")
    argv = ["xml2argv", seed]
    quick = getattr(cli, "_quick_args", lambda argv: None)(argv)
    if quick is not None:
        args = quick
        mark("parse argv (a plain conversion command line: no argparse)")
    else:
        verb_of = getattr(cli, "_verb_of", lambda argv: None)
        args = cli.build_parser(*([verb_of(argv)] if verb_of(argv) else [])).parse_args(argv)
        mark("import argparse, build the parser, parse argv")
    load("virtnet.conf.load")
    mark("import virtnet.conf.load (model, checks, defaults, identity, schema)")
    load("virtnet.convert", "virtnet.qemu.argv", "virtnet.qemu.render", "virtnet.runpaths")
    mark("import virtnet.convert, virtnet.qemu (argv, machine, render), runpaths")
    load("virtnet.store", "virtnet.hostcaps")
    mark("import virtnet.store (default runtime dir), hostcaps")
    from virtnet.conf import schema
    schema.schema()
    mark("compile the RelaxNG schema")
    with _quiet():
        cli.COMMANDS["xml2argv"](args)
    mark("convert: read, parse, validate, model, checks, defaults, argv, render")
    print(json.dumps(out))


# ------------------------------------------------------------------ batch conversion


EXPERIMENTS = {
    "baseline": "virtnet as it is (in-process, after startup)",
    "no-freeze": "the model never frozen (every read walks the tree, as before read-once)",
    "no-text-screen": "checks without `plain_values` (the control-character and padding screen: its share)",
    "no-checks": "no semantic checks at all (their share: the walk and the rules; valid inputs give the same output)",
}
TARGET_BATCH_RATE = 3000  # domains/s, whole process
TARGET_BATCH_RATIO = 3.3  # × the parse + validate floor's whole-process time


def batch(ctx):
    count = max(100, round(1000 * min(ctx.scale, 1.0)))
    folder = ctx.workdir / "batch"
    folder.mkdir()
    domaingen.write_mixed(folder, count)
    env = benchlib.python_env(ctx.pycache)
    cpu = 1 if (len(__import__("os").sched_getaffinity(0)) > 1) else 0
    res = {"domains": count, "nics_per_domain": 4, "cpu": cpu, "kinds": list(domaingen.MIXED_KINDS),
           "target_rate": TARGET_BATCH_RATE, "target_ratio": TARGET_BATCH_RATIO}
    argv = [benchlib.VIRTNET, "xml2argv", str(folder)]
    check = benchlib.run(argv, env=env, capture=True, cpu=cpu)
    headers = sum(1 for line in check.stdout.decode().splitlines() if line.startswith("# "))
    assert headers == count, f"expected {count} command lines, got {headers}"
    res["stderr_lines"] = len(check.stderr.decode().splitlines())
    floor_argv = [benchlib.PY, str(benchlib.BENCH_DIR / "floor.py"), str(benchlib.REPO / "virtnet" / "schemas"), str(folder)]
    series = benchlib.Series("virtnet xml2argv DIR")
    floor = benchlib.Series("lxml parse + RelaxNG validate, whole process")
    floor_loop = []
    lxml_floor = benchlib.Series("python -c 'import lxml.etree'")
    for _ in range(max(3, round(7 * ctx.scale))):  # interleaved, so load on the machine hits all alike
        series.add(benchlib.run(argv, env=env, cpu=cpu).wall)
        run = benchlib.run(floor_argv, env=env, cpu=cpu, capture=True)
        floor.add(run.wall)
        floor_loop.append(json.loads(run.stdout)["seconds"])
        lxml_floor.add(benchlib.run([benchlib.PY, "-c", "import lxml.etree"], env=env, cpu=cpu).wall)
    series.add_rss(benchlib.peak_rss_kib(argv, env=env, cpu=cpu))
    floor.add_rss(benchlib.peak_rss_kib(floor_argv, env=env, cpu=cpu))
    lxml_floor.add_rss(benchlib.peak_rss_kib([benchlib.PY, "-c", "import lxml.etree"], env=env, cpu=cpu))
    res["wall"] = series.as_dict()
    res["floor_process"] = floor.as_dict()
    res["floor_loop"] = {"median": statistics.median(floor_loop), "min": min(floor_loop), "max": max(floor_loop)}
    res["floor"] = lxml_floor.as_dict()
    # Per-stage cost, unprofiled, and how the model was read.
    stages = []
    for _ in range(3):
        run = benchlib.run([benchlib.PY, __file__, "phases-batch", str(folder)], env=env, capture=True, cpu=cpu)
        stages.append(json.loads(run.stdout))
    res["stages_us"] = {key: sorted(s[key] for s in stages)[1] for key in stages[0]}
    run = benchlib.run([benchlib.PY, __file__, "reads", str(folder)], env=env, capture=True, cpu=cpu)
    res["reads"] = json.loads(run.stdout)
    # Experiments (in-process, same inputs, output compared byte for byte with the unchanged code).
    runs = {variant: [] for variant in EXPERIMENTS}
    for _ in range(max(3, round(5 * ctx.scale))):
        for variant in EXPERIMENTS:  # interleaved, so load on the machine hits every variant alike
            run = benchlib.run([benchlib.PY, __file__, "inproc", str(folder), variant], env=env, capture=True,
                               cpu=cpu)
            runs[variant].append(json.loads(run.stdout))
    variants = {variant: {"seconds": statistics.median(r["seconds"] for r in rs),
                          "all": [r["seconds"] for r in rs],
                          "min": min(r["seconds"] for r in rs), "max": max(r["seconds"] for r in rs),
                          "applied": all(r.get("applied", True) for r in rs),
                          "sha256": {r["sha256"] for r in rs}.pop() if len({r["sha256"] for r in rs}) == 1
                          else "differs between runs", "rss_mib": max(r["vmhwm_kib"] for r in rs) / 1024}
                for variant, rs in runs.items()}
    res["experiments"] = variants
    # cProfile of the whole process.
    prof = ctx.workdir / "batch.prof"
    benchlib.run([benchlib.PY, "-m", "cProfile", "-o", str(prof), "-m", "virtnet", "xml2argv", str(folder)],
                 env=env, cpu=cpu)
    res["profile"] = profile_summary(prof, count)
    return res


def profile_summary(path, per=1, limit=14):
    """Top functions by own time and by cumulative time (µs per unit of work), from a .prof file."""
    stats = pstats.Stats(str(path))
    total = stats.total_tt
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"function": _short(filename, line, func), "calls": nc, "tottime": tt, "cumtime": ct})
    by_tt = sorted(rows, key=lambda r: -r["tottime"])[:limit]
    by_ct = sorted((r for r in rows if "virtnet" in r["function"] and "<module>" not in r["function"]),
                   key=lambda r: -r["cumtime"])[:limit]
    imports = sorted((r for r in rows if r["function"].endswith("(<module>)")), key=lambda r: -r["cumtime"])
    return {"total": total, "per": per, "by_tottime": by_tt, "by_cumtime": by_ct, "imports": imports[:limit]}


def _short(filename, line, func):
    if filename == "~":
        return func  # a builtin, e.g. {method 'recv' of '_socket.socket' objects}
    for marker in ("/virtnet/", "/site-packages/", "/benchmarks/"):
        if marker in filename:
            filename = marker.strip("/") + "/" + filename.split(marker, 1)[1]
            if marker == "/site-packages/":
                filename = filename.split("/", 1)[1]
            break
    else:
        filename = re.sub(r"^.*/lib/python3\.\d+/", "", filename)
    return f"{filename}:{line}({func})"


# (module, function, label): each stage function is wrapped in a timer where the module has it.
STAGES = (("virtnet.conf.xmlparse", "read_source", "read file"),
          ("virtnet.conf.xmlparse", "parse_bytes", "parse (lxml, hardened)"),
          ("virtnet.conf.schema", "validate", "RelaxNG validate"),
          ("virtnet.conf.checks", "check_domain", "semantic checks"),
          ("virtnet.conf.defaults", "apply_defaults", "defaults (MACs, PCI addresses, guest devices)"),
          ("virtnet.conf.identity", "prepare", "identities (aliases)"),
          ("virtnet.conf.load", "freeze", "freeze (read-once from here)"),
          ("virtnet.qemu.argv", "build_command", "build argv (props)"),
          ("virtnet.qemu.argv", "build_argv", "build argv (props)"),
          ("virtnet.qemu.render", "shell_lines", "render (shell quoting)"),
          ("virtnet.qemu.argv", "warnings", "unrendered-device warnings"))


def _child_phases_batch(folder):
    """`xml2argv DIR` in-process with each pipeline stage wrapped in a timer (µs per domain)."""
    from virtnet.cli import main

    totals = {}
    clock = time.perf_counter

    def timed(function, label):
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] += clock() - start
        return wrapper

    for module_name, attr, label in STAGES:
        module = importlib.import_module(module_name)
        if hasattr(module, attr):
            totals.setdefault(label, 0.0)
            setattr(module, attr, timed(getattr(module, attr), label))
    count = len(list(Path(folder).glob("*.xml")))
    from virtnet.conf import schema

    schema.schema()  # compiled once per process; not a per-domain cost
    start = clock()
    with _quiet():
        main(["xml2argv", folder])
    whole = clock() - start
    out = {label: value / count * 1e6 for label, value in totals.items()}
    out["everything else (model objects, file list, output)"] = (whole - sum(totals.values())) / count * 1e6
    print(json.dumps(out))


def _child_reads(folder):
    """How `xml2argv DIR` reads the model, per domain: reads that walk the tree (the model thawed,
    during defaults and identities), read-once first reads and the snapshots behind them, and the
    sub-object look-ups (Child/Children)."""
    from virtnet.conf import xmlmodel
    from virtnet.cli import main

    counts = {"tree reads (Prop, not frozen)": 0, "first reads while frozen (Prop)": 0,
              "snapshots (one walk per frozen object)": 0, "derived values computed while frozen": 0,
              "sub-object look-ups (Child/Children)": 0, "objects frozen": 0, "thaw": 0}

    def counting(key, function):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)
        return wrapper

    xmlmodel.Prop.__get__ = counting("tree reads (Prop, not frozen)", xmlmodel.Prop.__get__)
    # Each descriptor kind the frozen model has (a name this version lacks is left out).
    optional = (("Child", "sub-object look-ups (Child/Children)"), ("Children", "sub-object look-ups (Child/Children)"),
                ("_MemoChild", "sub-object look-ups (Child/Children)"),
                ("_MemoChildren", "sub-object look-ups (Child/Children)"),
                ("_MemoProp", "first reads while frozen (Prop)"), ("_MemoAttr", "first reads while frozen (Prop)"),
                ("_MemoProperty", "derived values computed while frozen"))
    for name, key in optional:
        cls = getattr(xmlmodel, name, None)
        if cls is not None and "__get__" in vars(cls):
            cls.__get__ = counting(key, cls.__get__)
    if hasattr(xmlmodel, "_snapshot"):
        xmlmodel._snapshot = counting("snapshots (one walk per frozen object)", xmlmodel._snapshot)
    if hasattr(xmlmodel, "_Group"):
        xmlmodel._Group.thaw = counting("thaw", xmlmodel._Group.thaw)
    for name in ("_freeze_into", "_frozen_object"):  # a frozen object is made one way or the other
        if hasattr(xmlmodel, name):
            setattr(xmlmodel, name, counting("objects frozen", getattr(xmlmodel, name)))
    count = len(list(Path(folder).glob("*.xml")))
    with _quiet():
        main(["xml2argv", "--host-caps", "none", folder])
    print(json.dumps({key: value / count for key, value in counts.items()}))


def _install_no_freeze():
    """Experiment: load_tree never freezes (the checks and the argv builder read the tree)."""
    from virtnet.conf import load

    if not hasattr(load, "freeze"):
        return False
    load.freeze = lambda obj: obj
    return True


def _install_no_text_screen():
    from virtnet.conf import checks

    rules = [r for r in checks.RULES if r.__name__ != "plain_values"]
    if len(rules) == len(checks.RULES):
        return False
    checks.RULES[:] = rules
    return True


def _child_inproc(folder, variant):
    applied = True
    if variant == "no-freeze":
        applied = _install_no_freeze()
    elif variant == "no-text-screen":
        applied = _install_no_text_screen()
    elif variant == "no-checks":
        from virtnet.conf import checks

        checks.check_domain = lambda root, filename=None: {}  # nothing seen, nothing refused
    from virtnet.cli import main

    quiet = _quiet()
    start = time.perf_counter()
    with quiet:
        main(["xml2argv", folder])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "sha256": hashlib.sha256(quiet.text.encode()).hexdigest(),
                      "vmhwm_kib": benchlib.own_peak_rss_kib(), "applied": applied}))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "phases-single":
        _child_phases_single(rest[0])
    elif mode == "schema-once":
        _child_schema_once(rest)
    elif mode == "modules":
        _child_modules(rest[0])
    elif mode == "phases-batch":
        _child_phases_batch(rest[0])
    elif mode == "reads":
        _child_reads(rest[0])
    elif mode == "inproc":
        _child_inproc(rest[0], rest[1])
    else:
        sys.exit(f"unknown mode {mode}")
