#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make bench's report: read what harness/guest/bench.sh left in a results
directory (the GMEM boot) and its nogmem/ subdirectory (the CONFIG_GMEM=n
boot), print one table with each GMEM figure beside its baselines and the
ratio, and write the same as bench.txt, bench.json and bench.png (bandwidth
by size: GMEM, HMM and memcpy) into the output directory.

    bench-report.py RESULTS OUTDIR

Every ratio is GMEM / baseline, whatever the unit: above 1 is better for a
bandwidth, below 1 for a time.  Exit status 1 if a figure is missing, a
benchmark failed or a kernel log has a splat; targets not met are reported,
they do not fail the run (timings are never pass/fail)."""

import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pngchart  # noqa: E402
from report import SPLAT_RE, STAMP  # noqa: E402

SIZES = (2, 16, 256)
CHUNKS = (4, 2048)
LIMIT_FACTORS = (1, 2, 4)
DIRS = (("h2d", "H->D", "S->D"), ("d2h", "D->H", "D->S"))


def chunk_name(chunk):
    return "4 KiB" if chunk == 4 else "2 MiB"


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.readlines()
    except OSError:
        return []


def records(path, prog):
    """The key=value fields of each line of @path that starts with @prog;
    the words before the first key=value are in "words"."""
    out = []
    for line in read_lines(path):
        tok = line.split()
        if not tok or tok[0] != prog:
            continue
        rec = {"words": []}
        for t in tok[1:]:
            if "=" in t:
                k, v = t.split("=", 1)
                try:
                    rec[k] = float(v) if "." in v else int(v)
                except ValueError:
                    rec[k] = v
            elif len(rec) == 1:
                rec["words"].append(t)
        out.append(rec)
    return out


def hmm_results(path):
    """hmm-tests' benchmark_thp_migration output: {(size_mib, chunk_kib,
    "h2d"|"d2h"): GB/s}, the THP runs standing for 2 MiB chunks.  The test
    prints the mean time of its iterations in ms; the bandwidth is computed
    here again, in decimal GB/s like the rest."""
    out, size = {}, None
    for line in read_lines(path):
        m = re.match(r"^=== .* \(([\d.]+) MB\) ===", line)
        if m:
            size = float(m.group(1))
            continue
        m = re.match(r"^(Sys->Dev|Dev->Sys) Migration\s*\|\s*([\d.]+) ms\s*\|"
                     r"\s*([\d.]+) ms", line)
        if m and size is not None:
            d = "h2d" if m.group(1) == "Sys->Dev" else "d2h"
            nbytes = size * 1024 * 1024
            for chunk, ms in ((2048, m.group(2)), (4, m.group(3))):
                if float(ms) > 0:
                    out[(size, chunk, d)] = nbytes / (float(ms) / 1e3) / 1e9
    return out


class Report:
    def __init__(self, res):
        self.res = res
        self.nogmem = os.path.join(res, "nogmem")
        self.rows = []
        self.errors = []
        self.section = None

    def path(self, name, boot=None):
        return os.path.join(boot or self.res, name)

    def one(self, recs, what, **match):
        """The record of @recs whose fields are @match, or None (noted)."""
        for r in recs:
            if all(r.get(k) == v for k, v in match.items()):
                return r
        self.errors.append(f"missing: {what} " + " ".join(
            f"{k}={v}" for k, v in match.items()))
        return None

    def row(self, figure, size, value, unit, baselines, note=""):
        """@baselines: [(name, value, target text or "", met or None)], or
        with a fifth member, the figure that the target is about if it is
        not the ratio."""
        bl = []
        for name, bval, target, met, *about in baselines:
            ratio = value / bval if value is not None and bval else None
            b = {"name": name, "value": bval, "ratio": ratio,
                 "target": target, "met": met}
            if target:
                b["target_value"] = about[0] if about else ratio
            bl.append(b)
        self.rows.append({"section": self.section, "figure": figure,
                          "size_mib": size, "unit": unit, "gmem": value,
                          "baselines": bl, "note": note})

    def build(self):
        R = self.path
        memcpy = records(R("memcpy.out"), "npu_bench")
        prefetch = records(R("prefetch.out"), "npu_bench")
        faults = records(R("fault.out"), "npu_bench")
        cpufault = records(R("cpufault.out"), "npu_bench")
        oversub = records(R("oversub.out"), "npu_bench")
        inplace = records(R("inplace.out"), "npu_bench")
        pingpong = records(R("pingpong.out"), "npu_bench")
        readmostly = records(R("readmostly.out"), "npu_bench")
        tracking = records(R("tracking.out"), "tracking_bench")
        hmm = hmm_results(R("hmm-tests.out"))
        if not hmm:
            self.errors.append("missing: the HMM baseline (hmm-tests.out)")
        hmm_gmem = hmm_results(R("hmm-gmem.out"))
        if not hmm_gmem:
            self.errors.append("missing: hmm-tests on test_gmem (hmm-gmem.out)")
        self.raw = {"memcpy": memcpy, "prefetch": prefetch, "fault": faults,
                    "cpufault": cpufault, "oversub": oversub,
                    "inplace": inplace, "pingpong": pingpong,
                    "readmostly": readmostly,
                    "tracking": tracking,
                    "hmm": [{"size_mib": k[0], "chunk_kib": k[1],
                             "dir": k[2], "gbps": v}
                            for k, v in sorted(hmm.items())],
                    "hmm_on_gmem": [{"size_mib": k[0], "chunk_kib": k[1],
                                     "dir": k[2], "gbps": v}
                                    for k, v in sorted(hmm_gmem.items())]}
        self.chart = {}

        self.section = "Migration bandwidth, GB/s (10^9 B/s)"
        for chunk in CHUNKS:
            for size in SIZES:
                mc = self.one(memcpy, "memcpy", size_mib=size, chunk_kib=chunk)
                pf = self.one(prefetch, "prefetch", size_mib=size,
                              chunk_kib=chunk)
                mc_v = mc and mc.get("gbps")
                self.chart[(chunk, size, "memcpy")] = mc_v
                for key, gdir, hdir in DIRS:
                    v = pf and pf.get(f"{key}_gbps")
                    h = hmm.get((size, chunk, key))
                    if hmm and h is None:
                        self.errors.append(f"missing: HMM {hdir} {size} MiB")
                    self.chart[(chunk, size, f"GMEM {gdir}")] = v
                    self.chart[(chunk, size, f"HMM {hdir}")] = h
                    hmm_name = (f"HMM {hdir}, " +
                                ("4 KiB pages" if chunk == 4 else "THP"))

                    def vs(base, times):
                        return None if v is None or base is None \
                            else v >= times * base
                    # One hmadvise() per 4 KiB against one ioctl for the
                    # whole buffer: no target.  With 2 MiB calls, against
                    # both of HMM's runs: device->host >= 1.0x its 4 KiB
                    # pages and >= 0.8x its THP (ownership issue), host->
                    # device >= 2x its THP (2 MiB issue).
                    if chunk == 4:
                        bl = [(hmm_name, h, "", None)]
                    elif key == "d2h":
                        h4 = hmm.get((size, 4, key))
                        bl = [(f"HMM {hdir}, 4 KiB pages", h4, ">= 1.0x",
                               vs(h4, 1.0)),
                              (hmm_name, h, ">= 0.8x", vs(h, 0.8))]
                    else:
                        bl = [(hmm_name, h, ">= 2x", vs(h, 2.0))]
                    big = size == 256 and chunk == 2048
                    bl.append((f"memcpy, {chunk_name(chunk)} blocks", mc_v,
                               ">= 0.8x" if big else "",
                               (v >= 0.8 * mc_v if v and mc_v else None)
                               if big else None))
                    if mc and "copy_page_gbps" in mc:
                        how = {"movsq": "rep movsq"}.get(mc["copy_page"],
                                                         "movq loop")
                        bl.append((f"kernel copy_page(), {how}",
                                   mc["copy_page_gbps"], "", None))
                    self.row(f"prefetch {gdir}, {chunk_name(chunk)} calls",
                             size, v, "GB/s", bl)

        # One driver, one benchmark, two memory managers: lib/test_hmm
        # (ZONE_DEVICE pages, migrate_vma) and lib/test_gmem (its mirror
        # device on GMEM), hmm-tests' benchmark_thp_migration on each.
        self.section = ("Same driver, same test: hmm-tests "
                        "benchmark_thp_migration, GB/s")
        for chunk in CHUNKS:
            for size in SIZES:
                for key, _, hdir in DIRS:
                    g = hmm_gmem.get((size, chunk, key))
                    h = hmm.get((size, chunk, key))
                    if hmm_gmem and g is None:
                        self.errors.append(f"missing: test_gmem {hdir} "
                                           f"{size} MiB")
                    how = "4 KiB pages" if chunk == 4 else "THP buffer"
                    self.row(f"test_gmem {hdir}, {how}", size, g, "GB/s",
                             [(f"test_hmm {hdir}, {how}", h, "", None)],
                             "one MIGRATE ioctl for the buffer")

        self.section = "Device faults: NPU SUM32 job, us per page"
        for size in SIZES:
            for kind, name in (("zero", "zero-fill"), ("migrate", "migrate-in")):
                r = self.one(faults, "device faults", kind=kind, size_mib=size)
                if not r:
                    self.row(f"job on {name} faults", size, None, "us", [])
                    continue
                v, anon = r["us_per_page"], r["anon_us_per_page"]
                # 2 MiB issue: <= 1.0x a fresh anonymous 4 KiB CPU fault,
                # amortised, with density prefetch on; off beside it.
                self.row(f"job on {name} faults", size, v, "us",
                         [("CPU write, fresh anon 4 KiB page", anon,
                           "<= 1.0x", v <= anon if v and anon else None),
                          ("same job, density prefetch off",
                           r["us_per_page_noprefetch"], "", None)],
                         f"prefetch at 51%: {int(r['faults'])} of "
                         f"{r['pages']} pages faulted")

        self.section = "CPU fault back from the NPU, us per page"
        for size in SIZES:
            r = self.one(cpufault, "CPU faults", size_mib=size)
            v = r and r["us_per_page"]
            anon = r and r["anon_us_per_page"]
            self.row("CPU write, page on the NPU", size, v, "us",
                     [("CPU write, fresh anon 4 KiB page", anon, "<= 1.5x",
                       v <= 1.5 * anon if v and anon else None),
                      ("CPU write, fresh anon, THP",
                       r and r.get("anon_thp_us_per_page"), "", None)],
                     "one fault per 4 KiB page against one per 4 KiB "
                     "(target) and one per 2 MiB (THP)")

        self.section = ("Accessed-by: the NPU reads a CPU-written range, the "
                        "CPU reads it back, us per page")
        r = self.one(inplace, "in-place access", size_mib=16)
        for what, key, note in (
                ("NPU job + CPU read-back", "us_per_page",
                 "in place (MADV_ACCESSED_BY) against migrated there and "
                 "home"),
                ("NPU job", "npu_us_per_page", "first touch: faults"),
                ("CPU read-back", "cpu_us_per_page", "")):
            mig = r and r.get(f"migrate_{key}")
            v = r and r.get(f"inplace_{key}")
            self.row(f"{what}, in place", 16, v, "us/page",
                     [("migrated", mig, "", None)], note)

        self.section = ("Thrashing control: CPU writes, NPU reads, in turn, "
                        "us per page and turn")
        r = self.one(pingpong, "ping-pong", size_mib=4)
        self.row("10 turns, control on (threshold 2)", 4,
                 r and r.get("on_us_per_page_round"), "us/page",
                 [("control off", r and r.get("off_us_per_page_round"), "",
                   None)],
                 r and (f"pages moved: {r['on_moved']} on, "
                        f"{r['off_moved']} off") or "")

        self.section = ("Read duplication: npu0 and npu1 read a CPU-written "
                        "range in turn, us per page and job")
        r = self.one(readmostly, "read-mostly", size_mib=16)
        self.row("4 jobs each, read-mostly (copies)", 16,
                 r and r.get("readmostly_us_per_page_job"), "us/page",
                 [("without the advice (migrated)",
                   r and r.get("migrate_us_per_page_job"), "", None)],
                 r and (f"pages copied: {r['readmostly_copied']}, "
                        f"moved without: {r['migrate_moved']}") or "")

        self.section = "Oversubscription: NPU SUM32 over N x its memory, GB/s"
        base = self.one(oversub, "oversubscription", factor=1)
        for factor in LIMIT_FACTORS:
            r = base if factor == 1 else self.one(oversub, "oversubscription",
                                                  factor=factor)
            size = r and r["size_mib"]
            note = r and (f"limit {r['limit_mib']} MiB, "
                          f"{r['evictions_per_pass']} evictions/pass")
            self.row(f"{factor}x the NPU's memory", size, r and r["gbps"],
                     "GB/s", [("1x (it all fits)", base and base["gbps"],
                               "", None)], note or "")

        self.section = "Anonymous page faults, ns per fault (fault_bench)"

        def ns(path, what):
            v = [r["ns_per_fault"] for r in records(path, "fault_bench")]
            if not v:
                self.errors.append(f"missing: {what}")
                return None
            return statistics.median(v)

        nogmem = ns(R("fault_bench-nogmem.out", self.nogmem),
                    "fault_bench on the CONFIG_GMEM=n kernel")
        unused = ns(R("fault_bench-unused.out"), "fault_bench, hooks off")
        used = ns(R("fault_bench-used.out"), "fault_bench, hooks on")
        peer = ns(R("fault_bench-peer.out"), "fault_bench --peer-shared")
        for name, v, note in (
                ("ordinary memory, hooks off", unused,
                 "first in the boot: no MAP_PEER_SHARED yet, static key off"),
                ("ordinary memory, hooks on", used,
                 "after the GMEM benchmarks: static key on")):
            self.row(name, 256, v, "ns",
                     [("same, CONFIG_GMEM=n kernel", nogmem, "<= 1.01x",
                       v / nogmem <= 1.01 if v and nogmem else None)], note)
        self.row("peer-shared memory", 256, peer, "ns",
                 [("ordinary memory, same boot", used, "", None)])

        self.section = "Tracking memory, bytes per tracked page"
        # Pages only the CPU touched should cost about nothing (slab noise
        # aside); device-resident pages at most 8 bytes each.
        for case, figure, target in (("cpu", "pages only the CPU touched", 0.5),
                                     ("npu", "pages on the NPU", 8)):
            r = self.one(tracking, "tracking_bench", case=case)
            v = r and r["total_bytes_per_page"]
            self.row(figure, 256, v, "B",
                     [("the target", target, f"<= {target:g} B",
                       v <= target if v is not None else None, v)],
                     r and f"{r['xarray_bytes_per_page']} in XArray nodes, "
                     "entries in their slots" or "")

    def check_runs(self):
        for boot, label in ((self.res, "GMEM"), (self.nogmem, "CONFIG_GMEM=n")):
            if not os.path.exists(os.path.join(boot, "finished")):
                self.errors.append(f"the {label} guest did not finish "
                                   f"(see {os.path.join(boot, 'console.log')})")
            for line in read_lines(os.path.join(boot, "errors")):
                self.errors.append(f"{label} boot: {line.strip()}")
            splats = [STAMP.sub("", l.rstrip())
                      for l in read_lines(os.path.join(boot, "dmesg"))
                      if SPLAT_RE.search(l)]
            if splats:
                self.errors.append(f"{len(splats)} splat line(s) in the "
                                   f"{label} kernel log, first: {splats[0]}")

    def table(self):
        def num(v, unit=""):
            if v is None:
                return "n/a"
            s = f"{v:.3f}" if v < 10 else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")
            return f"{s} {unit}".rstrip()

        head = (f"{'figure':<34} {'size':>7}  {'GMEM':>11}  "
                f"{'baseline':<30} {'value':>11} {'ratio':>7}  target")
        lines, section, met, total = [head, "-" * len(head)], None, 0, 0
        unmet = []
        for r in self.rows:
            if r["section"] != section:
                section = r["section"]
                lines.append(f"== {section}")
            size = f"{r['size_mib']} MiB" if r["size_mib"] else ""
            first = f"{r['figure']:<34} {size:>7}  {num(r['gmem'], r['unit']):>11}  "
            for i, b in enumerate(r["baselines"] or [None]):
                lead = first if i == 0 else " " * len(first)
                if b is None:
                    lines.append(lead.rstrip())
                    continue
                ratio = f"{b['ratio']:.2f}x" if b["ratio"] is not None else "n/a"
                target = b["target"]
                if target:
                    total += 1
                    if b["met"]:
                        met += 1
                        target += ": yes"
                    else:
                        target += ": NO" if b["met"] is False else ": n/a"
                        unmet.append(f"{r['figure']}, {size} vs {b['name']}")
                lines.append(f"{lead}{b['name']:<30} "
                             f"{num(b['value'], r['unit']):>11} {ratio:>7}  "
                             f"{target}".rstrip())
            if r["note"]:
                lines.append(" " * 46 + f"({r['note']})")
        lines.append("-" * len(head))
        lines.append(f"targets met: {met} of {total}")
        self.targets = {"met": met, "total": total, "unmet": unmet}
        for e in self.errors:
            lines.append(f"ERROR {e}")
        return "\n".join(lines) + "\n"

    def png(self):
        series = [("GMEM H->D", (31, 119, 180)), ("GMEM D->H", (120, 170, 220)),
                  ("HMM S->D", (214, 39, 40)), ("HMM D->S", (240, 140, 130)),
                  ("memcpy", (90, 90, 90))]
        groups = [f"{s} MiB" for s in SIZES]
        panels = []
        for chunk, title in ((4, "4 KiB calls / pages"),
                             (2048, "2 MiB calls / THP")):
            panels.append((title, {(f"{s} MiB", name): self.chart.get(
                (chunk, s, name)) for s in SIZES for name, _ in series}))
        return pngchart.bar_chart("Bandwidth by size: GMEM prefetch, HMM "
                                  "migration, memcpy (same boot)", panels,
                                  series, groups, "GB/s, log scale")


def guest_info(res):
    info = {}
    for name in ("uname", "npu"):
        lines = read_lines(os.path.join(res, name))
        info[name] = " ".join(l.strip() for l in lines)
    for name in ("seconds",):
        lines = read_lines(os.path.join(res, name))
        info[name] = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    return info


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: bench-report.py RESULTS OUTDIR\n")
        return 2
    res, outdir = sys.argv[1], sys.argv[2]
    rep = Report(res)
    rep.build()
    rep.check_runs()
    text = rep.table()
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "bench.txt"), "w") as f:
        f.write(text)
    doc = {"ratio": "GMEM / baseline",
           "gmem_boot": guest_info(res),
           "nogmem_boot": guest_info(rep.nogmem),
           "rows": rep.rows, "targets": rep.targets, "errors": rep.errors,
           "raw": rep.raw}
    with open(os.path.join(outdir, "bench.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(os.path.join(outdir, "bench.png"), "wb") as f:
        f.write(rep.png())
    sys.stdout.write(text)
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
