"""The self-contained HTML report: one file, no network, no external files.

Pictures are ``data:`` URIs; CSS and JavaScript are inline. Per case: the prediction beside the true
label (when known), the image with one relevance layer per method and the mask outline (opacity slider;
volumes as axial, coronal and sagittal planes with one slice slider each, opening at the relevance peak),
a colour bar saying what the colours mean, the class probabilities, localisation metrics with their
ranges when a mask was given, and the static overlay pictures. Other commands add sections (a metrics
table, a note) with :class:`ReportSection`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
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
.plane{margin:6px 0}.legend{font-size:12px;color:#4a5563;margin:6px 0;max-width:760px}
.colorbar{width:240px;height:12px;border:1px solid #999;
  background:linear-gradient(to right,#0000ff,#ffffff,#ff0000)}
.ticks{display:flex;justify-content:space-between;width:242px;font-size:11px}
.ok{color:#1b7a33;font-weight:600}.wrong{color:#b3261e;font-weight:600}.swatch{color:#00c800;font-weight:700}
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
    if (!view) { return; }
    box.querySelectorAll('input.slice').forEach(function (slider) {
      var plane = slider.dataset.plane;
      var pv = view.planes[plane];
      var holder = box.querySelector('.plane[data-plane="' + plane + '"]');
      function show() {
        var i = Number(slider.value);
        holder.querySelectorAll('img.base').forEach(function (img) { img.src = pv.base[i]; });
        holder.querySelectorAll('img.layer').forEach(function (img) {
          img.src = pv.layers[img.dataset.method][i];
        });
        if (pv.outline) {
          holder.querySelectorAll('img.outline').forEach(function (img) { img.src = pv.outline[i]; });
        }
        holder.querySelector('.slice-value').textContent = pv.slices[i] + ' / ' + pv.total;
        holder.dataset.slice = String(pv.slices[i]);
      }
      slider.addEventListener('input', show);
      show();
    });
  });
})();
"""

LEGEND = (
    "Relevance colours: <b>red: evidence for the class</b>, <b>blue: evidence against</b>, white or "
    "transparent: none. Signed scale, symmetric around zero: each method from &minus;max|R| to "
    "+max|R| of the case (the limit is under each picture)."
)


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


def _stack(plane: dict[str, Any], method: str | None, width: int, limit: float | None) -> str:
    height = max(1, round(width * float(plane.get("aspect", 1.0))))
    start = int(plane.get("start", 0))
    layer, caption = "", "image"
    if method is not None:
        src = plane["layers"][method][start]
        layer = f'<img class="layer" data-method="{_e(method)}" src="{src}" alt="{_e(method)} relevance">'
        caption = f"{_e(method)} (colours &plusmn;{limit:.3g})"
    if plane.get("outline"):
        layer += f'<img class="outline" src="{plane["outline"][start]}" alt="mask outline">'
    return (
        f'<figure><div class="stack" style="--w:{width}px;--h:{height}px">'
        f'<img class="base" src="{plane["base"][start]}" alt="image">{layer}</div>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _legend(view: dict[str, Any]) -> str:
    mask = any(p.get("outline") for p in view["planes"])
    outline = (
        ' <span class="swatch">&#9632;</span> Green line: the outline of the mask that the localisation '
        "metrics score against."
        if mask
        else ""
    )
    return (
        '<div class="legend"><div class="colorbar" role="img" aria-label="relevance colour bar: blue '
        'negative, white zero, red positive"></div><div class="ticks"><span>&minus;max|R| (against)</span>'
        f"<span>0</span><span>+max|R| (for)</span></div><p>{LEGEND}{outline}</p></div>"
    )


def _viewer(record: dict[str, Any], case_id: str) -> str:
    view = record.get("_view")
    if not view or "planes" not in view:
        return ""
    width = 300 if view["dims"] == 2 else 220
    blocks = []
    for plane in view["planes"]:
        panels = [_stack(plane, None, width, None)]
        panels += [_stack(plane, m, width, view["limits"][m]) for m in plane["layers"]]
        slider = ""
        if view["dims"] == 3:
            name = _e(plane["name"])
            slider = (
                f'<div class="controls"><label>{name} slice <input class="slice" data-plane="{name}" '
                f'type="range" min="0" max="{len(plane["slices"]) - 1}" value="{int(plane["start"])}" '
                f'aria-label="{name} slice"> <span class="slice-value"></span></label></div>'
            )
        blocks.append(
            f'<div class="plane" data-plane="{_e(plane["name"])}">{slider}<div class="row">'
            f"{''.join(panels)}</div></div>"
        )
    controls = (
        '<div class="controls"><label>overlay opacity <input class="opacity" type="range" min="0" '
        'max="100" value="70"> <span class="opacity-value">70%</span></label></div>'
    )
    data = ""
    if view["dims"] == 3:
        keys = ("base", "layers", "outline", "slices", "total")
        payload = {"planes": {p["name"]: {k: p[k] for k in keys} for p in view["planes"]}}
        data = (
            f'<script type="application/json" class="view-data" id="{case_id}-data">'
            f"{_json_script(payload)}</script>"
        )
    return controls + _legend(view) + "".join(blocks) + data


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


def _metric_ranges() -> dict[str, tuple[float, float]]:
    try:
        from medlrp.metrics.suite import METRIC_INFO
    except ImportError:  # the metrics package is optional for the report
        return {}
    return {name: (info.low, info.high) for name, info in METRIC_INFO.items()}


def _bound(value: float) -> str:
    return ("&minus;" if value < 0 else "") + "&infin;" if math.isinf(value) else f"{value:g}"


def _metrics(record: dict[str, Any]) -> str:
    """The case's localisation metrics per method; each column names its range, each cell carries it."""
    metrics = record.get("metrics")
    if not metrics:
        return ""
    ranges = _metric_ranges()
    names = list(dict.fromkeys(k for values in metrics.values() for k in values if not k.endswith("_error")))
    head = "".join(
        f"<th>{_e(n)} [{_bound(ranges[n][0])}, {_bound(ranges[n][1])}]</th>"
        if n in ranges
        else f"<th>{_e(n)}</th>"
        for n in names
    )
    rows = []
    for method, values in metrics.items():
        cells = []
        for n in names:
            v = values.get(n)
            attrs = f' data-metric="{_e(n)}"'
            if n in ranges:
                attrs += f' data-low="{ranges[n][0]}" data-high="{ranges[n][1]}"'
            text = f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else "&ndash;"
            if isinstance(v, float) and math.isfinite(v):
                attrs += f' data-value="{v!r}"'
            cells.append(f"<td{attrs}>{text}</td>")
        rows.append(f"<tr><td>{_e(method)}</td>{''.join(cells)}</tr>")
    return (
        "<div><h3>Localisation against the mask (range in brackets)</h3>"
        f'<table class="grid metrics"><thead><tr><th>method</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


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


def _truth(record: dict[str, Any]) -> str:
    """The true label beside the prediction, and whether they agree (``label_name`` in the record)."""
    label = record.get("label_name")
    if label is None:
        return 'true label: <span class="label">not known</span>'
    right = label == record.get("prediction_name")
    verdict = '<span class="ok">correct</span>' if right else '<span class="wrong">wrong</span>'
    return f'true label: <span class="label">{_e(label)}</span> ({verdict})'


def _region(record: dict[str, Any]) -> str:
    """A segmentation case's explained region (class, where, size, logit sum), or ``""``."""
    region = record.get("region")
    if not isinstance(region, dict):
        return ""
    voxels = ", ".join(f"{_e(k)} {v}" for k, v in (record.get("predicted_voxels") or {}).items())
    return (
        f'<p>explained: the logits of <span class="pred">{_e(region.get("class"))}</span> summed over the '
        f"{_e(region.get('source'))} region ({region.get('voxels')} voxels, outlined in the overlays): "
        f"{float(region.get('logit_sum', 0.0)):.4g}</p><p>predicted voxels per class: {voxels}</p>"
    )


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
    pred = _region(record) or (
        '<p>prediction: <span class="pred">'
        f"{_e(record.get('prediction_name', record.get('prediction')))}</span>"
        f" (p = {record.get('probability', 0.0):.3f}) &middot; {_truth(record)}</p>"
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
