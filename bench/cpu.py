#!/usr/bin/env python3
"""Splits callgrind's counts of the cost benchmark by stage (bench/cpu.sh).

Input: one callgrind dump per workload (--separate-callers: every cost line
carries its full call chain; line positions: the source line, also of
inlined code). Each instruction is attributed:

  * to the fakes (excluded) if a fake function is on its call chain or its
    source line is in a fake (the fake NVMe controller and DMA memory, the
    fake grant table, event channels and shared pages: in the product those
    are the device, Xen and plain memory);
  * else to the stage of the innermost function, of its source line first
    (inlined code keeps its source line), then of each frame outwards, that
    belongs to a stage (STAGES); "other" if none does (the poll loop, the
    turn's scheduling, library code of such frames).

Usage: cpu.py RESULTS_JSON COMMIT WORKLOADS_TXT DUMP... [--baseline JSON]
Writes RESULTS_JSON and prints the table (with the baseline beside it).
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Frames whose cost is the fakes' (substring of the demangled name).
FAKE_FRAMES = (
    "drivers::fake::",
    "xen::gnttab::fake::",
    "xen::evtchn::fake::",
    "xen::xenstore::fake::",
    "xen::shmem::VecShared",
    "<xen::shmem::VecShared",
)
# Source regions of the fakes: (path under the repo, first line of the fake part).
FAKE_SOURCES = (
    ("crates/drivers/src/fake/", 1),
    ("crates/xen/src/gnttab.rs", 194),
    ("crates/xen/src/evtchn.rs", 38),
    ("crates/xen/src/shmem.rs", 1),
    ("crates/xen/src/xenstore/fake.rs", 1),
)

STAGE_NAMES = ["ring+parse", "grant", "data", "submit", "complete", "respond", "other"]
STAGE_TITLES = {
    "ring+parse": "ring read + parse (request -> disk work)",
    "grant": "grant lookup / mapping",
    "data": "data movement (zeroed buffer allocation, copies)",
    "submit": "NVMe submit (blkback, view, driver)",
    "complete": "completion (disk poll, driver reap)",
    "respond": "response + notify",
    "other": "other (poll loop, scheduling)",
}
# (module key regex, function regex, stage); module keys look like
# "blkback/datapath", "drivers/nvme/io", "xen_ring/back".
STAGES = [
    (r"^xen_ring/back$", r"^(push_response|publish_responses)$", "respond"),
    (r"^xen_ring/", r".", "ring+parse"),
    (r"^blkback/ring$", r".", "ring+parse"),
    (r"^blkback/abi$", r"^(encode|response|to_bytes)", "respond"),
    (r"^blkback/abi$", r".", "ring+parse"),
    (r"^blkback/request$", r"^(response|status)", "respond"),
    (r"^blkback/request$", r".", "ring+parse"),
    (r"^blkback/datapath$", r"^(prepare|split_segments)$", "ring+parse"),
    (r"^blkback/budget$", r".", "ring+parse"),
    (r"^blkback/datapath$", r"^(respond|push_answer|finish)$", "respond"),
    (r"^blkback/datapath$", r"^(submit_deferred|submit_queued)$", "submit"),
    (r"^blkback/datapath$", r"^complete$", "complete"),
    (r"^blkback/grants$", r"^(map_grants|release_transient|shrink_persistent|copy_ops|spans|indirect_segments)$", "grant"),
    (r"^blkback/grants$", r".", "data"),
    (r"^blkback/zerocopy$", r"^(zero_copy_parts|zero_copy_list)$", "grant"),
    (r"^blkback/pgrants$", r".", "grant"),
    (r"^blkback/engine$", r"^(poll_disk|poll_vbd_disk|poll_retired|drain_check)$", "complete"),
    (r"^block/view$", r"^(submit|submit_to)$", "submit"),
    (r"^blkback/testing/disk$", r"^submit$", "submit"),
    (r"^blkback/testing/disk$", r"^poll$", "complete"),
    (r"^block/view$", r"^poll$", "complete"),
    (r"^drivers/nvme/io$", r"^(poll|reap_io|reap_admin|check_timeouts|finish)$", "complete"),
    (r"^drivers/nvme/io$", r".", "submit"),
    (r"^drivers/nvme/queue$", r"^(submit|advance_sq_tail|sq_full|is_full|next)$", "submit"),
    (r"^drivers/nvme/queue$", r".", "complete"),
    (r"^drivers/nvme/(prp|spec)$", r".", "submit"),
    (r"^drivers/nvme$", r"^submit", "submit"),
    (r"^drivers/nvme$", r"^poll", "complete"),
]
STAGES = [(re.compile(m), re.compile(f), s) for m, f, s in STAGES]

FN_DEF = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)")
_fn_maps = {}
# CPU_DEBUG=<stage>: print where that stage's instructions are.
DEBUG = os.environ.get("CPU_DEBUG")
TOP = {}


def repo_path(path):
    """The path under the repository, or None for library code."""
    p = os.path.realpath(path)
    if p.startswith(ROOT + "/crates/"):
        return p[len(ROOT) + 1 :]
    return None


def fn_at(rel, line):
    """The function whose body holds `line` of repository file `rel`."""
    m = _fn_maps.get(rel)
    if m is None:
        m = []
        try:
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                for n, text in enumerate(f, 1):
                    d = FN_DEF.match(text)
                    if d:
                        m.append((n, d.group(1)))
        except OSError:
            pass
        _fn_maps[rel] = m
    name = None
    for start, fn in m:
        if start > line:
            break
        name = fn
    return name


def module_of_file(rel):
    # crates/blkback/src/request/mod.rs -> blkback/request; crates/xen-ring/src/back.rs -> xen_ring/back
    parts = rel.split("/")
    crate = parts[1].replace("-", "_")
    mod = [p for p in parts[3:]]
    mod[-1] = mod[-1][:-3]
    if mod[-1] in ("mod", "lib"):
        mod = mod[:-1]
    return "/".join([crate] + mod)


def strip_generics(s):
    out, depth = [], 0
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def frame_key(name):
    """(module key, function) of a demangled frame name."""
    name = name.split("{{closure}}")[0].rstrip(":")
    m = re.match(r"^<(.+?) as .+?>::(\w+)", name)
    if m:
        path, fn = strip_generics(m.group(1)).split("::"), m.group(2)
        return "/".join(path[:-1]), fn
    m = re.match(r"^(.*)::<impl [^>]+(?:<[^>]*>)*>::(\w+)", name)
    if m:
        return m.group(1).replace("::", "/"), m.group(2)
    path = strip_generics(name).split("::")
    if len(path) < 2:
        return "", path[0]
    # a::b::Type::fn -> module a/b (a capitalised segment is a type)
    mod = [p for p in path[:-1] if not p[:1].isupper()]
    return "/".join(mod), path[-1]


def stage_of(mod, fn):
    for mr, fr, st in STAGES:
        if mr.search(mod) and fr.search(fn or ""):
            return st
    return None


def is_fake_source(rel, line):
    return rel is not None and any(rel.startswith(p) and line >= first for p, first in FAKE_SOURCES)


def parse_dump(path):
    """Instructions by stage ('fake' for the fakes') of one callgrind dump."""
    cost = {s: 0 for s in STAGE_NAMES + ["fake"]}
    files = {}
    ctx_cache = {}
    fn_ctx = None
    cur_file = None
    skip_next = False
    summary = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                if fn_ctx is None:
                    continue
                parts = line.split()
                if len(parts) < 2:
                    continue
                ln = int(parts[0]) if parts[0].isdigit() else 0
                ir = int(parts[1])
                st = attribute(fn_ctx, cur_file, ln, ctx_cache)
                cost[st] += ir
                if DEBUG == st or (DEBUG == "all" and st != "fake"):
                    rel = repo_path(cur_file) if cur_file and cur_file != "???" else None
                    where = f"{rel}:{fn_at(rel, ln)}" if rel else os.path.basename(cur_file or "?")
                    k = (st + " " + fn_ctx.split("'")[0][:80], where)
                    TOP[k] = TOP.get(k, 0) + ir
                continue
            if line.startswith("fn="):
                fn_ctx = line[3:]
                cur_file = files.get("fl")
            elif line.startswith("fl="):
                files["fl"] = line[3:]
                cur_file = line[3:]
            elif line.startswith(("fi=", "fe=")):
                cur_file = line[3:]
            elif line.startswith("calls="):
                skip_next = True
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    return cost, summary


def attribute(ctx, file, line, cache):
    key = (ctx, file, line)
    hit = cache.get(key)
    if hit is not None:
        return hit
    frames = ctx.split("'")
    rel = repo_path(file) if file and file != "???" else None
    # The disk buffer's zeroed allocation is the product's too (its
    # allocator is DmaBuf::zeroed): counted as data movement, not as the
    # fake's (whose frame bookkeeping stays excluded).
    for k in range(1, len(frames)):
        if "FrameAlloc::alloc" in frames[k] and "alloc::vec::from_elem" in frames[k - 1]:
            cache[key] = "data"
            return "data"
    if any(any(p in fr for p in FAKE_FRAMES) for fr in frames) or is_fake_source(rel, line):
        st = "fake"
    else:
        st = None
        if rel is not None:
            st = stage_of(module_of_file(rel), fn_at(rel, line))
        for fr in frames:
            if st or "cpubench::" in fr:
                break
            st = stage_of(*frame_key(fr))
        st = st or "other"
    cache[key] = st
    return st


def table(rows, base):
    head = f"{'workload':<16}" + "".join(f"{s:>11}" for s in STAGE_NAMES) + f"{'total':>9}{'-data':>9}{'fakes':>10}"
    out = [head]
    for name, r in rows.items():
        cells = "".join(f"{r['stages'][s]:>11.0f}" for s in STAGE_NAMES)
        out.append(f"{name:<16}{cells}{r['total']:>9.0f}{r['total_excl_data']:>9.0f}{r['fakes']:>10.0f}")
        b = base.get(name) if base else None
        if b:
            cells = "".join(f"{b['stages'].get(s, 0):>11.0f}" for s in STAGE_NAMES)
            out.append(f"{'  before':<16}{cells}{b['total']:>9.0f}{b['total_excl_data']:>9.0f}{b['fakes']:>10.0f}")
    return "\n".join(out)


def main():
    args = sys.argv[1:]
    baseline = None
    if "--baseline" in args:
        i = args.index("--baseline")
        baseline = args[i + 1]
        del args[i : i + 2]
    out_json, commit, workloads_txt, *dumps = args
    work = []
    with open(workloads_txt) as f:
        for line in f:
            p = line.split()
            if len(p) >= 4 and p[0] == "workload":
                work.append((p[1], int(p[3]), p[5] if len(p) > 5 else "?"))
    if len(work) != len(dumps):
        print(f"cpu.py: {len(work)} workloads but {len(dumps)} callgrind dumps", file=sys.stderr)
        return 1
    rows = {}
    for (name, n, persistent), dump in zip(work, dumps):
        cost, summary = parse_dump(dump)
        counted = sum(cost.values())
        if DEBUG:
            print(f"== {name}: top {DEBUG} (per request)")
            for (fr, where), ir in sorted(TOP.items(), key=lambda x: -x[1])[: int(os.environ.get("CPU_DEBUG_TOP", "25"))]:
                print(f"{ir / n:>8.0f}  {where:<50} {fr}")
            TOP.clear()
        if summary and abs(counted - summary) > summary // 1000:
            print(f"cpu.py: {dump}: attributed {counted} of {summary} instructions", file=sys.stderr)
        stages = {s: cost[s] / n for s in STAGE_NAMES}
        total = sum(stages.values())
        rows[name] = {
            "requests": n,
            "persistent": persistent == "true",
            "stages": stages,
            "total": total,
            "total_excl_data": total - stages["data"],
            "fakes": cost["fake"] / n,
            "collected": summary,
        }
    base = None
    if baseline:
        with open(baseline) as f:
            bj = json.load(f)
        base = bj.get("workloads", {})
        print(f"(before: stored result of commit {bj.get('commit', '?')})")
    result = {"commit": commit, "unit": "instructions per request", "stages": STAGE_TITLES, "workloads": rows}
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
    print("Instructions per request in Ferrite's own code (callgrind; fakes excluded, shown apart):")
    print(table(rows, base))
    print("  -data: total without data movement; fakes: the fake controller, DMA memory, grants,")
    print("  events and shared pages (excluded from every other column).")
    print("Stages: " + "; ".join(f"{k} = {v}" for k, v in STAGE_TITLES.items()))
    missing = [n for n, r in rows.items() if not r["total"] > 0]
    if missing:
        print(f"cpu.py: no figure for {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"results: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
