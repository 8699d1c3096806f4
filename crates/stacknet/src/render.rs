//! Printing verdicts: a JSON object for programs, a matrix per probe for people.

use std::io::IsTerminal;

use serde::Serialize;
use stacknet_engine::reach::Matrix;

#[derive(Serialize)]
struct Results<'a> {
    results: Vec<ResultLine<'a>>,
}

#[derive(Serialize)]
struct ResultLine<'a> {
    from: String,
    to: String,
    port: u16,
    protocol: &'a str,
    allowed: bool,
}

/// Exactly one JSON object: `{"results":[{"from","to","port","protocol","allowed"}, ...]}`,
/// probe by probe, rows in pod order.
pub fn json(matrices: &[Matrix]) -> String {
    let results = matrices
        .iter()
        .flat_map(|m| {
            m.pairs().map(move |(from, to, allowed)| ResultLine {
                from: from.to_string(),
                to: to.to_string(),
                port: m.probe.port,
                protocol: m.probe.protocol.as_str(),
                allowed,
            })
        })
        .collect();
    let mut s = serde_json::to_string(&Results { results }).expect("plain data serializes");
    s.push('\n');
    s
}

#[derive(Serialize)]
struct BeyondLine {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    port: u16,
    protocol: &'static str,
    allowed: bool,
}

#[derive(Serialize)]
struct BeyondResults {
    results: Vec<BeyondLine>,
}

/// [`json`] with nodes, outside hosts and Service probes: the same lines (a Service probe
/// also says `via`, and a NodePort one the `node` whose address it dials).
pub fn json_cases(cases: &[(stacknet_engine::paths::Case, bool)]) -> String {
    use stacknet_engine::paths::Via;
    let results = cases
        .iter()
        .map(|(c, allowed)| BeyondLine {
            from: c.from.to_string(),
            to: c.to.to_string(),
            via: (c.via != Via::Pod).then(|| c.via.as_str()),
            node: c.node.clone(),
            port: c.port,
            protocol: c.protocol.as_str(),
            allowed: *allowed,
        })
        .collect();
    let mut s = serde_json::to_string(&BeyondResults { results }).expect("plain data serializes");
    s.push('\n');
    s
}

/// Color only for a terminal, and never when NO_COLOR is set.
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const ALLOWED: &str = "✓";
const DENIED: &str = "✗";
const SELF: &str = "·";

/// One matrix per probe: rows are senders, columns receivers. Long names become numbered
/// columns with a legend, so the pattern stays visible.
pub fn table(matrices: &[Matrix], color: bool) -> String {
    let grids: Vec<Grid<'_>> = matrices
        .iter()
        .map(|m| Grid {
            title: m.probe.to_string(),
            names: m.pods.iter().map(|k| k.to_string()).collect(),
            allowed: &m.allowed,
        })
        .collect();
    grid_table(&grids, color)
}

/// One probe's verdicts over named endpoints.
pub struct Grid<'a> {
    pub title: String,
    pub names: Vec<String>,
    pub allowed: &'a [Vec<Option<bool>>],
}

/// [`table`] over any endpoints.
pub fn grid_table(grids: &[Grid<'_>], color: bool) -> String {
    let mut out = String::new();
    for m in grids {
        let names = m.names.clone();
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(1);
        let numbered = names.len() * (width + 1) > 120;
        let headers: Vec<String> =
            if numbered { (1..=names.len()).map(|i| i.to_string()).collect() } else { names.clone() };
        let col = headers.iter().map(|h| h.chars().count()).max().unwrap_or(1).max(1);
        let cells = m.allowed.iter().flatten().flatten();
        let (allowed, total) = (cells.clone().filter(|a| **a).count(), cells.count());
        out.push_str(&format!(
            "{}  ({allowed} of {total} pairs allowed; rows: from, columns: to; {ALLOWED} allowed, {DENIED} denied)\n",
            bold(&m.title, color)
        ));
        let row_label = |i: usize| if numbered { format!("{:>3} {}", i + 1, names[i]) } else { names[i].clone() };
        let label_width = (0..names.len()).map(|i| row_label(i).chars().count()).max().unwrap_or(0);
        out.push_str(&" ".repeat(label_width));
        for h in &headers {
            out.push_str(&format!(" {h:>col$}"));
        }
        out.push('\n');
        for (i, row) in m.allowed.iter().enumerate() {
            let label = row_label(i);
            out.push_str(&format!("{label:<label_width$}"));
            for cell in row {
                let (mark, code) = match cell {
                    None => (SELF, None),
                    Some(true) => (ALLOWED, Some("32")),
                    Some(false) => (DENIED, Some("31")),
                };
                out.push_str(&" ".repeat(col));
                match (color, code) {
                    (true, Some(c)) => out.push_str(&format!("\x1b[{c}m{mark}\x1b[0m")),
                    _ => out.push_str(mark),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn bold(s: &str, color: bool) -> String {
    if color { format!("\x1b[1m{s}\x1b[0m") } else { s.to_string() }
}
