#!/usr/bin/env python3
"""Summarise one `./run.sh bench` run (driver-domain comparison).

    bench/report.py RESULTS_DIR [--check] [--linux-image-bytes N]

RESULTS_DIR holds what lab/modes/bench.sh wrote: runs.tsv, setup.tsv,
memprobe.tsv, raw/r<round>-<job>-<setup>.json (fio's JSON output), and the
image sizes.  Prints one table (per job and set-up: IOPS, MiB/s, mean and p99
latency as the median over rounds with the range, and the ratios
ferrite/linux-dd and ferrite/raw computed per round, then median and range),
the readiness times, memory and image sizes, and where Ferrite stands against
the targets.  Writes summary.json, table.txt and plot.svg into RESULTS_DIR.

A figure that was not measured is shown as "-" and left out of the JSON; it is
never estimated.  With --check the exit status is 1 unless every job has a
result for every set-up (the `--quick` smoke test in CI).
"""
import json
import os
import statistics
import sys

SETUPS = ["ferrite", "linux-dd", "raw"]
COLOURS = {"ferrite": "#c0392b", "linux-dd": "#2c7fb8", "raw": "#7f7f7f"}
JOBS = [
    ("randread-4k-qd1", "4 KiB random read, QD1"),
    ("randread-4k-qd32", "4 KiB random read, QD32"),
    ("randwrite-4k-qd32", "4 KiB random write, QD32"),
    ("seqread-128k-qd8", "128 KiB sequential read, QD8"),
    ("seqwrite-128k-qd8", "128 KiB sequential write, QD8"),
    ("randrw70-4k-qd16", "4 KiB random 70/30 read/write, QD16"),
]
METRICS = ["iops", "mib_s", "mean_us", "p99_us"]


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    if not lines:
        return []
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:]]


def fio_job(path):
    """The first job of one fio JSON output file (text before the JSON is
    skipped), or None if it is missing, unreadable or reports an error."""
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        job = json.loads(text[start:])["jobs"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(job, dict) or job.get("error", 0) != 0:
        return None
    return job


def parse_fio(path):
    """The measured figures of one fio JSON file, or None if it holds none."""
    job = fio_job(path)
    if job is None:
        return None
    iops = mib = 0.0
    ios = 0
    lat_sum = 0.0
    p99 = None
    for d in ("read", "write"):
        s = job.get(d, {})
        n = s.get("total_ios", 0)
        if not n:
            continue
        ios += n
        iops += s.get("iops", 0.0)
        mib += s.get("bw", 0) / 1024.0  # fio's bw is KiB/s
        lat_sum += s.get("lat_ns", {}).get("mean", 0.0) * n
        pct = s.get("clat_ns", {}).get("percentile", {})
        v = pct.get("99.000000")
        if v is not None:
            p99 = max(p99 or 0, v / 1000.0)
    if ios == 0 or iops <= 0:
        return None
    return {"iops": iops, "mib_s": mib, "mean_us": lat_sum / ios / 1000.0, "p99_us": p99, "ios": ios}


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s, digits=0, unit=""):
    if s is None:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    res = args[0]
    check = "--check" in args
    linux_image = None
    if "--linux-image-bytes" in args:
        linux_image = int(args[args.index("--linux-image-bytes") + 1])

    runs = read_tsv(os.path.join(res, "runs.tsv"))
    # results[job][setup][round] = figures
    results = {j: {s: {} for s in SETUPS} for j, _ in JOBS}
    bad_runs = []
    for r in runs:
        rnd = r.get("round", "")
        if not rnd.isdigit():
            continue  # memory-probe runs (round "m<MiB>")
        job, setup = r.get("job"), r.get("setup")
        if job not in results or setup not in SETUPS:
            continue
        fig = None
        if r.get("rc") == "0" and r.get("file", "-") != "-":
            fig = parse_fio(os.path.join(res, "raw", r["file"]))
        if fig is None:
            bad_runs.append(f"round {rnd} {job} {setup}: rc={r.get('rc')}")
            continue
        results[job][setup][int(rnd)] = fig
    rounds = sorted({k for j in results.values() for s in j.values() for k in s})

    summary = {"rounds": rounds, "jobs": {}, "failed_runs": bad_runs,
               "note": "Absolute figures under QEMU TCG are not comparable across machines; compare the ratios of one run."}
    lines = []
    out = lines.append
    out("Ferrite vs a Linux driver domain (xen-blkback) vs raw NVMe, one lab boot, "
        f"{len(rounds)} round(s), jobs interleaved.")
    out("Medians over rounds, [min-max]. Ratios are per round (adjacent runs), then median [range].")
    out("Absolute figures under QEMU TCG are not comparable across machines: compare the ratios.")
    out("")
    hdr = f"{'job':<20} {'set-up':<9} {'IOPS':>22} {'MiB/s':>20} {'mean lat us':>22} {'p99 lat us':>22}"
    out(hdr)
    out("-" * len(hdr))
    for job, title in JOBS:
        js = {"title": title, "setups": {}, "ratios": {}}
        for s in SETUPS:
            per = results[job][s]
            st = {m: stats([per[r][m] for r in per]) for m in METRICS}
            if any(st.values()):
                js["setups"][s] = st
            out(f"{job:<20} {s:<9} {fmt(st['iops']):>22} {fmt(st['mib_s'], 1):>20} "
                f"{fmt(st['mean_us'], 1):>22} {fmt(st['p99_us'], 0):>22}")
        for ref in ("linux-dd", "raw"):
            both = [r for r in results[job]["ferrite"] if r in results[job][ref]]
            iops = stats([results[job]["ferrite"][r]["iops"] / results[job][ref][r]["iops"] for r in both])
            lat = stats([results[job]["ferrite"][r]["mean_us"] / results[job][ref][r]["mean_us"] for r in both])
            if iops:
                js["ratios"][f"ferrite/{ref}"] = {"iops": iops, "mean_latency": lat}
            out(f"{'':<20} ferrite/{ref:<8} IOPS x{fmt(iops, 2)}  mean latency x{fmt(lat, 2)}")
        summary["jobs"][job] = js
        out("")

    # Readiness, memory, image sizes.
    setup = read_tsv(os.path.join(res, "setup.tsv"))
    ready = {(r["setup"], r["step"]): float(r["seconds"]) for r in setup}
    summary["ready"] = {f"{a}:{b}": v for (a, b), v in ready.items()}
    out("Driver domain start-up: xl create -> ready to serve (of which xl create itself, the toolstack's part);")
    out("then a guest's xl create -> its disk Connected (mostly the guest's own boot):")
    def sec(v):
        return "-" if v is None else "%.2f s" % v
    for s in ("ferrite", "linux-dd"):
        r0, r1, r2 = ready.get((s, "xl-create")), ready.get((s, "ready")), ready.get((s, "guest-connected"))
        after = None if r0 is None or r1 is None else r1 - r0
        out(f"  {s:<9} ready {sec(r1):>9} (xl create {sec(r0)}, then {sec(after)})   guest disk Connected {sec(r2):>9}")
    rf, rl = ready.get(("ferrite", "ready")), ready.get(("linux-dd", "ready"))
    ready_ratio = rl / rf if rf and rl else None
    if ready_ratio:
        out(f"  Ferrite is ready x{ready_ratio:.1f} sooner (from xl create)")
    cf, cl = ready.get(("ferrite", "xl-create")), ready.get(("linux-dd", "xl-create"))
    if rf and rl and cf is not None and cl is not None and rf - cf > 0:
        summary["ready"]["after_xl_create_ratio"] = (rl - cl) / (rf - cf)
        out(f"  after xl create returns: ferrite {rf - cf:.2f} s, linux-dd {rl - cl:.2f} s (x{(rl - cl) / (rf - cf):.1f})")
    mem = read_tsv(os.path.join(res, "memprobe.tsv"))
    given = {"ferrite": 32, "linux-dd": 256}
    needs = {}
    for s in ("ferrite", "linux-dd"):
        tried = [m for m in mem if m["domain"] == s]
        passed = [int(m["memory_mib"]) for m in tried if m["result"] == "pass"]
        if tried:
            needs[s] = {"smallest_passing_mib": min(passed) if passed else None,
                        "tried": {m["memory_mib"]: f"{m['result']} ({m['detail']})" for m in tried}}
    summary["memory"] = {"given_mib": given, "probe": needs}
    out("Memory given (MiB): ferrite %d, linux-dd %d" % (given["ferrite"], given["linux-dd"]))
    for s, n in needs.items():
        out(f"  {s}: smallest memory that passed the probe: {n['smallest_passing_mib'] or '-'} MiB; tried: "
            + ", ".join(f"{k} MiB {v}" for k, v in n["tried"].items()))
    if not needs:
        out("  memory probe not run (it runs in the full bench, not with --quick)")
    fimg = None
    p = os.path.join(res, "ferrite-image-bytes")
    if os.path.exists(p) and open(p).read().strip().isdigit():
        fimg = int(open(p).read().strip())
    summary["image_bytes"] = {"ferrite": fimg, "linux-dd": linux_image}
    out(f"Image size: ferrite {fimg or '-'} bytes (ELF); linux-dd {linux_image or '-'} bytes "
        "(Debian vmlinuz + the lab initramfs with blkback, nvme, pcifront)")
    out("")

    # Targets.
    def ratio(job, ref, key):
        return (summary["jobs"][job]["ratios"].get(f"ferrite/{ref}") or {}).get(key)

    targets = []

    def target(name, s, goal, ok):
        have = "-" if s is None else f"{s['median']:.2f}"
        verdict = "not measured" if s is None else ("met" if ok(s["median"]) else "NOT met")
        targets.append({"target": name, "goal": goal, "median": None if s is None else s["median"], "verdict": verdict})
        out(f"  {name:<44} {goal:<8} median {have:>6}  {verdict}")

    out("Targets (median of per-round ratios):")
    target("4K randread QD32 IOPS, ferrite/linux-dd", ratio("randread-4k-qd32", "linux-dd", "iops"), ">= 1.5", lambda v: v >= 1.5)
    target("4K randread QD32 IOPS, ferrite/raw", ratio("randread-4k-qd32", "raw", "iops"), ">= 0.9", lambda v: v >= 0.9)
    target("4K randread QD1 mean latency, ferrite/linux-dd", ratio("randread-4k-qd1", "linux-dd", "mean_latency"), "<= 0.7", lambda v: v <= 0.7)
    target("128K seq read MiB/s, ferrite/raw", ratio("seqread-128k-qd8", "raw", "iops"), ">= 0.95", lambda v: v >= 0.95)
    target("128K seq write MiB/s, ferrite/raw", ratio("seqwrite-128k-qd8", "raw", "iops"), ">= 0.95", lambda v: v >= 0.95)
    rr = None if ready_ratio is None else {"median": ready_ratio, "min": ready_ratio, "max": ready_ratio, "n": 1}
    target("ready, linux-dd time / ferrite time", rr, ">= 20", lambda v: v >= 20)
    summary["targets"] = targets
    missing = [f"{j} {s}" for j, _ in JOBS for s in SETUPS if not results[j][s]]
    return finish(res, lines, summary, plot(summary), bad_runs, missing, check, bool(rounds))


def finish(res, lines, summary, svg, bad_runs, missing, check, any_rounds):
    """The report's common end: the runs without a result and the pairs not
    measured (in the text and the JSON), table.txt, summary.json and plot.svg
    written, and the --check verdict as the exit status."""
    out = lines.append
    if bad_runs:
        out("")
        out(f"{len(bad_runs)} job run(s) without a result (not counted):")
        for b in bad_runs:
            out("  " + b)
    summary["missing"] = missing
    if missing:
        out("")
        out("Not measured: " + ", ".join(missing))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(os.path.join(res, "table.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(res, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(res, "plot.svg"), "w") as f:
        f.write(svg)
    print(f"written: {res}/summary.json, {res}/table.txt, {res}/plot.svg")
    if check and missing:
        print(f"CHECK FAILED: {len(missing)} job/set-up pair(s) have no result", file=sys.stderr)
        return 1
    if check and not any_rounds:
        print("CHECK FAILED: no results at all", file=sys.stderr)
        return 1
    return 0


def svg_bars(o, x0, pw, base, plot_h, bars, setups, colours, vals, digits):
    """One panel's bars, appended to the SVG list o: per set-up its median
    (bar) and range (whisker), scaled to the panel's largest value, or "not
    measured". bars = (first bar's offset from x0, bar width, distance
    between bars, offset of "not measured")."""
    first, bw, step, na_dx = bars
    top = max([v["max"] for v in vals.values() if v] or [1.0]) or 1.0
    o.append(f'<line x1="{x0 + 10}" y1="{base}" x2="{x0 + pw - 20}" y2="{base}" stroke="black"/>')
    for i, s in enumerate(setups):
        bx = x0 + first + i * step
        v = vals[s]
        if not v:
            o.append(f'<text x="{bx + na_dx}" y="{base - 5}">not measured</text>')
            continue
        bh = plot_h * v["median"] / top
        o.append(f'<rect x="{bx}" y="{base - bh:.1f}" width="{bw}" height="{bh:.1f}" fill="{colours[s]}"/>')
        ylo, yhi = base - plot_h * v["min"] / top, base - plot_h * v["max"] / top
        cx = bx + bw / 2
        o.append(f'<line x1="{cx}" y1="{ylo:.1f}" x2="{cx}" y2="{yhi:.1f}" stroke="black"/>')
        o.append(f'<text x="{bx}" y="{yhi - 4:.1f}">{v["median"]:.{digits}f}</text>')
        o.append(f'<text x="{bx + 4}" y="{base + 14}">{s}</text>')


def plot(summary):
    """Small multiples: one panel per job, one bar per set-up (median, range whisker)."""
    pw, ph, cols = 300, 220, 3
    rows = (len(JOBS) + cols - 1) // cols
    w, h = pw * cols + 20, ph * rows + 70
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         '<text x="10" y="18" font-size="14" font-weight="bold">Ferrite vs Linux driver domain vs raw NVMe '
         '(median of rounds, whisker = range; QEMU TCG, compare ratios only)</text>']
    for i, s in enumerate(SETUPS):
        x = 10 + i * 110
        o.append(f'<rect x="{x}" y="28" width="12" height="12" fill="{COLOURS[s]}"/><text x="{x + 16}" y="38">{s}</text>')
    for k, (job, title) in enumerate(JOBS):
        x0, y0 = 10 + (k % cols) * pw, 50 + (k // cols) * ph
        js = summary["jobs"].get(job, {})
        metric, unit = ("mib_s", "MiB/s") if "128k" in job else ("iops", "IOPS")
        o.append(f'<text x="{x0 + 5}" y="{y0 + 14}" font-weight="bold">{title} ({unit})</text>')
        vals = {s: js.get("setups", {}).get(s, {}).get(metric) for s in SETUPS}
        svg_bars(o, x0, pw, y0 + ph - 30, ph - 60, (25, 60, 82, 8), SETUPS, COLOURS, vals, 0)
    o.append("</svg>")
    return "\n".join(o) + "\n"


if __name__ == "__main__":
    sys.exit(main())
