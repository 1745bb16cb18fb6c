#!/usr/bin/env python3
"""Run QEMU, follow its serial log, report the lab's marker lines, never hang.

usage: monitor.py --timeout S --serial FILE --pidfile FILE -- QEMU-COMMAND...

Marker lines written by dom0 (lab/dom0/common.sh):
  LAB-STEP <name> <dom0-uptime> <text>   progress
  LAB-INFO <text>                        shown as is
  LAB-TEST <name> PASS|FAIL|SKIP <detail> a result (SKIP: does not apply to this run)
  LAB-DONE <dom0-uptime>                 the mode script finished
Exit status: 0 if LAB-DONE came and no test failed; 1 otherwise (timeout,
crash, FAIL); 75 if the boot stalled: no LAB-STEP line within --boot-deadline
seconds (dom0's /init never ran, so no test started and nothing touched the
disks: the caller may boot again).  Seen in CI: dom0's kernel stopped for good
under TCG while loading its X.509 certificates.  QEMU is killed at the timeout, or shortly after LAB-DONE if it
does not power off by itself.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

MARK = re.compile(r"(LAB-(?:STEP|INFO|TEST|DONE)\b.*)")
# Milestones from Xen and Linux worth a progress line, and fatal signs.
MILESTONES = [
    (re.compile(r"\(XEN\) (\[[^]]*\] )?Xen version"), "Xen is booting"),
    (re.compile(r"\(XEN\) (\[[^]]*\] )?\*\*\* Building a PV Dom0"), "Xen builds dom0"),
    (re.compile(r"\(XEN\) (\[[^]]*\] )?Freed \d+kB init memory"), "Xen starts dom0's kernel"),
]
# Userspace crashes in dom0 (the shell reports them on the console): counted and
# reported, because they make any test result after them suspect.
CRASH = re.compile(r"Segmentation fault|malloc\(\)|general protection fault|segfault at")
FATAL = [
    re.compile(r"Panic on CPU"), re.compile(r"Kernel panic - not syncing"),
    re.compile(r"\(XEN\) (\[[^]]*\] )?Domain 0 crashed"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--serial", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--grace", type=float, default=20, help="seconds QEMU gets to exit after LAB-DONE")
    ap.add_argument("--boot-deadline", type=float, default=180,
                    help="seconds until dom0's first LAB-STEP (a normal boot takes 10-20 s)")
    ap.add_argument("--expect", default="", help="test names that must report (missing ones fail)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd

    open(a.serial, "wb").close()
    qlog = open(os.path.join(os.path.dirname(a.serial), "qemu.log"), "wb")
    t0 = time.monotonic()
    qemu = subprocess.Popen(cmd, stdout=qlog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    open(a.pidfile, "w").write("%d\n" % qemu.pid)

    def say(msg):
        print("[qemu %6.1fs] %s" % (time.monotonic() - t0, msg), flush=True)

    def kill(why):
        say("stopping QEMU (pid %d): %s" % (qemu.pid, why))
        try:
            os.killpg(qemu.pid, signal.SIGTERM)
            qemu.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(qemu.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        qemu.wait()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    say("QEMU started (pid %d)" % qemu.pid)
    tests, done, fatal, last_step = [], None, None, t0
    stepped, stalled = False, False
    crashes = 0
    seen_milestones = set()
    pos, partial = 0, b""
    end_by = t0 + a.timeout
    try:
        while True:
            with open(a.serial, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                for rx, text in ([] if "LAB-" in line else MILESTONES):
                    if text not in seen_milestones and rx.search(line):
                        seen_milestones.add(text)
                        say(text)
                if fatal is None and any(rx.search(line) for rx in FATAL):
                    fatal = line.strip()
                    say("FATAL: " + fatal)
                m = MARK.search(line)
                if not m:
                    if CRASH.search(line):
                        crashes += 1
                    continue
                mark = m.group(1)
                now = time.monotonic()
                stepped = True
                if mark.startswith("LAB-STEP"):
                    parts = mark.split(None, 3)
                    name = parts[1] if len(parts) > 1 else "?"
                    text = parts[3] if len(parts) > 3 else ""
                    say("%-14s %s  (+%.1f s since previous step)" % (name, text, now - last_step))
                    last_step = now
                elif mark.startswith("LAB-TEST"):
                    parts = mark.split(None, 3)
                    if len(parts) >= 3:
                        tests.append((parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
                    say(mark)
                elif mark.startswith("LAB-DONE"):
                    done = now
                    say("LAB-DONE: the mode script finished")
                    end_by = min(end_by, now + a.grace)
                else:
                    say(mark[len("LAB-INFO "):] if mark.startswith("LAB-INFO ") else mark)
            if qemu.poll() is not None:
                if partial:
                    partial += b"\n"
                    continue
                say("QEMU exited (status %d)" % qemu.returncode)
                break
            if fatal is not None:
                time.sleep(2)  # let the rest of the panic message reach the log
                kill("fatal error on the console")
                break
            if not stepped and time.monotonic() - t0 > a.boot_deadline:
                stalled = True
                kill("boot stalled: no LAB-STEP from dom0 after %.0f s" % a.boot_deadline)
                break
            if time.monotonic() > end_by:
                kill("LAB-DONE seen, QEMU did not power off" if done else "timeout after %.0f s" % a.timeout)
                break
            time.sleep(0.2)
    except KeyboardInterrupt as e:
        kill("interrupted (%s)" % (e or "SIGINT"))
        print("==== lab run interrupted: no results ====", flush=True)
        return 130
    finally:
        if qemu.poll() is None:
            kill("monitor exiting")

    total = time.monotonic() - t0
    if stalled:
        print("==== boot stalled after %.1f s in QEMU: no test ran ====" % total, flush=True)
        return 75
    print("", flush=True)
    print("==== lab results (%.1f s in QEMU) ====" % total)
    reported = {t[0] for t in tests}
    for name in a.expect.split():
        if name not in reported:
            tests.append((name, "FAIL", "no LAB-TEST line for this test"))
            print("LAB-TEST %s FAIL no LAB-TEST line for this test (the run ended first)" % name)
    failed = [t for t in tests if t[1] not in ("PASS", "SKIP")]
    for name, verdict, detail in tests:
        print("  %-14s %s  %s" % (name, verdict, detail))
    if not tests:
        print("  (no LAB-TEST lines)")
    if crashes:
        print("  WARNING: %d process crash line(s) on dom0's console (Segmentation fault etc.): results may be unreliable" % crashes)
    ok = done is not None and not failed and fatal is None
    if done is None:
        print("  LAB-DONE never came: %s" % ("fatal error: " + fatal if fatal else "timeout or crash"))
    print("  overall: %s" % ("PASS" if ok else "FAIL"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
