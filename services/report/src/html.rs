//! `report.html`: one self-contained page (styles inline, overlays embedded as data URIs)
//! that opens offline in any browser.

use std::fmt::Write;

use base64::Engine;
use lungstream_schemas::report::{PerSide, Report};

use crate::RenderedReport;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
.warning{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:0.8em;margin:1em 0;font-weight:bold}\
.decision{font-size:1.5em}.untrained{color:#c62828;font-weight:bold}figure{margin:1em 0}img{max-width:100%}\
figcaption{color:#555}";

fn side_row(out: &mut String, label: &str, values: &PerSide, digits: usize) {
    let _ = write!(out, "<tr><td>{}</td><td>{:.*}</td><td>{:.*}</td><td>{:.*}</td></tr>", escape(label), digits, values.right, digits, values.left, digits, values.total);
}

/// Renders the page of a report.
pub fn render_html(rendered: &RenderedReport) -> String {
    let r: &Report = &rendered.report;
    let untrained = if r.model.trained { String::new() } else { " <span class=\"untrained\">(untrained model: meaningless)</span>".to_string() };
    let mut out = String::new();
    let _ = write!(out, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lungstream report</title><style>{STYLE}</style></head><body>");
    let _ = write!(out, "<h1>Chest CT analysis</h1>");
    for warning in &r.warnings {
        let _ = write!(out, "<div class=\"warning\">{}</div>", escape(warning));
    }
    let _ = write!(
        out,
        "<p class=\"decision\">Decision: <b>{}</b>{untrained}</p><p>P(diseased) = {:.3}, P(COVID-19 | diseased) = {:.3}{untrained}</p>",
        escape(r.decision.describe()),
        r.probabilities.diseased,
        r.probabilities.covid19
    );

    out.push_str("<h2>Infected share of the lung</h2><table><tr><th></th><th>right</th><th>left</th><th>both</th></tr>");
    side_row(&mut out, "model: infected %", &r.infection.percent, 2);
    side_row(&mut out, "model: infected mL", &r.infection.volume_ml, 1);
    side_row(&mut out, "model-free: -700..100 HU %", &r.model_free.infected_percent, 2);
    side_row(&mut out, "model-free: ground glass %", &r.model_free.ground_glass_percent, 2);
    side_row(&mut out, "model-free: consolidation %", &r.model_free.consolidation_percent, 2);
    side_row(&mut out, "lung volume mL", &r.series.lung_volume_ml, 0);
    out.push_str("</table><p>The model-free shares count lung voxels in Hounsfield bands; vessels and partial volume fall in them too, so they run high on healthy lungs.</p>");

    out.push_str("<h2>Worst slices</h2><p>Left: lung window with the infected area in red. Right: the attention of the diseased-vs-healthy network (blue low, red high).</p>");
    for slice in &r.worst_slices {
        let Some((name, png)) = rendered.overlays.iter().find(|(name, _)| !name.is_empty() && *name == slice.overlay) else {
            continue;
        };
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        let _ = write!(
            out,
            "<figure><img alt=\"slice {}\" src=\"data:image/png;base64,{data}\"><figcaption>{}: slice index {} (from the feet, from 0) at {:.1} mm, infected {:.0} mm² ({:.1}% of its lung), P(diseased) {:.3}{untrained}</figcaption></figure>",
            slice.slice,
            escape(name),
            slice.slice,
            slice.position_mm,
            slice.infected_mm2,
            slice.infected_percent,
            slice.p_diseased
        );
    }

    let _ = write!(
        out,
        "<h2>Series</h2><table><tr><td>series UID</td><td>{}</td></tr><tr><td>patient key (pseudonymous)</td><td>{}</td></tr><tr><td>slices (with lungs)</td><td>{} ({})</td></tr><tr><td>spacing mm (slices, rows, columns)</td><td>{:.2}, {:.3}, {:.3}</td></tr><tr><td>background median HU</td><td>{:.0}</td></tr></table>",
        escape(&r.series.series_uid),
        escape(&r.series.patient_key),
        r.series.slices,
        r.series.slices_with_lungs,
        r.series.spacing_mm[0],
        r.series.spacing_mm[1],
        r.series.spacing_mm[2],
        r.series.background_median_hu
    );
    let _ = write!(
        out,
        "<h2>Model</h2><table><tr><td>id</td><td>{}</td></tr><tr><td>version</td><td>{}</td></tr><tr><td>configuration</td><td>{}</td></tr><tr><td>trained</td><td>{}</td></tr><tr><td>trained on</td><td>{}</td></tr><tr><td>device</td><td>{}</td></tr></table>",
        escape(&r.model.id),
        escape(&r.model.version),
        escape(&r.model.config),
        r.model.trained,
        escape(&r.model.trained_on),
        escape(&r.model.device)
    );
    let t = &r.timings_ms;
    let _ = write!(out, "<p>Time: read {} ms, preprocess {} ms, networks {} ms, report {} ms; total {} ms.</p>", t.read, t.preprocess, t.infer, t.report, t.total);

    let _ = write!(out, "<details><summary>Scores of all {} lobes{untrained}</summary><table><tr><th>slice</th><th>side</th><th>mm</th><th>P(diseased)</th><th>softened</th><th>P(COVID-19)</th><th>softened</th><th>infected px</th><th>lung px</th></tr>", r.lobes.len());
    for l in &r.lobes {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.0}</td><td>{}</td></tr>",
            l.slice,
            escape(&l.side),
            l.position_mm,
            l.p_diseased,
            l.s_diseased,
            l.p_covid19,
            l.s_covid19,
            l.infected_pixels,
            l.lung_pixels
        );
    }
    out.push_str("</table></details>");
    let _ = writeln!(out, "<p><small>{} · report schema {}</small></p></body></html>", escape(&r.generator), escape(&r.schema_version));
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
