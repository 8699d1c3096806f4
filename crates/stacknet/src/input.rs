//! Reading `-f` arguments: files, directories of manifests, or stdin.

use std::io::Read;
use std::path::Path;

use stacknet_engine::ClusterIndex;
use stacknet_engine::manifest::{self, Manifest};
use stacknet_engine::objects::Peer;

/// Loads every manifest named; the first bad one is the error (nothing is half-loaded).
pub fn load(args: &[String]) -> Result<Manifest, String> {
    let mut all = Manifest::default();
    for arg in args {
        for (name, text) in read_arg(arg)? {
            let m = manifest::parse(&name, &text).map_err(|e| e.to_string())?;
            all.objects.extend(m.objects);
            all.warnings.extend(m.warnings);
        }
    }
    Ok(all)
}

fn read_arg(arg: &str) -> Result<Vec<(String, String)>, String> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("stdin: cannot read: {e}"))?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let path = Path::new(arg);
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{arg}: cannot read directory: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{arg}: no .yaml, .yml or .json files in this directory"));
        }
        return files.iter().map(|p| read_file(&p.display().to_string())).collect();
    }
    Ok(vec![read_file(arg)?])
}

fn read_file(name: &str) -> Result<(String, String), String> {
    let bytes = std::fs::read(name).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8 text"))?;
    Ok((name.to_string(), text))
}

/// ipBlock peers match addresses; pods without one can never match them, which is worth saying.
pub fn address_warnings(index: &ClusterIndex) -> Vec<String> {
    let uses_blocks = index.policies().any(|p| {
        p.ingress.iter().chain(p.egress.iter()).flatten().flat_map(|r| &r.peers).any(|x| matches!(x, Peer::IpBlock(_)))
    });
    let without: Vec<String> =
        index.pods().filter(|(_, p)| p.ips.is_empty() && !p.terminated).map(|(_, p)| p.key.to_string()).collect();
    if uses_blocks && !without.is_empty() {
        let shown: Vec<&str> = without.iter().take(5).map(String::as_str).collect();
        let more = if without.len() > 5 { format!(" and {} more", without.len() - 5) } else { String::new() };
        vec![format!(
            "{} pod(s) have no status.podIP ({}{more}): ipBlock peers cannot match them",
            without.len(),
            shown.join(", ")
        )]
    } else {
        vec![]
    }
}
