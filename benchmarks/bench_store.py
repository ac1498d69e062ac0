"""The store: `virtnet define` of 1000 domains one process each (cost as the store grows), then
`list` and `dumpxml` with 10 000 defined.

The domains beyond the first 1000 are written as canonical definitions straight into the state
dir, and the Store API rebuilds the index from them (its recovery path, timed and reported), which
is far faster than 9000 more define processes and gives the index define would have written.

Child modes: bench_store.py grow STATE_DIR FROM TO   (prints JSON)
             bench_store.py write-cost STATE_DIR N    (prints JSON: Store.write_domain timings)

The index is state_dir/index.sqlite. write-cost reports under its old key names what now stands
in their place: decode_all_summaries is decoding every summary the way `list` reads them (Store.summaries
without the SELECT), encode_one_summary is encoding one summary (all define encodes), index_bytes is the
SQLite file (with its -wal, if any).
"""

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import domaingen  # noqa: E402

PREFIX = "bench"


def measure(ctx):
    defines = max(200, round(1000 * min(ctx.scale, 1.0)))
    total = max(2000, round(10000 * min(ctx.scale, 1.0)))
    env = benchlib.python_env(ctx.pycache)
    state = ctx.workdir / "store-state"
    runtime = ctx.workdir / "store-run"
    xml_dir = ctx.workdir / "store-xml"
    xml_dir.mkdir()
    paths = domaingen.write_mixed(xml_dir, defines, prefix=PREFIX)
    cli = [benchlib.VIRTNET, "--state-dir", str(state), "--runtime-dir", str(runtime)]
    res = {"defines": defines, "total": total}

    scratch = ctx.workdir / "warm-up-state"  # fills the bytecode cache for define's modules
    for path in paths[:3]:
        benchlib.run([benchlib.VIRTNET, "--state-dir", str(scratch), "--runtime-dir", str(runtime), "define",
                      str(path)], env=env)
    benchlib.log(f"  store: {defines} x virtnet define")
    # A control every 10 defines: `virtnet validate` does the same parsing and checking without the
    # store, so drift in the machine's speed over the run shows up there too and can be divided out.
    per_define, control = [], []
    for number, path in enumerate(paths):
        per_define.append(benchlib.run(cli + ["define", str(path)], env=env).wall)
        if number % 10 == 0:
            control.append(benchlib.run([benchlib.VIRTNET, "validate", str(path)], env=env).wall)
    window = min(100, defines // 5)
    first, last = benchlib.Series("first"), benchlib.Series("last")
    for value in per_define[:window]:
        first.add(value)
    for value in per_define[-window:]:
        last.add(value)
    # Peak RSS: redefining the first and the last domain (an update: same work, store unchanged).
    first.add_rss(benchlib.peak_rss_kib(cli + ["define", str(paths[0])], env=env))
    last.add_rss(benchlib.peak_rss_kib(cli + ["define", str(paths[-1])], env=env))
    res["define_first"] = first.as_dict()
    res["define_last"] = last.as_dict()
    res["define_window"] = window
    control_window = max(1, window // 10)
    res["control_first"] = statistics.median(control[:control_window])
    res["control_last"] = statistics.median(control[-control_window:])
    res["define_deciles"] = [statistics.median(per_define[i:i + defines // 10])
                             for i in range(0, defines, defines // 10)]
    res["define_total_seconds"] = sum(per_define)

    # In-process Store.write_domain cost at the current size, then grow to TOTAL.
    run = benchlib.run([benchlib.PY, __file__, "write-cost", str(state), "30"], env=env, capture=True)
    res["write_cost_at_defines"] = json.loads(run.stdout)
    benchlib.log(f"  store: growing to {total} definitions")
    run = benchlib.run([benchlib.PY, __file__, "grow", str(state), str(defines), str(total)], env=env,
                       capture=True, timeout=1800)
    res["grow"] = json.loads(run.stdout)
    run = benchlib.run([benchlib.PY, __file__, "write-cost", str(state), "30"], env=env, capture=True)
    res["write_cost_at_total"] = json.loads(run.stdout)

    # The CLI at TOTAL definitions.
    reps = max(5, round(15 * ctx.scale))
    middle = f"{PREFIX}{defines // 2:05d}"
    commands = {
        "virtnet list --all": cli + ["list", "--all"],
        "virtnet list": cli + ["list"],
        f"virtnet dumpxml {middle}": cli + ["dumpxml", middle],
        f"virtnet dumpxml --inactive {middle}": cli + ["dumpxml", "--inactive", middle],
        "python -c 'import lxml.etree'": [benchlib.PY, "-c", "import lxml.etree"],
        "python -c pass": [benchlib.PY, "-c", "pass"],
    }
    out = benchlib.run(cli + ["list", "--all"], env=env, capture=True).stdout.decode()
    rows = len(out.splitlines()) - 2
    assert rows == total, f"list --all printed {rows} rows, expected {total}"
    res["list_rows"] = rows
    series = {label: benchlib.Series(label) for label in commands}
    for label, argv in commands.items():
        benchlib.run(argv, env=env)
    labels = list(commands)
    for rep in range(reps):
        for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:
            series[label].add(benchlib.run(commands[label], env=env).wall)
    for label, argv in commands.items():
        series[label].add_rss(benchlib.peak_rss_kib(argv, env=env))
    res["cli"] = {label: s.as_dict() for label, s in series.items()}

    # define at TOTAL, as whole processes (new names, so each one adds to the index).
    (xml_dir / "more").mkdir()
    late = benchlib.Series("define at total")
    for number in range(total, total + max(5, round(20 * ctx.scale))):
        path = xml_dir / "more" / f"{PREFIX}{number:05d}.xml"
        path.write_text(domaingen.mixed_domain(number, prefix=PREFIX))
        late.add(benchlib.run(cli + ["define", str(path)], env=env).wall)
    late.add_rss(benchlib.peak_rss_kib(cli + ["define", str(path)], env=env))
    res["define_at_total"] = late.as_dict()

    # Profiles: one define and one list --all at TOTAL.
    from bench_conversion import profile_summary

    prof = {}
    path = xml_dir / "more" / f"{PREFIX}{total + 100:05d}.xml"
    path.write_text(domaingen.mixed_domain(total + 100, prefix=PREFIX))
    for label, args in (("define", ["define", str(path)]), ("list", ["list", "--all"])):
        out_path = ctx.workdir / f"store-{label}.prof"
        benchlib.run([benchlib.PY, "-m", "cProfile", "-o", str(out_path), "-m", "virtnet", "--state-dir",
                      str(state), "--runtime-dir", str(runtime), *args], env=env)
        prof[label] = profile_summary(out_path, limit=10)
    res["profiles"] = prof
    res["index_bytes"] = _index_bytes(state)
    return res


def _index_bytes(state_dir):
    files = Path(state_dir).glob("index.sqlite*")
    return sum(p.stat().st_size for p in files if p.name != "index.sqlite-shm")


def _child_grow(state_dir, start, end):
    """Write canonical definitions START..END-1 and let the Store rebuild its index from them."""
    from virtnet import domains
    from virtnet.conf.format import format_domain
    from virtnet.conf.load import load_text
    from virtnet.store import Store

    store = Store(Path(state_dir), Path(state_dir) / "run", summarize=domains.summarize_xml)
    folder = store.domains_dir
    t0 = time.perf_counter()
    for number in range(start, end):
        name = f"{PREFIX}{number:05d}"
        text = format_domain(load_text(domaingen.mixed_domain(number, prefix=PREFIX), name).domain)
        (folder / f"{name}.xml").write_text(text)
    t1 = time.perf_counter()
    store.index_path.unlink()
    summaries = store.summaries()  # no index: rebuilt from every definition under the lock
    t2 = time.perf_counter()
    assert len(summaries) == end, len(summaries)
    print(json.dumps({"write_seconds": t1 - t0, "rebuild_seconds": t2 - t1, "domains": len(summaries),
                      "vmhwm_kib": benchlib.own_peak_rss_kib()}))


def _child_write_cost(state_dir, count):
    """define's conflict lookups and Store.write_domain of COUNT new domains at the store's current
    size (XML, index rows, pending); they are removed again afterwards."""
    from virtnet import domains
    from virtnet.conf.format import format_domain
    from virtnet.conf.load import load_text
    from virtnet.store import Store

    store = Store(Path(state_dir), Path(state_dir) / "run", summarize=domains.summarize_xml)
    size = len(store.names())
    base = 90000 + size  # names that sort after the rest and are never defined otherwise
    prepared = []
    for number in range(base, base + count):
        domain = load_text(domaingen.mixed_domain(number, prefix="cost"), "cost").domain
        prepared.append((domain.name, format_domain(domain), domains.summarize(domain)))
    times, lock_times, read_times = [], [], []
    for name, text, summary in prepared:
        t0 = time.perf_counter()
        with store.lock():
            t1 = time.perf_counter()
            domains._conflicts(store, name, summary)  # what define does before writing
            t2 = time.perf_counter()
            store.write_domain(name, text, summary)
        t3 = time.perf_counter()
        times.append(t3 - t0)
        read_times.append(t2 - t1)
        lock_times.append(t3 - t2)
    with store.lock():
        for name, _, _ in prepared:
            store.remove_domain(name)
    # The JSON left: decoding every summary (list's read; define reads none), encoding one (define).
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.index_path)) as db:
        texts = [row[0] for row in db.execute("SELECT summary FROM domains")]
    decode, encode, read_all = [], [], []
    for _ in range(7):
        t0 = time.perf_counter()
        json.loads("[" + ",".join(texts) + "]")
        t1 = time.perf_counter()
        json.dumps(prepared[0][2], separators=(",", ":"))
        t2 = time.perf_counter()
        store.summaries()
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        encode.append(t2 - t1)
        read_all.append(t3 - t2)
    print(json.dumps({"size": size, "median": statistics.median(times), "min": min(times), "max": max(times),
                      "read_index_median": statistics.median(read_times),
                      "write_median": statistics.median(lock_times), "index_bytes": _index_bytes(state_dir),
                      "decode_all_summaries": statistics.median(decode), "encode_one_summary": statistics.median(encode),
                      "summaries_median": statistics.median(read_all)}))


if __name__ == "__main__":
    if sys.argv[1] == "grow":
        _child_grow(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "write-cost":
        _child_write_cost(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: bench_store.py grow|write-cost ...")
