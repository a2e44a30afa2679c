#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The driver-size figure: how much of a driver is memory management, and
how much of it calls GMEM, for lib/test_hmm.c (the HMM mirror device) and
lib/test_gmem.c (the same device on GMEM).

    driver-size.py LINUX-TREE

Counted on code lines only (no blank line, no comment).  A line is
"core-MM" if it names a core memory-management interface of the kernel
(CORE_MM below: page allocation, struct page and folios, ZONE_DEVICE, HMM,
migration, MMU notifiers, the mmap lock and VMAs, GUP, CPU page mappings);
a function is memory management if any of its lines is.  A line "calls
GMEM" if it names GMEM's C API (gm_*() functions, GM_* constants, struct
gm_*).  The device MMU of test_gmem.c is its struct gm_mmu operations and
the device page table they keep (the functions MMU_FUNCS names, and the
table's struct), as the simulated NPU's figure counts its GmMmu
implementation.  make series puts the table in the cover letter."""

import re
import sys

CORE_MM = re.compile(r"\b(" + "|".join([
    r"hmm_range_\w+", r"hmm_pfns?\w*", r"HMM_PFN_\w+", r"migrate_\w+", r"MIGRATE_\w+",
    r"mmu_interval_\w+", r"mmu_notifier_\w+", r"memremap_pages",
    r"memunmap_pages", r"\w*pgmap\w*", r"dev_pagemap\w*", r"zone_device\w*",
    r"is_device_\w+_page", r"is_zone_device_page", r"alloc_pages?\w*",
    r"__free_pages?", r"folio_\w+", r"\w+_folio\b", r"page_to_pfn",
    r"pfn_to_page", r"lock_page", r"unlock_page", r"put_page", r"get_page",
    r"vma_lookup", r"find_vma", r"mmap_(read|write)_(un)?lock",
    r"get_user_pages\w*", r"pin_user_pages\w*", r"make_device_exclusive",
    r"request_free_mem_region", r"release_mem_region", r"vm_insert_page",
    r"copy_highpage", r"memcpy_(to|from)_page", r"kmap\w*", r"is_zero_\w+",
    r"mmget\w*", r"mmput", r"mmgrab", r"mmdrop", r"VM_(READ|WRITE|PEER_SHARED)",
    r"BACKING_PAGE", r"xa_\w+", r"hugetlb\w*", r"vma_kernel_pagesize",
]) + r")\b")
GMEM = re.compile(r"\b(gm_\w+\s*\(|GM_\w+|struct gm_\w+)")
MMU_FUNCS = {"dmirror_devmem", "dmirror_prepare_page", "dmirror_copy_to_host",
             "dmirror_pmap_create", "dmirror_pmap_destroy",
             "dmirror_pmap_enter", "dmirror_pmap_release",
             "dmirror_tlb_invl", "dmirror_release", "dmirror_mmu",
             "dmirror_pt"}


def code_lines(path):
    """The lines of @path that are code: comments and blank lines out."""
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"),
                  text, flags=re.S)
    text = re.sub(r"//.*", "", text)
    return [l for l in text.split("\n") if l.strip()]


def units(lines):
    """[(name, [lines])]: top-level definitions (functions, structs,
    initialised tables), each from its first line to its closing brace at
    column 0; what lies between them is one unit per line, named ""."""
    out, cur, name = [], None, ""
    for line in lines:
        if cur is None:
            m = re.search(r"(\w+)\s*(\(|=|\{|$)", line) \
                if not line[0].isspace() else None
            if m and not line.rstrip().endswith(";") and \
                    not line.startswith("#"):
                cur, name = [line], m.group(1)
                if line.rstrip() == "}" or line.rstrip().endswith("};"):
                    out.append((name, cur))
                    cur = None
                continue
            out.append(("", [line]))
            continue
        cur.append(line)
        if line.startswith("}"):
            out.append((name, cur))
            cur = None
    if cur:
        out.append((name, cur))
    return out


def struct_name(unit_lines):
    m = re.match(r"struct (\w+) \{", unit_lines[0])
    return m.group(1) if m else None


def measure(path):
    lines = code_lines(path)
    mm_fn = mm_fn_lines = mmu = 0
    for name, body in units(lines):
        if struct_name(body) in MMU_FUNCS or name in MMU_FUNCS:
            mmu += len(body)
        if name and len(body) > 1 and any(CORE_MM.search(l) for l in body):
            mm_fn += 1
            mm_fn_lines += len(body)
    return {
        "code": len(lines),
        "core_mm_lines": sum(1 for l in lines if CORE_MM.search(l)),
        "mm_functions": mm_fn,
        "mm_function_lines": mm_fn_lines,
        "gmem_lines": sum(1 for l in lines if GMEM.search(l)),
        "gmem_calls": sum(len(re.findall(r"\bgm_\w+\s*\(", l)) for l in lines),
        "mmu_lines": mmu,
    }


def main():
    tree = sys.argv[1]
    hmm = measure(f"{tree}/lib/test_hmm.c")
    gm = measure(f"{tree}/lib/test_gmem.c")
    rows = [("code lines (no comment, no blank)", "code"),
            ("lines naming a core-MM interface", "core_mm_lines"),
            ("functions with such a line", "mm_functions"),
            ("  their lines", "mm_function_lines"),
            ("lines using the GMEM API", "gmem_lines"),
            ("  calls of GMEM functions", "gmem_calls"),
            ("device MMU (gm_mmu operations, page table)", "mmu_lines")]
    print(f"{'':44} {'test_hmm.c':>10} {'test_gmem.c':>11}")
    for label, key in rows:
        print(f"{label:44} {hmm[key]:>10} {gm[key]:>11}")


main()
