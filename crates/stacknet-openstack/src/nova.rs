//! Nova, for draining a hypervisor: the host's nova-compute service (disabled with a reason,
//! enabled again), the servers on the host, the migrations out of it, and the three moves (live
//! migration, cold migration, confirming a cold migration). Every call names microversion
//! [`MICROVERSION`]; the caller's session needs Nova's admin rights (services, all projects'
//! servers, migrations).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::{Call, Cloud, Error, Service};

const N: Service = Service::Compute;

/// 2.53: services by UUID, `PUT /os-services/{id}`; 2.59: `changes-since` on migrations and
/// their UUIDs; 2.80: migrations' project and user. Nova since Ussuri (2020) has all three.
pub const MICROVERSION: &str = "2.80";

fn call(c: Call) -> Call {
    c.microversion(MICROVERSION)
}

/// A nova-compute service, as `GET /os-services` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ComputeService {
    pub id: String,
    pub host: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `up` or `down`: whether the service reports in.
    pub state: String,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub forced_down: bool,
}

impl ComputeService {
    pub fn enabled(&self) -> bool {
        self.status == "enabled"
    }

    /// Reporting in and not forced down.
    pub fn up(&self) -> bool {
        self.state == "up" && !self.forced_down
    }
}

/// A server (instance), with the admin attributes the drain reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `ACTIVE`, `SHUTOFF`, `PAUSED`, `VERIFY_RESIZE`, `MIGRATING`, `ERROR`, ...
    pub status: String,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", default)]
    pub host: Option<String>,
}

/// A migration record (live or cold), as `GET /os-migrations` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Migration {
    pub id: i64,
    #[serde(rename = "instance_uuid")]
    pub instance: String,
    /// Live: `queued`, `preparing`, `running`, `completed`, `failed`, `error`, `cancelled`;
    /// cold: `pre-migrating`, `migrating`, `post-migrating`, `finished` (awaiting
    /// confirmation), `confirming`, `confirmed`, `reverted`, `error`, `failed`.
    pub status: String,
    /// `live-migration`, `migration` (cold), `resize`, `evacuation`.
    pub migration_type: String,
    #[serde(default)]
    pub source_compute: Option<String>,
    #[serde(default)]
    pub dest_compute: Option<String>,
    /// Nova's UTC time without zone (`2026-12-07T07:00:00.000000`).
    pub created_at: String,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Seconds since the epoch of one of Nova's times (UTC, with or without a zone or fraction).
pub fn epoch_seconds(time: &str) -> Option<f64> {
    let t = time.trim_end_matches('Z');
    let t = t.strip_suffix("+00:00").unwrap_or(t);
    let naive = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let utc = naive.and_utc();
    Some(utc.timestamp() as f64 + f64::from(utc.timestamp_subsec_micros()) / 1e6)
}

/// A time as Nova takes it in `changes-since` (UTC, seconds).
pub fn nova_time(epoch_seconds: f64) -> String {
    chrono::DateTime::from_timestamp(epoch_seconds.floor() as i64, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Every nova-compute service.
pub async fn compute_services(cloud: &Cloud) -> Result<Vec<ComputeService>, Error> {
    cloud.call(call(Call::get(N, "os-services")).query("binary", "nova-compute").answer("services")).await
}

/// Disables (with `reason`) or enables a compute service; Nova answers with its new state.
pub async fn set_service(cloud: &Cloud, id: &str, enable: bool, reason: Option<&str>) -> Result<ComputeService, Error> {
    let mut body = json!({"status": if enable { "enabled" } else { "disabled" }});
    if let (false, Some(r)) = (enable, reason) {
        body["disabled_reason"] = Value::String(r.to_string());
    }
    // Not wrapped in a key: PUT /os-services/{id} takes its fields at the top.
    cloud.call(call(Call::put(N, format!("os-services/{id}"))).raw_body(body).answer("service")).await
}

/// Every server whose host is `host`, of every project.
pub async fn servers_on(cloud: &Cloud, host: &str) -> Result<Vec<Server>, Error> {
    cloud
        .list(
            call(Call::get(N, "servers/detail")).query("all_tenants", "1").query("host", host).answer("servers"),
            1000,
        )
        .await
}

/// Migrations out of `host` changed since `since` (Nova's time, see [`nova_time`]), or all.
pub async fn migrations_from(cloud: &Cloud, host: &str, since: Option<&str>) -> Result<Vec<Migration>, Error> {
    let mut c = call(Call::get(N, "os-migrations")).query("source_compute", host).answer("migrations");
    if let Some(s) = since {
        c = c.query("changes-since", s);
    }
    cloud.list(c, 1000).await
}

async fn action(cloud: &Cloud, server: &str, key: &'static str, value: Value) -> Result<(), Error> {
    cloud.call_empty(call(Call::post(N, format!("servers/{server}/action")).body(key, value))).await
}

/// Live-migrates a server wherever the scheduler puts it (block migration if its storage is
/// not shared).
pub async fn live_migrate(cloud: &Cloud, server: &str) -> Result<(), Error> {
    action(cloud, server, "os-migrateLive", json!({"host": null, "block_migration": "auto"})).await
}

/// Cold-migrates a stopped server (it ends in `VERIFY_RESIZE` until confirmed).
pub async fn cold_migrate(cloud: &Cloud, server: &str) -> Result<(), Error> {
    action(cloud, server, "migrate", Value::Null).await
}

/// Confirms a finished cold migration (the source's copy is freed).
pub async fn confirm(cloud: &Cloud, server: &str) -> Result<(), Error> {
    action(cloud, server, "confirmResize", Value::Null).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_times_read_and_written() {
        assert_eq!(epoch_seconds("2026-12-07T07:00:00.000000"), Some(1_796_626_800.0));
        assert_eq!(epoch_seconds("2026-12-07T07:00:00Z"), Some(1_796_626_800.0));
        assert_eq!(epoch_seconds("2026-12-07T07:00:00.500000+00:00"), Some(1_796_626_800.5));
        assert_eq!(epoch_seconds("yesterday"), None);
        assert_eq!(nova_time(1_796_626_800.7), "2026-12-07T07:00:00Z");
    }

    #[test]
    fn nova_answers_decode() {
        let s: ComputeService =
            serde_json::from_value(json!({"id": "5f6c", "binary": "nova-compute", "host": "compute-1",
            "zone": "nova", "status": "disabled", "state": "up", "updated_at": null, "disabled_reason": "why",
            "forced_down": false}))
            .unwrap();
        assert!(!s.enabled() && s.up());
        let v: Server = serde_json::from_value(json!({"id": "a", "name": "vm", "status": "ACTIVE",
            "OS-EXT-STS:task_state": "migrating", "OS-EXT-SRV-ATTR:host": "compute-1"}))
        .unwrap();
        assert_eq!((v.task_state.as_deref(), v.host.as_deref()), (Some("migrating"), Some("compute-1")));
        let m: Migration =
            serde_json::from_value(json!({"id": 7, "uuid": "u", "instance_uuid": "a", "status": "error",
            "migration_type": "live-migration", "source_compute": "compute-1", "dest_compute": null,
            "created_at": "2026-12-07T07:00:00.000000", "updated_at": null}))
            .unwrap();
        assert_eq!((m.id, m.status.as_str()), (7, "error"));
    }
}
