//! Dependencies that need no cluster: a path that must exist (a socket), and a config file
//! rendered from the pod's ConfigMap mount (`/configmaps/<file>/<file>`), as the anchor does
//! it: its Go template may use `{{ .HOSTNAME }}`, `{{ .IP }}` (the address of
//! `INTERFACE_NAME`) and `{{ .IP_ERLANG }}` (that address with commas); any other action is
//! an error naming it, not a file written wrong.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::ready::Verdict;

/// Where the anchor finds the ConfigMaps.
pub const CONFIGMAPS: &str = "/configmaps";

/// The path exists (and can be seen).
pub fn socket(path: &Path) -> Verdict {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".into()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err("no permission to see it".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub hostname: String,
    pub ip: Option<IpAddr>,
}

impl Params {
    /// This host's name, and the first address of `interface`.
    pub fn of_host(interface: Option<&str>) -> Params {
        let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let ip = interface.and_then(|i| {
            nix::ifaddrs::getifaddrs().ok()?.filter(|a| a.interface_name == i).find_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    return Some(IpAddr::V4(v4.ip()));
                }
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            })
        });
        Params { hostname, ip }
    }
}

/// Renders `text` (the template `name`): an error names the action it cannot render.
pub fn render(name: &str, text: &str, params: &Params, interface: Option<&str>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            return Err(format!("{name}: an action opened with {{{{ is not closed"));
        };
        let mut before = &rest[..start];
        let inner = &rest[start + 2..start + len];
        let mut after = &rest[start + len + 2..];
        // `{{-` and `-}}` trim the whitespace next to them.
        let mut action = inner;
        if let Some(a) = action.strip_prefix('-') {
            before = before.trim_end();
            action = a;
        }
        if let Some(a) = action.strip_suffix('-') {
            after = after.trim_start();
            action = a;
        }
        out.push_str(before);
        let no_ip = || {
            format!(
                "{name}: {{{{{inner}}}}} needs the address of {}",
                interface.map_or("INTERFACE_NAME (not set)".to_string(), |i| format!("interface {i}, which has none"))
            )
        };
        match action.trim() {
            ".HOSTNAME" => out.push_str(&params.hostname),
            ".IP" => out.push_str(&params.ip.ok_or_else(no_ip)?.to_string()),
            ".IP_ERLANG" => out.push_str(&params.ip.ok_or_else(no_ip)?.to_string().replace('.', ",")),
            other => {
                return Err(format!(
                    "{name}: {{{{{other}}}}} is not one of .HOSTNAME, .IP, .IP_ERLANG (what the anchor's templates get)"
                ));
            }
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The ConfigMap file a config dependency is rendered from.
pub fn source_of(configmaps: &Path, path: &Path) -> PathBuf {
    let file = path.file_name().map(|f| f.to_os_string()).unwrap_or_default();
    configmaps.join(&file).join(&file)
}

/// Renders `path` from its ConfigMap file (its directory made if missing); not met while the
/// source is missing. A template that cannot render is an error the caller reports (`Err` with
/// `fatal`).
pub fn config(configmaps: &Path, path: &Path, params: &Params, interface: Option<&str>) -> Result<Verdict, String> {
    let source = source_of(configmaps, path);
    let text = match std::fs::read_to_string(&source) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("its source {} does not exist", source.display())));
        }
        Err(e) => return Ok(Err(format!("reading {}: {e}", source.display()))),
    };
    let rendered = render(&source.display().to_string(), &text, params, interface)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // Written whole, then moved into place: a reader never sees half a file.
    let tmp = path.with_extension("stacknet-tmp");
    std::fs::write(&tmp, rendered).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("moving {} into place: {e}", path.display()))?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params { hostname: "rabbitmq-0".into(), ip: Some("10.1.2.3".parse().unwrap()) }
    }

    #[test]
    fn templates_get_the_hostname_and_address() {
        let t = "NODENAME=rabbit@{{ .HOSTNAME }}\nIP={{.IP}}\n{inet_dist_use_interface, { {{- .IP_ERLANG -}} }}.\n";
        assert_eq!(
            render("t", t, &params(), Some("eth0")).unwrap(),
            "NODENAME=rabbit@rabbitmq-0\nIP=10.1.2.3\n{inet_dist_use_interface, {10,1,2,3}}.\n"
        );
        assert_eq!(render("t", "no actions", &params(), None).unwrap(), "no actions");
    }

    #[test]
    fn what_cannot_render_is_named() {
        let e = render("/configmaps/a/a", "x {{ .Values.y }}", &params(), None).unwrap_err();
        assert_eq!(
            e,
            "/configmaps/a/a: {{.Values.y}} is not one of .HOSTNAME, .IP, .IP_ERLANG (what the anchor's templates get)"
        );
        let no_ip = Params { ip: None, ..params() };
        assert!(render("t", "{{ .IP }}", &no_ip, None).unwrap_err().contains("INTERFACE_NAME (not set)"));
        assert!(render("t", "{{ .IP", &params(), None).unwrap_err().contains("not closed"));
    }

    #[test]
    fn a_config_is_rendered_from_its_configmap_once_it_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let maps = dir.path().join("configmaps");
        let target = dir.path().join("etc/rabbitmq/rabbitmq.conf");
        let v = config(&maps, &target, &params(), None).unwrap();
        assert!(v.unwrap_err().contains("configmaps/rabbitmq.conf/rabbitmq.conf does not exist"));
        std::fs::create_dir_all(maps.join("rabbitmq.conf")).unwrap();
        std::fs::write(maps.join("rabbitmq.conf/rabbitmq.conf"), "host={{ .HOSTNAME }}\n").unwrap();
        assert_eq!(config(&maps, &target, &params(), None).unwrap(), Ok(()));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host=rabbitmq-0\n");
        assert_eq!(socket(&target), Ok(()));
        assert_eq!(socket(&dir.path().join("nope")), Err("does not exist".into()));
    }

    #[test]
    fn this_hosts_loopback_has_an_address() {
        assert_eq!(Params::of_host(Some("lo")).ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(Params::of_host(Some("no-such-if")).ip, None);
    }
}
