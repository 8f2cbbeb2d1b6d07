"""One self-contained HTML page (``report.html``) and ``report.json`` with every number, for a distillation.

Inputs are run folders: a student, its teacher, optionally a base (the student's architecture trained
without distillation) and groups of runs (``{"KD": [seed0, seed1], "CE": [...]}``) for statistics over
seeds. The page is a list of sections, one module each under ``sections/`` (:mod:`.context` says what a
section is); a skipped section is replaced by a line saying why. Figures are PNGs embedded as base64; the
page loads nothing from outside. Every comparison to "the teacher" uses the one teacher run of the report
(``--teacher``). Models are evaluated in float32 and eval mode on the chosen split without augmentation.
"""
from __future__ import annotations

import html
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DistillscopeError
from . import sections  # noqa: F401  (registers every section)
from .context import REGISTRY, ReportContext, ReportSettings, Section, SectionSkipped

SECTIONS: dict[str, tuple[str, Callable[[ReportContext], Section]]] = {
    name: (REGISTRY.info[name]["title"], REGISTRY.get(name)) for name in sorted(REGISTRY.names(), key=lambda n: REGISTRY.info[n]["order"])
}


def chosen_sections(only: list[str] | None, skip: list[str]) -> list[str]:
    for name in [*(only or []), *skip]:
        if name not in SECTIONS:
            raise DistillscopeError(f"unknown report section '{name}'; valid: {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if (only is None or name in only) and name not in skip]


def build_report(settings: ReportSettings) -> dict:
    """Compute the chosen sections and write ``report.html`` and ``report.json`` into a new folder ``settings.out``."""
    from tqdm.auto import tqdm

    out = Path(settings.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistillscopeError(f"--out '{out}' already exists and is not empty; choose a new folder")
    names = chosen_sections(settings.only, settings.skip)
    started = time.perf_counter()
    ctx = ReportContext(settings)
    done, skipped, seconds = {}, {}, {}
    for name in tqdm(names, desc="report", disable=not settings.progress):
        t0 = time.perf_counter()
        try:
            done[name] = SECTIONS[name][1](ctx)
        except (SectionSkipped, DistillscopeError) as reason:
            skipped[name] = str(reason)
        seconds[name] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": asdict(settings), "student": str(ctx.student), "teacher": str(ctx.teacher), "base": str(ctx.base) if ctx.base else None,
        "groups": {g: [{"run": str(r), "seed": ctx.summary(r).get("seed")} for r in runs] for g, runs in ctx.groups.items()},
        "data": ctx.data.spec if done else None, "split": settings.split, "images": len(ctx.targets) if done else None,
        "sections": {name: {"title": SECTIONS[name][0], "basis": _plain(s.basis), "numbers": s.numbers} for name, s in done.items()},
        "skipped": skipped, "seconds": {**seconds, "total": round(time.perf_counter() - started, 2)},
    }
    (out / "report.json").write_text(json.dumps(_jsonable(record), indent=1))
    (out / "report.html").write_text(_page(ctx, names, done, skipped, record))
    return {"html": out / "report.html", "json": out / "report.json", "skipped": skipped, "seconds": record["seconds"]}


def _plain(text: str) -> str:
    return text.replace("<code>", "").replace("</code>", "").replace("&amp;", "&")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}header p{margin:2px 0;opacity:.9}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #dde2e7;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1d3557;text-decoration:none;font-size:13px}nav a.off{color:#98a2ad}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:14px 20px;margin:16px 0}
h2{margin:0 0 6px;font-size:18px;color:#1d3557}.basis{color:#56606b;font-size:12.5px;margin:0 0 10px}
img{max-width:100%;height:auto;display:block;margin:10px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e3e7eb;padding:4px 10px;text-align:left}th{background:#eef2f6}
tbody tr:nth-child(even){background:#fafbfc}.note{color:#56606b;font-size:12.5px}
.skipped{color:#8a5a00;background:#fff8e6;border-color:#f1d9a6}
code{font-size:12.5px}#page-check{font-size:11px;color:#98a2ad}
.figs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.figs img{max-width:calc(50% - 4px);margin:4px 0}
"""

CHECK_JS = """
window.reportErrors=[];
window.addEventListener('error',function(e){window.reportErrors.push(e.message||('failed to load '+(e.target&&e.target.tagName)))},true);
window.addEventListener('load',function(){
 var imgs=Array.prototype.slice.call(document.images),bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)});
 document.body.setAttribute('data-images',bad.length?'broken:'+bad.length:'ok:'+imgs.length);
 document.body.setAttribute('data-errors',String(window.reportErrors.length));
 document.body.setAttribute('data-height',String(document.documentElement.scrollHeight));
 document.getElementById('page-check').textContent=imgs.length+' figures, '+bad.length+' not decoded; '+\
window.reportErrors.length+' script errors'+(window.reportErrors.length?': '+window.reportErrors.join(' | '):'');
});
"""


def _page(ctx: ReportContext, names: list[str], done: dict[str, Section], skipped: dict[str, str], record: dict) -> str:
    groups = "; ".join(f"{html.escape(g)}: seeds {ctx.seeds(g)}" for g in ctx.groups)
    student = ctx.summary(ctx.student)
    nav = "".join(f'<a href="#{n}"{"" if n in done else " class=off"}>{html.escape(SECTIONS[n][0])}</a>' for n in names)
    parts = []
    for name in names:
        title = html.escape(SECTIONS[name][0])
        if name in done:
            s = done[name]
            parts.append(f'<section id="{name}"><h2>{title}</h2><p class="basis">Computed on: {s.basis}. '
                         f'{record["seconds"][name]} s.</p>{s.html}</section>')
        else:
            parts.append(f'<section id="{name}" class="skipped"><h2>{title}</h2><p>Not shown: {html.escape(skipped[name])}</p></section>')
    data = html.escape(record["data"] or "–")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>distillscope report: {html.escape(ctx.label(ctx.student))}</title><script>{CHECK_JS}</script><style>{CSS}</style></head>
<body><header><h1>What {html.escape(student.get('student', '?'))} ({html.escape(student.get('method', '?'))}) learned from its teacher</h1>
<p>student <code>{html.escape(str(ctx.student))}</code> · teacher <code>{html.escape(str(ctx.teacher))}</code>\
{' · base <code>' + html.escape(str(ctx.base)) + '</code>' if ctx.base else ''}</p>
<p>data <code>{data}</code>, {ctx.settings.split} split{', ' + format(record['images'], ',') + ' images' if record['images'] else ''}\
 · groups: {groups} · {record['seconds']['total']} s</p></header>
<nav>{nav}</nav><main>{''.join(parts)}<p id="page-check"></p></main></body></html>
"""


def write_demo_report(demo_folder: str | Path, **options) -> Path:
    """The report of ``make demo``'s KD student (teacher, CE student as base; groups over the demo's seeds) in
    ``demo_folder/report``, on the first 1,000 test images (bench/report_cost.py measures the cost); returns the path of
    ``report.html``. ``options``: other :class:`ReportSettings` fields (e.g. ``limit=None`` for every image)."""
    folder = Path(demo_folder)
    seeds = sorted(folder.glob("seed*/kd_student"), key=lambda p: int(p.parent.name[4:])) or [folder / "kd_student"]
    roots = [p.parent for p in seeds]
    groups = {"KD student": [str(r / "kd_student") for r in roots], "CE student": [str(r / "ce_student") for r in roots],
              "teacher": [str(r / "teacher") for r in roots]}
    settings = ReportSettings(out=str(folder / "report"), student=groups["KD student"][0], teacher=groups["teacher"][0],
                              base=groups["CE student"][0], groups=groups, **{"limit": 1000, **options})
    return build_report(settings)["html"]
