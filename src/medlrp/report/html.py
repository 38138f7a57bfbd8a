"""The self-contained HTML report: one file, no network, no external files.

Pictures are ``data:`` URIs; CSS and JavaScript are inline. Per case: the image with one relevance layer
per method (opacity slider; for volumes a slice slider), the prediction and class probabilities, metrics
when a mask was given, and the static overlay pictures. Other commands add sections (a metrics table, a
note) with :class:`ReportSection`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlrp.io.image import atomic_path
from medlrp.report.markdown import markdown_to_html, table_html
from medlrp.report.views import bytes_data_uri

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d2a3a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.8;font-size:12px}main{padding:12px 24px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin:12px 0}
h2{font-size:17px;margin:0 0 6px}.facts{color:#4a5563;font-size:12px;margin:0 0 8px}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0;text-align:center}figcaption{font-size:12px;color:#4a5563}
.stack{position:relative;width:var(--w);height:var(--h);background:#000}
.stack img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}
.controls{display:flex;gap:18px;align-items:center;margin:8px 0;font-size:12px}
table.grid{border-collapse:collapse;font-size:12px;margin:6px 0}
table.grid td,table.grid th{border:1px solid #dde1e6;padding:3px 8px;text-align:left}
.bar{display:inline-block;height:8px;background:#c0392b;vertical-align:middle;margin-right:6px}
.pred{font-weight:600}.static img{max-width:100%}.failures li{color:#9b1c1c}
"""

_JS = """
(function () {
  document.querySelectorAll('section.case').forEach(function (box) {
    var dataNode = box.querySelector('script.view-data');
    var view = dataNode ? JSON.parse(dataNode.textContent) : null;
    var opacity = box.querySelector('input.opacity');
    var layers = box.querySelectorAll('img.layer');
    function setOpacity() {
      var value = Number(opacity.value) / 100;
      layers.forEach(function (img) { img.style.opacity = String(value); });
      box.querySelector('.opacity-value').textContent = opacity.value + '%';
    }
    if (opacity) { opacity.addEventListener('input', setOpacity); setOpacity(); }
    var slider = box.querySelector('input.slice');
    if (!slider || !view || view.dims !== 3) { return; }
    var bases = box.querySelectorAll('img.base');
    function show() {
      var i = Number(slider.value);
      bases.forEach(function (img) { img.src = view.base[i]; });
      layers.forEach(function (img) { img.src = view.layers[img.dataset.method][i]; });
      box.querySelector('.slice-value').textContent = view.slices[i] + ' / ' + view.total;
      box.dataset.slice = String(view.slices[i]);
    }
    slider.addEventListener('input', show);
    show();
  });
})();
"""


@dataclass
class ReportSection:
    """An extra part of the report (e.g. the metrics table of ``medlrp evaluate``).

    Attributes:
        title: Heading of the section.
        html: Trusted HTML body (built by medlrp code, e.g. with :func:`table_html`).
        markdown: Markdown body (escaped, so safe for any text); used when ``html`` is None.
    """

    title: str
    html: str | None = None
    markdown: str | None = None

    def render(self) -> str:
        """The section as HTML."""
        body = self.html if self.html is not None else markdown_to_html(self.markdown or "")
        return f'<section class="extra"><h2>{_e(self.title)}</h2>{body}</section>'


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_script(data: Any) -> str:
    # "</" would end the <script> element early; JSON allows the escaped form.
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _stack(view: dict[str, Any], index: int, method: str | None, width: int) -> str:
    height = max(1, round(width * float(view.get("aspect", 1.0))))
    base = view["base"][index] if view["dims"] == 3 else view["base"]
    layer = ""
    caption = "image"
    if method is not None:
        src = view["layers"][method][index] if view["dims"] == 3 else view["layers"][method]
        layer = f'<img class="layer" data-method="{_e(method)}" src="{src}" alt="{_e(method)} relevance">'
        caption = f"{method} (colour limits &plusmn;{view['limits'][method]:.3g})"
    return (
        f'<figure><div class="stack" style="--w:{width}px;--h:{height}px">'
        f'<img class="base" src="{base}" alt="image">{layer}</div><figcaption>{caption}</figcaption></figure>'
    )


def _viewer(record: dict[str, Any], case_id: str) -> str:
    view = record.get("_view")
    if not view:
        return ""
    start = int(view.get("start", 0))
    width = 300
    panels = [_stack(view, start, None, width)] + [_stack(view, start, m, width) for m in view["layers"]]
    controls = [
        '<label>overlay opacity <input class="opacity" type="range" min="0" max="100" value="70">'
        ' <span class="opacity-value">70%</span></label>'
    ]
    data = ""
    if view["dims"] == 3:
        n = len(view["slices"])
        controls.insert(
            0,
            f'<label>{_e(view.get("plane", "slice"))} slice <input class="slice" type="range" min="0" '
            f'max="{n - 1}" value="{start}" aria-label="slice"> <span class="slice-value"></span></label>',
        )
        payload = {k: view[k] for k in ("dims", "base", "layers", "slices", "total")}
        data = (
            f'<script type="application/json" class="view-data" id="{case_id}-data">'
            f"{_json_script(payload)}</script>"
        )
    return f'<div class="controls">{"".join(controls)}</div><div class="row">{"".join(panels)}</div>{data}'


def _probabilities(record: dict[str, Any]) -> str:
    probs = record.get("probabilities") or {}
    rows = []
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[:10]:
        bar = f'<span class="bar" style="width:{max(1, round(120 * p))}px"></span>'
        cls = ' class="pred"' if name == record.get("prediction_name") else ""
        rows.append(f"<tr><td{cls}>{_e(name)}</td><td>{bar}{p:.3f}</td></tr>")
    if not rows:
        return ""
    head = "<thead><tr><th>class</th><th>probability</th></tr></thead>"
    return f'<table class="grid">{head}<tbody>{"".join(rows)}</tbody></table>'


def _metrics(record: dict[str, Any]) -> str:
    metrics = record.get("metrics")
    if not metrics:
        return ""
    rows = [{"method": m, **values} for m, values in metrics.items()]
    return "<h3>Localisation against the mask</h3>" + table_html(rows)


def _static_overlays(record: dict[str, Any], out_dir: Path | None) -> str:
    if out_dir is None:
        return ""
    figures = []
    for method, output in (record.get("outputs") or {}).items():
        path = out_dir / str(output.get("overlay", ""))
        if output.get("overlay") and path.is_file():
            uri = bytes_data_uri(path.read_bytes())
            figures.append(
                f'<figure><img src="{uri}" alt="{_e(method)} overlay">'
                f"<figcaption>{_e(path.name)}</figcaption></figure>"
            )
    if not figures:
        return ""
    return f'<details class="static"><summary>overlay pictures</summary>{"".join(figures)}</details>'


def _case(record: dict[str, Any], number: int, out_dir: Path | None) -> str:
    case_id = f"case-{number}"
    facts = [
        f"{_e(record.get('kind', ''))} {_e('x'.join(str(s) for s in record.get('shape', [])))}",
        "spacing " + " x ".join(f"{s:.3g}" for s in record.get("spacing", [])) + " mm",
        f"target {_e(record.get('target_name', record.get('target')))}",
    ]
    timing = record.get("timing", {})
    if "total_s" in timing:
        facts.append(f"{timing['total_s']:.2f} s")
    pred = (
        '<p>prediction: <span class="pred">'
        f"{_e(record.get('prediction_name', record.get('prediction')))}</span>"
        f" (p = {record.get('probability', 0.0):.3f})</p>"
    )
    ids = record.get("identifiers")
    id_html = ""
    if ids:
        id_html = "<h3>Identifiers (kept on request)</h3>" + table_html(
            [{"tag": k, "value": v} for k, v in ids.items()]
        )
    body = [
        f'<h2>{_e(record.get("case", case_id))}</h2><p class="facts">{" &middot; ".join(facts)}</p>',
        pred,
        _viewer(record, case_id),
        '<div class="row">',
        _probabilities(record),
        _metrics(record),
        "</div>",
        _static_overlays(record, out_dir),
        id_html,
    ]
    return f'<section class="case" id="{case_id}">{"".join(body)}</section>'


def build_report(
    records: Sequence[dict[str, Any]],
    *,
    title: str = "medlrp report",
    sections: Sequence[ReportSection] = (),
    failures: Sequence[dict[str, str]] = (),
    run: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> str:
    """Build the report as one HTML string.

    Args:
        records: Case records as returned by :func:`medlrp.pipeline.explain_case` (with their ``_view``
            pictures) or read back from ``results.json`` (then only the static overlays are shown).
        title: Page title.
        sections: Extra sections placed before the cases (metrics tables, notes).
        failures: ``{"input": ..., "error": ...}`` for inputs that could not be explained.
        run: Facts about the run shown under the title (model, methods, ...).
        out_dir: Where the records' overlay files lie (to embed them); None leaves them out.
    """
    folder = Path(out_dir) if out_dir is not None else None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = [f"{_e(k)}: {_e(v)}" for k, v in (run or {}).items() if v not in (None, "", [], {})]
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: without it the browser asks for /favicon.ico, which fails for file:// pages.
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p>{' &middot; '.join([stamp, *facts])}</p></header><main>",
        *(s.render() for s in sections),
        *(_case(r, i, folder) for i, r in enumerate(records)),
    ]
    if failures:
        items = "".join(f"<li>{_e(f.get('error', ''))}</li>" for f in failures)
        parts.append(f'<section class="failures"><h2>Inputs not explained</h2><ul>{items}</ul></section>')
    if not records and not failures and not sections:
        parts.append("<section><p>No cases.</p></section>")
    parts.append(f"</main><script>{_JS}</script></body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, records: Sequence[dict[str, Any]], **options: Any) -> Path:
    """Build the report (see :func:`build_report`) and write it atomically to ``path``."""
    text = build_report(records, **options)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
