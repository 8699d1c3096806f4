//! `stacknet controller`: keeps the OVN network equal to the cluster. The cluster comes from a
//! folder of manifests (`--manifests DIR`, watched) or else from the Kubernetes API (in-cluster
//! credentials, or `KUBECONFIG`).

use anyhow::Context;
use stacknet_controller::leader::{self, LeaseConfig};
use stacknet_controller::manifests::{ManifestSource, SOURCE};
use stacknet_controller::{ControllerArgs, ControllerConfig};
use stacknet_engine::objects::ObjectKey;

/// Runs until SIGTERM or SIGINT. Bad configuration: `Err` with a message naming the setting.
pub fn run(args: ControllerArgs) -> Result<(), crate::Failure> {
    let config = ControllerConfig::from_args(&args).map_err(crate::Failure::Input)?;
    if let Some(dir) = &config.manifests
        && !dir.is_dir()
    {
        return Err(crate::Failure::Input(format!("--manifests {}: not a directory", dir.display())));
    }
    crate::init_logging();
    // One thread: the loop is sequential anyway, and one thread means one allocator arena
    // (with two workers the peak RSS at 10k pods grew from about 140 MB to over 200 MB).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Failure::Other(e.into()))?;
    if let Some(settings) = stacknet_controller::openstack::OpenStackSettings::from_config(&config) {
        return runtime.block_on(openstack(config, settings)).map_err(crate::Failure::Other);
    }
    runtime
        .block_on(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let mut lease = None;
            let (controller, from) = match &config.manifests {
                Some(dir) => {
                    let controller = stacknet_controller::Controller::new(config.clone(), &[SOURCE])
                        .map_err(|e| anyhow::anyhow!(e))?;
                    let source = ManifestSource::new(dir, config.poll, controller.observed().events.clone())
                        .map_err(|e| anyhow::anyhow!(e))?;
                    tokio::spawn(source.run(tx));
                    (controller, dir.display().to_string())
                }
                None => {
                    let mut controller =
                        stacknet_controller::Controller::new(config.clone(), &stacknet_controller::kube_source::sources())
                            .map_err(|e| anyhow::anyhow!(e))?;
                    let k = with_kube(&config, tx, controller.observed().events).await?;
                    controller = controller.with_annotations(k.annotate);
                    if let Some(rx) = k.leading {
                        controller = controller.with_leader(rx);
                    }
                    lease = k.lease;
                    (controller, "the Kubernetes API".to_string())
                }
            };
            let addr = controller
                .serve_http_thread()
                .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
            eprintln!(
                "stacknet controller: cluster {} from {}, network in {}; http://{addr}/metrics /healthz /readyz /events",
                config.cluster,
                from,
                config.nb.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
            );
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            controller.run(rx, shutdown).await;
            release(lease).await;
            anyhow::Ok(())
        })
        .map_err(crate::Failure::Other)
}

/// `--backend openstack`: the same sources, the network made in Neutron and Octavia.
async fn openstack(
    config: ControllerConfig,
    settings: stacknet_controller::openstack::OpenStackSettings,
) -> anyhow::Result<()> {
    use stacknet_controller::openstack::OpenStackController;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let kube_sources = stacknet_controller::kube_source::sources();
    let sources: Vec<String> = match &config.manifests {
        Some(_) => vec![SOURCE.to_string()],
        None => kube_sources.iter().map(|s| s.to_string()).collect(),
    };
    let mut controller = OpenStackController::connect(settings, &sources).await.map_err(|e| anyhow::anyhow!(e))?;
    let mut lease = None;
    let from = match &config.manifests {
        Some(dir) => {
            let source = ManifestSource::new(dir, config.poll, controller.observed().events.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
            tokio::spawn(source.run(tx));
            dir.display().to_string()
        }
        None => {
            let k = with_kube(&config, tx, controller.observed().events).await?;
            controller = controller.with_annotations(k.annotate);
            if let Some(rx) = k.leading {
                controller = controller.with_leader(rx);
            }
            lease = k.lease;
            "the Kubernetes API".to_string()
        }
    };
    let o = controller.observed();
    let addr = stacknet_controller::http::serve_thread(config.metrics_addr, o.health, o.metrics, o.events)
        .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    eprintln!(
        "stacknet controller: cluster {} from {from}, network in OpenStack (Neutron{}); http://{addr}/metrics /healthz /readyz /events",
        config.cluster,
        if controller.has_load_balancer() { ", Octavia" } else { "" },
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    controller.run(rx, shutdown).await;
    release(lease).await;
    Ok(())
}

/// What a controller gets from the Kubernetes API besides the cluster itself.
struct Kube {
    /// Pods' network annotations to write.
    annotate: tokio::sync::mpsc::UnboundedSender<(ObjectKey, String)>,
    /// Whether this replica leads (with leader election).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// The Lease to release on a graceful stop.
    lease: Option<(kube::Client, LeaseConfig)>,
}

/// With the Kubernetes API, whatever the backend: the cluster watched into `tx`, the Events
/// published, pods' annotations written, and with leader election the Lease kept.
async fn with_kube(
    config: &ControllerConfig,
    tx: tokio::sync::mpsc::Sender<stacknet_controller::Change>,
    events: std::sync::Arc<stacknet_controller::events::Events>,
) -> anyhow::Result<Kube> {
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG); or pass --manifests DIR")?;
    tokio::spawn(stacknet_controller::kube_source::run(client.clone(), tx, events.clone()));
    let (annotate, annotations) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(stacknet_controller::kube_source::annotate_pods(client.clone(), annotations));
    let (sink, published) = tokio::sync::mpsc::unbounded_channel();
    events.set_sink(sink);
    // In the Deployment, the identity is the pod's name, in the lease's namespace.
    let own_pod =
        std::env::var_os("STACKNET_IDENTITY").map(|_| (config.lease_namespace.clone(), config.identity.clone()));
    tokio::spawn(stacknet_controller::kube_source::publish_events(
        client.clone(),
        published,
        config.identity.clone(),
        own_pod,
    ));
    let (mut leading, mut lease) = (None, None);
    if config.leader_election {
        let cfg = LeaseConfig::new(&config.lease_namespace, &config.identity);
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(leader::run(client.clone(), cfg.clone(), tx));
        leading = Some(rx);
        lease = Some((client, cfg));
    }
    Ok(Kube { annotate, leading, lease })
}

/// A graceful stop hands over at once instead of after the lease runs out.
async fn release(lease: Option<(kube::Client, LeaseConfig)>) {
    if let Some((client, cfg)) = lease
        && let Err(e) = leader::release(client, &cfg).await
    {
        eprintln!("stacknet controller: releasing the lease: {e}");
    }
}
