//! Cloud access: a Keystone v3 session and typed calls to Neutron, Octavia and Nova.
//!
//! The session is `openstack_sdk`'s: `clouds.yaml` (`OS_CLOUD`) or `OS_*` variables, password
//! or application-credential auth, a custom CA (`cacert`), the service catalog with version
//! discovery, re-authentication on a 401 and renewal ahead of expiry. The calls themselves go
//! through one small endpoint definition of ours ([`Call`]): the few dozen Neutron and Octavia
//! operations we use are plain REST, and the SDK's generated builders for some of them are
//! wrong against a real Neutron (address-group membership bodies) or lack them (trunks, bulk
//! ports). No credential or token is ever logged by this module; the SDK logs request headers
//! at info, so the binary caps it at warn.

use std::borrow::Cow;
use std::time::Duration;

use openstack_sdk::api::rest_endpoint_prelude::*;
use openstack_sdk::api::{ApiError, Pagination, QueryAsync, ignore, paged};
use openstack_sdk::config::{CloudConfig, ConfigFile};
use openstack_sdk::types::ServiceType;
use openstack_sdk::{AsyncOpenStack, RenewHandle, RestError};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call failed, with what a person needs to act on it (never a credential).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cloud configuration: {0}")]
    Config(String),
    #[error("authentication with Keystone failed: {0}")]
    Auth(String),
    #[error("{what}: HTTP {status}{}: {message}", kind.as_deref().map(|k| format!(" {k}")).unwrap_or_default())]
    Api {
        /// `POST network ports`, ...
        what: String,
        status: u16,
        /// Neutron's error type (`OverQuota`, `IpAddressAlreadyAllocated`, ...), when given.
        kind: Option<String>,
        message: String,
    },
    #[error("{what}: {message}")]
    Transport { what: String, message: String },
    #[error("{what}: unexpected answer: {message}")]
    Decode { what: String, message: String },
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<&str> {
        match self {
            Error::Api { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// A quota would be exceeded: retrying will not help until something is freed.
    pub fn is_quota(&self) -> bool {
        self.kind() == Some("OverQuota") || self.status() == Some(413)
    }

    /// Worth retrying as is: the service is down, overloaded or in the middle of a change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            // Neutron answers some refusals with a 500 whose kind says that asking again
            // cannot help (a subnet pool without room).
            Error::Api { kind: Some(k), .. } if PERMANENT_KINDS.contains(&k.as_str()) => false,
            Error::Api { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Neutron exception names that come with a 5xx status but are answers, not outages.
const PERMANENT_KINDS: &[&str] = &["SubnetAllocationError"];

/// Which service a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Network,
    LoadBalancer,
    Identity,
    /// Nova; every call to it names its microversion ([`Call::microversion`]).
    Compute,
}

impl Service {
    fn service_type(self) -> ServiceType {
        match self {
            Service::Network => ServiceType::Network,
            Service::LoadBalancer => ServiceType::LoadBalancer,
            Service::Identity => ServiceType::Identity,
            Service::Compute => ServiceType::Compute,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Network => "network",
            Service::LoadBalancer => "load-balancer",
            Service::Identity => "identity",
            Service::Compute => "compute",
        }
    }
}

/// One REST call: method, path under the service's versioned endpoint, query, JSON body
/// wrapped in a key (`{"port": {...}}`), and the key the answer is wrapped in.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: Service,
    pub method: http::Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The JSON body and the key it is wrapped in (`None`: sent as is).
    pub body: Option<(Option<&'static str>, Value)>,
    pub response_key: Option<&'static str>,
    /// Extra request headers (Nova's microversion).
    pub headers: Option<http::HeaderMap>,
}

impl Call {
    pub fn new(service: Service, method: http::Method, path: impl Into<String>) -> Call {
        Call { service, method, path: path.into(), query: Vec::new(), body: None, response_key: None, headers: None }
    }

    pub fn get(service: Service, path: impl Into<String>) -> Call {
        Call::new(service, http::Method::GET, path)
    }

    pub fn post(service: Service, path: impl Into<String>) -> Call {
        Call::new(service, http::Method::POST, path)
    }

    pub fn put(service: Service, path: impl Into<String>) -> Call {
        Call::new(service, http::Method::PUT, path)
    }

    pub fn delete(service: Service, path: impl Into<String>) -> Call {
        Call::new(service, http::Method::DELETE, path)
    }

    pub fn query(mut self, key: &str, value: impl ToString) -> Call {
        self.query.push((key.into(), value.to_string()));
        self
    }

    pub fn body(mut self, key: &'static str, value: Value) -> Call {
        self.body = Some((Some(key), value));
        self
    }

    /// A body sent as is, not wrapped in a key.
    pub fn raw_body(mut self, value: Value) -> Call {
        self.body = Some((None, value));
        self
    }

    pub fn answer(mut self, key: &'static str) -> Call {
        self.response_key = Some(key);
        self
    }

    /// Asks for a microversion (`2.90`): both Nova's legacy header and the standard one.
    pub fn microversion(mut self, version: &str) -> Call {
        let mut h = self.headers.take().unwrap_or_default();
        let service = self.service.name();
        for (name, value) in [
            ("x-openstack-nova-api-version", version.to_string()),
            ("openstack-api-version", format!("{service} {version}")),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        self.headers = Some(h);
        self
    }

    /// `POST network ports` (for messages: never the body).
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.method, self.service.name(), self.path)
    }
}

impl RestEndpoint for Call {
    fn method(&self) -> http::Method {
        self.method.clone()
    }

    fn endpoint(&self) -> Cow<'static, str> {
        self.path.clone().into()
    }

    fn service_type(&self) -> ServiceType {
        self.service.service_type()
    }

    fn parameters(&self) -> QueryParams<'_> {
        let mut q = QueryParams::default();
        for (k, v) in &self.query {
            q.push(k.as_str(), v.as_str());
        }
        q
    }

    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
        match &self.body {
            None => Ok(None),
            Some((None, value)) => Ok(Some(("application/json", serde_json::to_vec(value).map_err(BodyError::from)?))),
            Some((Some(key), value)) => {
                let mut p = JsonBodyParams::default();
                p.push(*key, value.clone());
                p.into_body()
            }
        }
    }

    fn response_key(&self) -> Option<Cow<'static, str>> {
        self.response_key.map(Cow::Borrowed)
    }

    fn request_headers(&self) -> Option<&http::HeaderMap> {
        self.headers.as_ref()
    }
}

/// Lists follow their `*_links` "next" pages.
impl openstack_sdk::api::Pageable for Call {}

/// An error with its causes (`connecting: TLS: invalid peer certificate: UnknownIssuer`): the
/// SDK's own message alone often names only the step that failed.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Why the auth URL cannot be reached over TLS, if it cannot (the SDK's error names only the
/// step that failed): the TCP connection, or the handshake against the CAs the session trusts
/// (`cacert`, else the system's).
async fn tls_problem(config: &CloudConfig) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let auth_url = config.auth.as_ref()?.auth_url.clone()?;
    let uri: http::Uri = auth_url.parse().ok()?;
    if uri.scheme_str() != Some("https") || config.verify == Some(false) {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let (file, trusted) = match &config.cacert {
        Some(c) => (c.clone(), format!("the CAs of cacert {c}")),
        None => ("/etc/ssl/certs/ca-certificates.crt".to_string(), "the system's CAs (no cacert given)".to_string()),
    };
    let mut roots = rustls::RootCertStore::empty();
    match rustls_pki_types::CertificateDer::pem_file_iter(&file) {
        Ok(certs) => {
            for c in certs.flatten() {
                let _ = roots.add(c);
            }
        }
        Err(e) => return Some(format!("reading {file}: {e}")),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.clone()).ok()?;
    let tcp = match tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Some(format!("connecting to {host}:{port}: {e}")),
        Err(_) => return Some(format!("connecting to {host}:{port}: no answer within 10 s")),
    };
    match tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await {
        Ok(_) => None,
        Err(e) => Some(format!("TLS with {host}:{port} fails against {trusted}: {e}")),
    }
}

/// Where the cloud's configuration comes from.
#[derive(Debug, Clone)]
pub enum CloudSource {
    /// A cloud of `clouds.yaml`: the usual search path (and `OS_CLIENT_CONFIG_FILE`), plus
    /// `file` when given.
    Named { cloud: String, file: Option<std::path::PathBuf> },
    /// `OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`, ... (or
    /// `OS_APPLICATION_CREDENTIAL_ID` / `_SECRET`).
    Environment,
    /// A configuration built by the caller.
    Config(Box<CloudConfig>),
}

impl CloudSource {
    /// `OS_CLOUD` if set, else the `OS_*` variables.
    pub fn from_env() -> CloudSource {
        match std::env::var("OS_CLOUD") {
            Ok(cloud) if !cloud.is_empty() => CloudSource::Named { cloud, file: None },
            _ => CloudSource::Environment,
        }
    }

    fn config(&self) -> Result<CloudConfig, Error> {
        match self {
            CloudSource::Named { cloud, file } => {
                if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                    return Err(Error::Config(format!("{}: no such clouds.yaml", f.display())));
                }
                ConfigFile::new_with_user_specified_configs(file.as_ref(), None::<std::path::PathBuf>)
                    .map_err(|e| Error::Config(format!("reading clouds.yaml: {e}")))?
                    .get_cloud_config(cloud)
                    .map_err(|e| Error::Config(format!("cloud {cloud:?} in clouds.yaml: {e}")))?
                    .ok_or_else(|| Error::Config(format!("no cloud named {cloud:?} in clouds.yaml")))
            }
            CloudSource::Environment => CloudConfig::from_env()
                .map_err(|e| Error::Config(format!("OS_* environment: {e}")))
                .and_then(|c| match &c.auth {
                    Some(a) if a.auth_url.is_some() => Ok(c),
                    _ => Err(Error::Config("OS_AUTH_URL is not set (nor OS_CLOUD)".into())),
                }),
            CloudSource::Config(c) => Ok((**c).clone()),
        }
    }
}

/// An authenticated session with the endpoints it needs (Neutron; Nova for the compute drain)
/// and Octavia's, when the catalog has it, discovered.
#[derive(Clone)]
pub struct Cloud {
    session: AsyncOpenStack,
    /// Calls sent (for reports and benchmarks).
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Renews the token ahead of expiry for as long as the session lives.
    _renew: std::sync::Arc<RenewHandle>,
    pub has_load_balancer: bool,
    /// How long a call may wait for its answer: a hung service is an outage (a transient
    /// error, retried by the next reconcile), never a reconcile stuck forever.
    timeout: Duration,
}

/// [`Cloud`]'s default answer timeout (a bulk create of a pool's ports takes seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud").field("has_load_balancer", &self.has_load_balancer).finish_non_exhaustive()
    }
}

impl Cloud {
    /// Authenticates and discovers Neutron (and Octavia, if listed); call within a tokio runtime.
    pub async fn connect(source: &CloudSource) -> Result<Cloud, Error> {
        Cloud::connect_for(source, Service::Network).await
    }

    /// Authenticates and discovers `needed`, whose absence from the catalog is an error.
    pub async fn connect_for(source: &CloudSource, needed: Service) -> Result<Cloud, Error> {
        let config = source.config()?;
        // Application credentials' authenticator registers itself only when linked in.
        std::hint::black_box(&openstack_sdk_auth_applicationcredential::ANCHOR);
        // Never a token cache on disk for a daemon.
        let session = AsyncOpenStack::builder(&config).disable_auth_cache(true).connect().await;
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let mut message = with_causes(&e);
                if let Some(why) = tls_problem(&config).await {
                    message = format!("{message}\n{why}");
                }
                return Err(Error::Auth(message));
            }
        };
        session
            .discover_service_endpoint(&needed.service_type())
            .await
            .map_err(|e| Error::Config(format!("the catalog has no usable {} endpoint: {e}", needed.name())))?;
        let has_load_balancer = session.discover_service_endpoint(&ServiceType::LoadBalancer).await.is_ok();
        let renew = session.enable_auto_renew(chrono::TimeDelta::seconds(300));
        tracing::info!(
            auth_url = config.auth.as_ref().and_then(|a| a.auth_url.as_deref()).unwrap_or_default(),
            load_balancer = has_load_balancer,
            needed = needed.name(),
            "authenticated to Keystone; endpoint found"
        );
        Ok(Cloud {
            session,
            calls: Default::default(),
            _renew: std::sync::Arc::new(renew),
            has_load_balancer,
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same session with another answer timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Cloud {
        Cloud { timeout, ..self.clone() }
    }

    /// `f`'s answer, or a transient error naming the call when none comes in time.
    async fn timed<T>(&self, what: &str, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::Transport {
                what: what.to_string(),
                message: format!("no answer within {} s", self.timeout.as_secs_f64()),
            }),
        }
    }

    /// The same session with a call counter of its own (background work counted apart).
    pub fn counted_apart(&self) -> Cloud {
        Cloud { calls: Default::default(), ..self.clone() }
    }

    /// How many calls this session has sent (pages of a list count one each).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends `call`, decoding the answer (under its response key) as `T`.
    pub async fn call<T: DeserializeOwned + Send + 'static>(&self, call: Call) -> Result<T, Error> {
        self.count();
        let what = call.describe();
        let value: Value =
            self.timed(&what, async { call.query_async(&self.session).await.map_err(|e| api_error(&what, e)) }).await?;
        serde_json::from_value(value).map_err(|e| Error::Decode { what, message: e.to_string() })
    }

    /// Sends `call`, expecting no answer body (204, 202).
    pub async fn call_empty(&self, call: Call) -> Result<(), Error> {
        self.count();
        let what = call.describe();
        self.timed(&what, async { ignore(call).query_async(&self.session).await.map_err(|e| api_error(&what, e)) })
            .await
    }

    /// All items of a list call, page by page (`limit` per page).
    pub async fn list<T: DeserializeOwned + Send + 'static>(&self, call: Call, limit: u32) -> Result<Vec<T>, Error> {
        self.count();
        let what = call.describe();
        let values: Vec<Value> = self
            .timed(&what, async {
                paged(call.query("limit", limit), Pagination::All)
                    .query_async(&self.session)
                    .await
                    .map_err(|e| api_error(&what, e))
            })
            .await?;
        values
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| Error::Decode { what: what.clone(), message: e.to_string() })
            })
            .collect()
    }

    /// The project the session is scoped to.
    pub fn project_id(&self) -> Option<String> {
        self.session.get_auth_info().and_then(|i| i.token.project.and_then(|p| p.id))
    }
}

/// Neutron's `{"NeutronError": {"type", "message"}}`, Octavia's `{"faultstring"}`, or the
/// raw text.
fn api_error(what: &str, e: ApiError<RestError>) -> Error {
    let what = what.to_string();
    match e {
        ApiError::OpenStack { status, msg, .. } => {
            let (kind, message) = parse_fault(&msg).unwrap_or((None, msg));
            Error::Api { what, status: status.as_u16(), kind, message }
        }
        ApiError::OpenStackUnrecognized { status, obj, .. } => {
            let (kind, message) = parse_fault(&obj.to_string()).unwrap_or((None, obj.to_string()));
            Error::Api { what, status: status.as_u16(), kind, message }
        }
        ApiError::OpenStackService { status, data, .. } => {
            Error::Api { what, status: status.as_u16(), kind: None, message: data.chars().take(500).collect() }
        }
        ApiError::Client { source } => Error::Transport { what, message: source.to_string() },
        ApiError::Json { source } => Error::Decode { what, message: source.to_string() },
        other => Error::Transport { what, message: other.to_string() },
    }
}

fn parse_fault(text: &str) -> Option<(Option<String>, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    if let Some(n) = v.get("NeutronError") {
        let kind = n.get("type").and_then(Value::as_str).map(str::to_string);
        let message = n.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
        return Some((kind, message));
    }
    let message = v
        .get("faultstring")
        .or_else(|| v.get("description"))
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)?
        .to_string();
    Some((None, message))
}

/// Retries `f` while its error is transient, with backoff, up to `attempts` times.
pub async fn retry<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut n = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && n + 1 < attempts => {
                tracing::warn!(error = %e, attempt = n + 1, "transient error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                n += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_either_service() {
        let neutron = r#"{"NeutronError": {"type": "OverQuota", "message": "Quota exceeded for resources: ['port'].", "detail": ""}}"#;
        assert_eq!(
            parse_fault(neutron),
            Some((Some("OverQuota".into()), "Quota exceeded for resources: ['port'].".into()))
        );
        let octavia = r#"{"faultcode": "Client", "faultstring": "Provider 'ovn' does not support a requested option: OVN provider does not support ROUND_ROBIN algorithm", "debuginfo": null}"#;
        assert_eq!(
            parse_fault(octavia).unwrap().1.split(':').next(),
            Some("Provider 'ovn' does not support a requested option")
        );
        assert_eq!(parse_fault("<html>oops</html>"), None);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = Error::Api {
            what: "POST network ports".into(),
            status: 409,
            kind: Some("MacAddressInUse".into()),
            message: "in use".into(),
        };
        assert_eq!(e.to_string(), "POST network ports: HTTP 409 MacAddressInUse: in use");
        assert!(e.is_conflict() && !e.is_transient());
        let q = Error::Api { what: "x".into(), status: 409, kind: Some("OverQuota".into()), message: String::new() };
        assert!(q.is_quota());
        assert!(Error::Transport { what: "x".into(), message: "refused".into() }.is_transient());
        let api = |status, kind: Option<&str>| Error::Api {
            what: "POST network subnets".into(),
            status,
            kind: kind.map(str::to_string),
            message: String::new(),
        };
        assert!(api(503, None).is_transient() && api(500, Some("DBConnectionError")).is_transient());
        assert!(!api(500, Some("SubnetAllocationError")).is_transient(), "a full subnet pool is an answer");
    }
}
