#!/usr/bin/env python3
"""Draws bench/results/results.json as an SVG (no dependencies): per experiment, one bar for the
service end to end, split into its stages, and one bar for the engine alone on the same data,
on a shared log-free linear scale per row (each row is scaled to its own longest bar, because
the experiments span three orders of magnitude), with the figures written beside the bars.

Usage: bench/chart.py [results.json] [chart.svg]
       bench/chart.py --table [results.json]     the results as a Markdown table (for README)
"""

import json
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = [  # (key, label, colour)
    ("upload", "upload", "#8da0cb"),
    ("ingest", "ingest", "#66c2a5"),
    ("plan", "plan", "#a6d854"),
    ("compare", "compare", "#fc8d62"),
    ("solve", "solve", "#e78ac3"),
    ("status_poll", "status poll", "#cccccc"),
    ("result_download", "result download", "#ffd92f"),
]
ENGINE_COLOUR = "#555555"
ORDER = ["10k-t0.95", "100k-t0.8", "100k-t0.95", "100k-1m-t0.95"]


def fmt_s(x):
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def fmt_rate(x):
    if not x:
        return "-"
    return f"{x / 1e3:.0f} k/s" if x < 1e6 else f"{x / 1e6:.0f} M/s" if x < 1e9 else f"{x / 1e9:.2f} G/s"


def draw(doc):
    exps = doc["experiments"]
    names = sorted(exps, key=lambda n: (next((i for i, o in enumerate(ORDER) if n.startswith(o) and
                                               n[len(o):] in ("", "-blocked")), 99), n))
    left, bar_w, right = 190, 520, 360
    row_h, bar_h = 62, 18
    top = 96
    width = left + bar_w + right
    height = top + row_h * len(names) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    m = doc.get("machine", {})
    out.append(f'<text x="10" y="22" font-size="16" font-weight="bold">PPRL service on the local stack: '
               f'end to end (stages) vs engine only (pprl link)</text>')
    out.append(f'<text x="10" y="40" fill="#444">{escape(str(m.get("cpu", "")))}, {m.get("cores")} cores, '
               f'commit {escape(str(m.get("git_commit")))}; each row scaled to its longest bar; '
               f'load = 1-min load average before the run</text>')
    x = 10
    for _, label, colour in STAGES:
        out.append(f'<rect x="{x}" y="52" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{x + 16}" y="62">{label}</text>')
        x += 24 + 7 * len(label)
    out.append(f'<rect x="{x}" y="52" width="12" height="12" fill="{ENGINE_COLOUR}"/>'
               f'<text x="{x + 16}" y="62">engine only</text>')
    out.append(f'<text x="{left + bar_w + 10}" y="84" fill="#444">e2e/engine · comparisons/s (compare stage) · '
               f'recall/precision</text>')

    for i, name in enumerate(names):
        e = exps[name]
        y = top + i * row_h
        out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{escape(name)}</text>')
        out.append(f'<text x="10" y="{y + 30}" fill="#444">{e["a"]:,} × {e["b"]:,}, t={e["threshold"]}</text>')
        if "error" in e and ("e2e" not in e or "engine" not in e):
            out.append(f'<text x="{left}" y="{y + 22}" fill="#b00">failed: {escape(e["error"][:90])}</text>')
            continue
        e2e, eng = e.get("e2e"), e.get("engine")
        longest = max((e2e or {}).get("total_s", 0), (eng or {}).get("wall_s", 0)) or 1
        scale = bar_w / longest
        if e2e:
            x = left
            for key, label, colour in STAGES:
                w = e2e["stages_s"].get(key, 0) * scale
                if w > 0:
                    out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                               f'<title>{label}: {e2e["stages_s"][key]:.3f} s</title></rect>')
                x += w
            out.append(f'<text x="{x + 4:.1f}" y="{y + 13}">{fmt_s(e2e["total_s"])} '
                       f'(load {e2e["load_before"][0]})</text>')
        if eng:
            w = eng["wall_s"] * scale
            out.append(f'<rect x="{left}" y="{y + bar_h + 4}" width="{w:.1f}" height="{bar_h}" fill="{ENGINE_COLOUR}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 2 * bar_h + 1}">{fmt_s(eng["wall_s"])} '
                       f'(load {eng["load_before"][0]})</text>')
        if e2e and eng:
            acc = e2e["accuracy"]
            out.append(f'<text x="{left + bar_w + 10}" y="{y + 13}">{e["e2e_over_engine"]:.2f}× · '
                       f'{fmt_rate(e2e.get("comparisons_per_s_compare_stage"))} · '
                       f'R {acc["recall"]:.3f} / P {acc["precision"]:.3f}</text>')
            mem = e2e.get("peak_memory_mib", {})
            mem_txt = ", ".join(f"{k} {v:.0f}" for k, v in sorted(mem.items()))
            out.append(f'<text x="{left + bar_w + 10}" y="{y + 31}" fill="#444" font-size="11">'
                       f'{e2e["comparisons"]:,} cmp; peak MiB: {escape(mem_txt)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def table(doc):
    rows = ["| experiment | comparisons | engine only | end to end | e2e / engine | compare stage | peak MiB (fan-out / compare / solve) | recall / precision | load (engine, e2e) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(doc["experiments"], key=lambda n: (next((i for i, o in enumerate(ORDER) if n.startswith(o) and
                                                               n[len(o):] in ("", "-blocked")), 99), n)):
        e = doc["experiments"][name]
        e2e, eng = e.get("e2e"), e.get("engine")
        if not (e2e and eng):
            rows.append(f"| {name} | | | | | | | | failed or not run: {e.get('error', '')[:60]} |")
            continue
        mem = e2e["peak_memory_mib"]
        acc = e2e["accuracy"]
        rows.append(f"| {name} | {e2e['comparisons']:,} | {fmt_s(eng['wall_s'])} | {fmt_s(e2e['total_s'])} | "
                    f"{e['e2e_over_engine']:.2f}× | {fmt_s(e2e['stages_s']['compare'])}, {fmt_rate(e2e.get('comparisons_per_s_compare_stage'))} | "
                    f"{mem.get('fan-out', 0):.0f} / {mem.get('compare', 0):.0f} / {mem.get('solve', 0):.0f} | "
                    f"{acc['recall']:.3f} / {acc['precision']:.3f} | {eng['load_before'][0]}, {e2e['load_before'][0]} |")
    return "\n".join(rows) + "\n"


def main(argv):
    if len(argv) > 1 and argv[1] == "--table":
        src = Path(argv[2]) if len(argv) > 2 else ROOT / "bench" / "results" / "results.json"
        print(table(json.loads(src.read_text())), end="")
        return
    src = Path(argv[1]) if len(argv) > 1 else ROOT / "bench" / "results" / "results.json"
    dst = Path(argv[2]) if len(argv) > 2 else src.with_name("chart.svg")
    dst.write_text(draw(json.loads(src.read_text())))
    print(f"bench: wrote {dst}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
