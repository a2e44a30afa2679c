#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The measured figures of the GMEM cover letter, from make bench's JSON.

Usage: series-cover.py build/bench/bench.json
Prints a plain-text table (one line per figure: GMEM, its first baseline,
the ratio and the target), or says where the figures come from when there
is no JSON.
"""
import datetime
import json
import os
import sys


def fmt(v, unit):
    if v is None:
        return "-"
    digits = {"GB/s": 3, "us": 1, "ns": 0, "B": 1}.get(unit, 2)
    return "%.*f %s" % (digits, v, unit)


def main():
    path = sys.argv[1]
    if not os.path.exists(path):
        print("(No build/bench/bench.json here: run `make bench`, which measures\n"
              "every figure in one boot of the GMEM kernel and one of the same tree\n"
              "with CONFIG_GMEM=n; README.md describes the method.)")
        return
    d = json.load(open(path))
    when = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
    boot = d.get("gmem_boot", {})
    print("Measured by `make bench` (%s UTC) in a QEMU guest with 2 vCPUs and" %
          when.strftime("%Y-%m-%d %H:%M"))
    print("simulated NPUs (%s), GMEM kernel %s." % (boot.get("npu", "?"),
                                                   boot.get("uname", "?").split(" ")[0]))
    print("Timings on these machines are noisy; the ratios, taken in the same boot,")
    print("are what matters.  Ratio = GMEM / baseline; target = this project's goal.")
    print()
    section = None
    met = total = 0
    for r in d.get("rows", []):
        if r.get("section") != section:
            section = r.get("section")
            print("%s:" % section)
        bl = (r.get("baselines") or [{}])[0]
        tgt = ""
        if bl.get("target"):
            total += 1
            met += 1 if bl.get("met") else 0
            tgt = " (target %s: %s)" % (bl["target"], "met" if bl.get("met") else "not met")
        ratio = bl.get("ratio")
        print("  %-34s %4s MiB %11s" % (r.get("figure", "?"), r.get("size_mib", ""),
                                           fmt(r.get("gmem"), r.get("unit", ""))))
        print("      vs %s: %s, %sx%s" % (
            bl.get("name", "?"), fmt(bl.get("value"), r.get("unit", "")),
            "%.2f" % ratio if ratio is not None else "-", tgt))
    print()
    print("Targets met: %d of %d (first baselines; build/bench/bench.txt has all)." % (met, total))


main()
