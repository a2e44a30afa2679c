#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Read what harness/guest/run-tests.sh left in a results directory (and in
its nofault/ subdirectory, the second boot of make check) and print one line
per test, the splats found in the kernel logs, and a last line "N passed,
M failed".  Exit status 0 only if nothing failed."""

import fnmatch
import os
import re
import sys

# Anything of these in the guest's kernel log is a failure of the run.
SPLATS = [
    r"\bBUG:", r"kernel BUG at", r"\bWARNING:", r"\bOops\b", r"Kernel panic",
    r"general protection fault", r"KASAN:", r"UBSAN:", r"KFENCE:",
    r"possible circular locking", r"possible recursive locking",
    r"inconsistent lock state", r"DEBUG_LOCKS_WARN_ON", r"suspicious RCU usage",
    r"self-detected stall", r"rcu: INFO: .*detected stall", r"soft lockup",
    r"hung_task", r"blocked for more than", r"unreferenced object",
    r"rust_panic", r"panicked at", r"Call Trace:",
]
SPLAT_RE = re.compile("|".join(SPLATS))
# The OOM killer's report prints a stack ("Call Trace:") that is no splat:
# oom_test wakes the killer on purpose.  The report runs from the first line
# to the kill.
OOM_START = re.compile(r"invoked oom-killer:")
OOM_END = re.compile(r"Out of memory( \(oom_kill_allocating_task\))?: Killed process|"
                     r"Memory cgroup out of memory: Killed process")
STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(.*)$")


def kunit(lines, suite_prefix):
    """Test cases of the KUnit suites named suite_prefix*, from KTAP."""
    results, suite, plan, seen = [], None, {}, {}
    for raw in lines:
        line = STAMP.sub("", raw.rstrip("\n"))
        m = re.match(r"^    # Subtest: (\S+)", line)
        if m:
            suite = m.group(1) if m.group(1).startswith(suite_prefix) else None
            if suite:
                seen[suite] = 0
            continue
        if suite is None:
            continue
        m = re.match(r"^    1\.\.(\d+)", line)
        if m:
            plan[suite] = int(m.group(1))
            continue
        m = RESULT.match(line[4:]) if line.startswith("    ") and \
            not line.startswith("     ") else None
        if m:
            ok = m.group(1) == "ok"
            skip = "# SKIP" in m.group(4)
            results.append((f"kunit {suite}.{m.group(3)}",
                            "SKIP" if skip else ("PASS" if ok else "FAIL")))
            seen[suite] += 1
            continue
        m = RESULT.match(line)
        if m and m.group(3) == suite:
            suite = None
    for s, n in seen.items():
        if plan.get(s) != n:
            results.append((f"kunit {s} (ran {n} of {plan.get(s, '?')} cases)",
                            "FAIL"))
    return results


# What the failed kselftest cases printed (their "# " lines, the last
# WHY_LINES of each), by result name: printed before the counts, so that a
# failure is diagnosable from the tail of the report (all CI shows).
WHY = {}
WHY_LINES = 8


def kselftest(path, name):
    """Top-level results of one kselftest_harness TAP output."""
    results, plan, said = [], None, []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^1\.\.(\d+)", line)
            if m:
                plan = int(m.group(1))
            if line.startswith("#  RUN "):
                said = []
            elif line.startswith("# "):
                said.append(line)
            m = RESULT.match(line)
            if m:
                skip = "# SKIP" in m.group(4)
                result = f"kselftest {name}:{m.group(3)}"
                results.append((result, "SKIP" if skip else
                                ("PASS" if m.group(1) == "ok" else "FAIL")))
                if m.group(1) != "ok":
                    WHY[result] = said[-WHY_LINES:]
    if plan is None or plan != len(results):
        results.append((f"kselftest {name} (ran {len(results)} of "
                        f"{plan if plan is not None else '?'} tests)", "FAIL"))
    return results


# Boots of make check besides the first: subdirectory of the results, and
# the prefix of their test names.  Only kselftests run there (no KUnit).
# (directory, prefix of its kselftest names, prefix of its KUnit suites)
EXTRA_BOOTS = [("nofault", "nofault:", "rust_doctests_kernel")]


def splat_lines(dmesg):
    """The lines of the kernel log that are splats, but the stack of an OOM
    killer's report."""
    splats, in_oom = [], False
    for line in dmesg:
        if OOM_START.search(line):
            in_oom = True
        elif in_oom and OOM_END.search(line):
            in_oom = False
        if SPLAT_RE.search(line) and not (in_oom and "Call Trace:" in line):
            splats.append(STAMP.sub("", line.rstrip()))
    return splats


def boot(out, label, prefix, kunit_suites):
    """Results, splat lines and problems of one boot's results directory."""
    results, problems = [], []
    where = f" ({label} boot)" if label else ""
    if not os.path.exists(os.path.join(out, "finished")):
        problems.append(f"the guest{where} did not finish the test run "
                        "(crash, hang or boot failure)")
    dmesg = []
    if os.path.exists(os.path.join(out, "dmesg")):
        with open(os.path.join(out, "dmesg"), errors="replace") as f:
            dmesg = f.readlines()
    k = kunit(dmesg, kunit_suites)
    if not k:
        problems.append(f"no {kunit_suites}* KUnit results in the kernel log{where}")
    results += k
    tap = sorted(f for f in os.listdir(out) if f.endswith(".tap"))
    if not tap:
        problems.append(f"no GMEM kselftest ran{where}")
    for f in tap:
        results += kselftest(os.path.join(out, f), prefix + f[:-4])
    splats = splat_lines(dmesg)
    if splats:
        problems.append(f"{len(splats)} splat line(s) in the kernel log "
                        f"(see {os.path.join(out, 'dmesg')})")
    leak = os.path.join(out, "kmemleak")
    if os.path.exists(leak) and os.path.getsize(leak) > 0:
        problems.append("kmemleak reports leaks (see %s)" % leak)
    return results, [f"{label}: {s}" if label else s for s in splats], problems


# The upstream hmm-tests on test_gmem (tools/testing/selftests/gmem/
# test_gmem.sh): its TAP file, and the list of its cases that are known not
# to pass, each with its reason.
HMM_TAP = "hmm_gmem"
HMM_KNOWN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "hmm-known.txt")


def hmm_known():
    """[(case glob, reason)] of harness/hmm-known.txt: one case per line, a
    tab, then "by design: ..." or "known bug: ..."."""
    known = []
    with open(HMM_KNOWN) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            case, _, reason = line.partition("\t")
            if not reason.startswith(("by design: ", "known bug: ")):
                sys.exit(f"{HMM_KNOWN}: no reason for {case}")
            known.append((case, reason))
    return known


def hmm_verdicts(results, problems):
    """Every hmm-tests case that does not pass must be in hmm-known.txt
    (and is then KNOWN, not a failure); a case listed by its exact name
    that passes is a failure too, so that the list stays true."""
    prefix = f"kselftest {HMM_TAP}:"
    known = hmm_known()
    out, ran, passed = [], 0, 0
    for name, status in results:
        if not name.startswith(prefix) or "(ran " in name:
            out.append((name, status, ""))
            continue
        case = name[len(prefix):]
        private = "_device_private." in case
        ran += private
        why = next((r for g, r in known if fnmatch.fnmatchcase(case, g)), None)
        exact = any(g == case for g, _ in known)
        if status == "PASS":
            passed += private
            if exact:
                out.append((name, "FAIL", "passes but is in "
                            "harness/hmm-known.txt: take it out"))
                continue
        elif why:
            status = "KNOWN-" + status
        else:
            status, why = "FAIL", "" if status == "FAIL" else \
                "skipped, and not in harness/hmm-known.txt"
        out.append((name, status, why or ""))
    if not ran:
        problems.append("hmm-tests did not run on test_gmem")
    return out, ran, passed


def hmm_summary(out):
    """One line for the cover letter: how many of hmm-tests' cases (the
    device-private variants) passed on test_gmem in the results in @out."""
    tap = os.path.join(out, HMM_TAP + ".tap")
    cases = [(n, s) for n, s in kselftest(tap, HMM_TAP)
             if "_device_private." in n] if os.path.exists(tap) else []
    if not cases:
        print("(no make check results here)")
        return
    passed = sum(1 for _, s in cases if s == "PASS")
    print(f"{passed} of its {len(cases)} cases pass")


def main():
    if sys.argv[1] == "--hmm-summary":
        hmm_summary(sys.argv[2])
        return 0
    out = sys.argv[1]
    results, splats, problems = boot(out, "", "", "gmem")
    for sub, prefix, suites in EXTRA_BOOTS:
        if os.path.isdir(os.path.join(out, sub)):
            r, s, p = boot(os.path.join(out, sub), sub, prefix, suites)
            results += r
            splats += s
            problems += p
    verdicts, hmm_ran, hmm_passed = hmm_verdicts(results, problems)
    results = [(n, s) for n, s, _ in verdicts]

    for name, status, why in verdicts:
        print(f"{status} {name}" + (f" ({why})" if why else ""))
    for name, status, _ in verdicts:
        if status == "FAIL":
            for line in WHY.get(name, []):
                print(f"WHY {name}: {line}")
    for s in splats[:20]:
        print(f"SPLAT {s}")
    for p in problems:
        print(f"ERROR {p}")
    passed = sum(1 for _, s in results if s == "PASS")
    failed = sum(1 for _, s in results if s == "FAIL") + len(problems)
    skipped = sum(1 for _, s in results if s == "SKIP")
    known = sum(1 for _, s in results if s.startswith("KNOWN-"))
    if skipped:
        print(f"({skipped} skipped)")
    print(f"(hmm-tests on test_gmem: {hmm_passed} of its {hmm_ran} "
          f"device-private cases passed; {known} cases known not to pass, "
          "see harness/hmm-known.txt)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
