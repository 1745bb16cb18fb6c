#!/usr/bin/env python3
"""Summarise one `./run.sh bench net` run (Ferrite's netback vs a Linux one).

    bench/netreport.py RESULTS_DIR [--check]

RESULTS_DIR holds what lab/modes/benchnet.sh wrote: runs.tsv, cpu.tsv,
setup.tsv, raw/r<round>-<job>-<setup>.json (fio's JSON; -rx.json the
receiver's) and .txt (ping round trips, one per line).  Prints one table (per
job and set-up: the job's figure as the median over rounds with the range,
the CPU share each domain used during the job, and the ratio ferrite/linux
computed per round, then median and range), the set-up times and the target
of issue 12 (guest->guest TCP >= 1.5x the Linux netback domain), stated as
met or not met (it is not asserted).  Writes summary.json, table.txt and
plot.svg into RESULTS_DIR.  The statistics and formatting are bench/report.py's.

A figure that was not measured is shown as "-" and left out of the JSON; it is
never estimated.  With --check the exit status is 1 unless every job has a
result for every set-up (the `--quick` smoke test in CI).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import finish, fio_job, fmt, read_tsv, stats, svg_bars  # noqa: E402  (bench/report.py, the block benchmark's report)

SETUPS = ["ferrite", "linux"]
DRIVER = {"ferrite": "ferrite", "linux": "linux-dd"}
GUESTS = {"ferrite": ("fA", "fB"), "linux": ("lA", "lB")}
COLOURS = {"ferrite": "#c0392b", "linux": "#2c7fb8"}
# job, title, metric, unit, digits, higher is better
JOBS = [
    ("g2g-tcp", "guest -> guest TCP (A -> B, sender's rate)", "mib_s", "MiB/s", 2, True),
    ("g2o-tcp", "guest -> outside TCP (A -> QEMU user net 10.0.2.100:9)", "mib_s", "MiB/s", 2, True),
    ("g2g-udp64", "guest -> guest 64-byte UDP, received (B's count)", "pps", "pkt/s", 0, True),
    ("g2g-ping", "guest -> guest ping round trip (median of the pings)", "rtt_ms", "ms", 3, False),
]
TARGET_JOB, TARGET_RATIO = "g2g-tcp", 1.5


def fio_net(path, direction):
    """rate figures of one fio net job's JSON (direction read or write), or None."""
    job = fio_job(path)
    s = None if job is None else job.get(direction)
    if not isinstance(s, dict):
        return None
    ios, ms, nbytes = s.get("total_ios", 0), s.get("runtime", 0), s.get("io_bytes", 0)
    # A window under a second is not a rate worth reporting.
    if ios <= 0 or ms < 1000:
        return None
    return {"mib_s": nbytes / 1048576.0 / (ms / 1000.0), "pps": ios / (ms / 1000.0),
            "bytes": nbytes, "ios": ios, "runtime_ms": ms}


def pings(path):
    """median and mean round trip (ms) of a ping job's replies, or None."""
    try:
        vals = sorted(float(l) for l in open(path) if l.strip())
    except (OSError, ValueError):
        return None
    if not vals:
        return None
    n = len(vals)
    med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return {"rtt_ms": med, "mean_ms": sum(vals) / n, "replies": n}


def figure(res, row):
    """The figures of one runs.tsv row, or None if the job gave none."""
    job, f, rx = row.get("job"), row.get("file", "-"), row.get("rxfile", "-")
    if row.get("rc") != "0":
        return None
    if job in ("g2g-tcp", "g2o-tcp") and f != "-":
        return fio_net(os.path.join(res, "raw", f), "write")
    if job == "g2g-udp64" and rx != "-":
        got = fio_net(os.path.join(res, "raw", rx), "read")
        sent = fio_net(os.path.join(res, "raw", f), "write") if f != "-" else None
        if got and sent and sent["pps"] > 0:
            # What limits the figure: the sender's own rate, or losses on the way.
            got["sent_pps"] = sent["pps"]
            got["delivered"] = got["pps"] / sent["pps"]
        return got
    if job == "g2g-ping" and f != "-":
        return pings(os.path.join(res, "raw", f))
    return None


def cpu_shares(res):
    """{(round, job, setup): {domain: share of one CPU during the job}} from cpu.tsv."""
    marks = {}
    for r in read_tsv(os.path.join(res, "cpu.tsv")):
        try:
            key = (r["round"], r["job"], r["setup"])
            marks.setdefault(key, {}).setdefault(r["when"], {})[r["domain"]] = (float(r["cpu_s"]), float(r["uptime"]))
        except (KeyError, ValueError):
            continue
    out = {}
    for key, m in marks.items():
        b, a = m.get("before", {}), m.get("after", {})
        shares = {}
        for dom in set(b) & set(a):
            wall = a[dom][1] - b[dom][1]
            if wall > 0:
                shares[dom] = (a[dom][0] - b[dom][0]) / wall
        out[key] = shares
    return out


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    res = args[0]
    check = "--check" in args

    results = {j[0]: {s: {} for s in SETUPS} for j in JOBS}
    bad_runs = []
    for r in read_tsv(os.path.join(res, "runs.tsv")):
        rnd, job, setup = r.get("round", ""), r.get("job"), r.get("setup")
        if not rnd.isdigit() or job not in results or setup not in SETUPS:
            continue
        fig = figure(res, r)
        if fig is None:
            bad_runs.append(f"round {rnd} {job} {setup}: rc={r.get('rc')} {r.get('detail', '')[:160]}")
            continue
        results[job][setup][int(rnd)] = fig
    rounds = sorted({k for j in results.values() for s in j.values() for k in s})
    cpu = cpu_shares(res)

    summary = {"rounds": rounds, "jobs": {}, "failed_runs": bad_runs,
               "note": "Absolute figures under QEMU TCG are not comparable across machines; compare the ratios of one run."}
    lines = []
    out = lines.append
    out("Ferrite's netback + switch vs a Linux network driver domain (xen-netback + bridge), one lab boot, "
        f"{len(rounds)} round(s), jobs interleaved set-up by set-up.")
    out("Medians over rounds, [min-max]. Ratios ferrite/linux are per round (adjacent runs), then median [range].")
    out("CPU: share of one CPU each domain used during the job (xl list), median over rounds; dd = driver domain.")
    out("Absolute figures under QEMU TCG are not comparable across machines: compare the ratios.")
    out("")
    hdr = f"{'job':<10} {'set-up':<14} {'figure':>30} {'dd CPU':>7} {'A CPU':>6} {'B CPU':>6} {'dom0':>6}"
    out(hdr)
    out("-" * len(hdr))
    for job, title, metric, unit, digits, higher in JOBS:
        js = {"title": title, "metric": metric, "unit": unit, "higher_is_better": higher, "setups": {}, "ratios": {}}
        for s in SETUPS:
            per = results[job][s]
            st = stats([per[r][metric] for r in per])
            shares = {}
            for role, dom in (("dd", DRIVER[s]), ("A", GUESTS[s][0]), ("B", GUESTS[s][1]), ("dom0", "Domain-0")):
                shares[role] = stats([cpu.get((str(r), job, s), {}).get(dom) for r in per])
            if st:
                js["setups"][s] = {metric: st, "cpu_share": {k: v for k, v in shares.items() if v},
                                   "per_round": {str(r): per[r] for r in sorted(per)}}

            def pct(v):
                return "-" if v is None else f"{100 * v['median']:.0f}%"
            out(f"{job:<10} {s:<14} {fmt(st, digits, ' ' + unit):>30} {pct(shares['dd']):>7} {pct(shares['A']):>6} "
                f"{pct(shares['B']):>6} {pct(shares['dom0']):>6}")
        both = [r for r in results[job]["ferrite"] if r in results[job]["linux"]]
        ratio = stats([results[job]["ferrite"][r][metric] / results[job]["linux"][r][metric]
                       for r in both if results[job]["linux"][r][metric] > 0])
        if ratio:
            js["ratios"]["ferrite/linux"] = ratio
        if job == "g2g-udp64":
            for s in SETUPS:
                per = results[job][s]
                sent = stats([per[r].get("sent_pps") for r in per])
                share = stats([per[r].get("delivered") for r in per])
                if sent:
                    js["setups"][s]["sent_pps"] = sent
                    js["setups"][s]["delivered_share"] = share
                    out(f"{'':<10} {s + ' sent':<14} {fmt(sent, 0, ' pkt/s'):>30}   (A's fio rate; received rate / sent rate {fmt(share, 2)})")
        better = "higher" if higher else "lower"
        out(f"{'':<10} {'ferrite/linux':<14} {'x' + fmt(ratio, 2):>30}   ({better} is better for Ferrite)")
        summary["jobs"][job] = js
        out("")

    setup = read_tsv(os.path.join(res, "setup.tsv"))
    ready = {}
    for r in setup:
        try:
            ready[f"{r['setup']}:{r['step']}"] = float(r["seconds"])
        except (KeyError, ValueError):
            pass
    summary["setup_seconds"] = ready
    out("Set-up: driver domain xl create -> ready; guests' xl create -> both up and reachable:")
    for s in SETUPS:
        rd, gu = ready.get(f"{s}:ready"), ready.get(f"{s}:guests-up")
        out(f"  {s:<8} ready {'-' if rd is None else '%.1f s' % rd:>8}   guests up {'-' if gu is None else '%.1f s' % gu:>8}")
    out("Memory: ferrite 32 MiB, linux-dd 256 MiB; both 1 vCPU; guests 1 vCPU each.")
    # What the driver domains counted (drops, queue lengths): where a figure is limited.
    counters = {}
    for name, fname in (("ferrite net", "ferrite-net.txt"), ("ferrite nic", "ferrite-nic.txt"), ("linux net", "linux-net.txt")):
        try:
            first = open(os.path.join(res, fname), errors="replace").readline().strip()
        except OSError:
            continue
        if first:
            counters[name] = first
            out(f"After the rounds, {name}: {first[:400]}")
    summary["counters"] = counters
    out("")

    ratio = summary["jobs"][TARGET_JOB]["ratios"].get("ferrite/linux")
    if ratio is None:
        verdict = "not measured"
    else:
        verdict = "met" if ratio["median"] >= TARGET_RATIO else "NOT met"
    summary["target"] = {"target": f"guest->guest TCP throughput, ferrite/linux >= {TARGET_RATIO}",
                         "median": None if ratio is None else ratio["median"], "verdict": verdict}
    have = "-" if ratio is None else f"x{ratio['median']:.2f}"
    out(f"Target (issue 12): guest->guest TCP ferrite/linux >= {TARGET_RATIO}: median {have}: {verdict}")
    missing = [f"{j[0]} {s}" for j in JOBS for s in SETUPS if not results[j[0]][s]]
    return finish(res, lines, summary, plot(summary), bad_runs, missing, check, bool(rounds))


def plot(summary):
    """One panel per job, one bar per set-up (median, whisker = range), the ratio under it."""
    pw, ph = 300, 230
    w, h = pw * len(JOBS) + 20, ph + 70
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         '<text x="10" y="18" font-size="14" font-weight="bold">Ferrite netback vs Linux netback driver domain '
         '(median of rounds, whisker = range; QEMU TCG, compare ratios only)</text>']
    for i, s in enumerate(SETUPS):
        x = 10 + i * 110
        o.append(f'<rect x="{x}" y="28" width="12" height="12" fill="{COLOURS[s]}"/><text x="{x + 16}" y="38">{s}</text>')
    for k, (job, title, metric, unit, digits, higher) in enumerate(JOBS):
        x0, y0 = 10 + k * pw, 50
        js = summary["jobs"].get(job, {})
        o.append(f'<text x="{x0 + 5}" y="{y0 + 14}" font-weight="bold">{job} ({unit}, {"higher" if higher else "lower"} is better)</text>')
        vals = {s: js.get("setups", {}).get(s, {}).get(metric) for s in SETUPS}
        base = y0 + ph - 40
        svg_bars(o, x0, pw, base, ph - 70, (40, 70, 110, 0), SETUPS, COLOURS, vals, digits)
        ratio = js.get("ratios", {}).get("ferrite/linux")
        if ratio:
            o.append(f'<text x="{x0 + 40}" y="{base + 30}">ferrite/linux x{ratio["median"]:.2f}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


if __name__ == "__main__":
    sys.exit(main())
