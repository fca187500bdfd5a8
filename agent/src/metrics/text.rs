//! The Prometheus text format (0.0.4) from `prometheus-client`'s OpenMetrics output, for
//! scrapers that do not ask for OpenMetrics.

/// Rewrites OpenMetrics text as Prometheus text: counter families are named with their
/// `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family without it), and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub(super) fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut rest = om;
    // Sample lines are copied in bulk; only the few comment lines are looked at.
    while !rest.is_empty() {
        let comment = rest
            .find("# ")
            .filter(|&i| i == 0 || rest.as_bytes()[i - 1] == b'\n');
        let Some(at) = comment.or_else(|| rest.find("\n# ").map(|i| i + 1)) else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        let line = line.trim_end_matches('\n');
        if let Some(help) = line.strip_prefix("# HELP ") {
            // The TYPE line follows its HELP line: read it now to learn the family's kind.
            let type_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let type_line = rest[..type_end].trim_end_matches('\n');
            let suffix = if type_line.ends_with(" counter") {
                "_total"
            } else {
                ""
            };
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
        } else if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap_or((t, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            // OpenMetrics only.
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
