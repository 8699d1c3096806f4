//! `stacknet controller`: keeps the network (OVN, or OpenStack with `--backend openstack`)
//! equal to the cluster. The cluster comes from a folder of manifests (`--manifests DIR`,
//! watched) or else from the Kubernetes API (in-cluster credentials, or `KUBECONFIG`).

use anyhow::Context;
use stacknet_controller::leader::{self, LeaseConfig};
use stacknet_controller::manifests::{ManifestSource, SOURCE};
use stacknet_controller::openstack::OpenStackSettings;
use stacknet_controller::{Backend, Change, Controller, ControllerArgs, ControllerConfig};

fn failure(e: stacknet_controller::Error) -> crate::Failure {
    if e.is_input() { crate::Failure::Input(e.to_string()) } else { crate::Failure::Other(e.into()) }
}

/// Runs until SIGTERM or SIGINT. Bad configuration: `Err` with a message naming the setting.
pub fn run(args: ControllerArgs) -> Result<(), crate::Failure> {
    let config = ControllerConfig::from_args(&args).map_err(failure)?;
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
    runtime.block_on(async move {
        let sources: Vec<String> = match &config.manifests {
            Some(_) => vec![SOURCE.to_string()],
            None => stacknet_controller::kube_source::sources(),
        };
        match OpenStackSettings::from_config(&config) {
            Some(settings) => {
                serve(&config, Controller::openstack(&config, settings, &sources).await.map_err(failure)?).await
            }
            None => serve(&config, Controller::ovn(&config, &sources).map_err(failure)?).await,
        }
        .map_err(crate::Failure::Other)
    })
}

/// Feeds `controller` from the configured source and runs it until SIGTERM or SIGINT.
async fn serve<B: Backend>(config: &ControllerConfig, mut controller: Controller<B>) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut lease = None;
    let from = match &config.manifests {
        Some(dir) => {
            let source = ManifestSource::new(dir, config.poll, controller.observed().events.clone())?;
            tokio::spawn(source.run(tx));
            dir.display().to_string()
        }
        None => {
            let k = with_kube(config, tx, controller.observed().events).await?;
            controller = controller.with_annotations(k.annotate);
            if let Some(rx) = k.leading {
                controller = controller.with_leader(rx);
            }
            lease = k.lease;
            "the Kubernetes API".to_string()
        }
    };
    let addr = controller.serve_http_thread().with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    eprintln!(
        "stacknet controller: cluster {} from {from}, network in {}; http://{addr}/metrics /healthz /readyz /events",
        config.cluster,
        controller.backend().describe(),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    controller.run(rx, shutdown).await;
    // A graceful stop hands over at once instead of after the lease runs out.
    if let Some((client, cfg)) = lease
        && let Err(e) = leader::release(client, &cfg).await
    {
        eprintln!("stacknet controller: releasing the lease: {e}");
    }
    Ok(())
}

/// What a controller gets from the Kubernetes API besides the cluster itself.
struct Kube {
    /// Pods' network annotations and Services' load balancer addresses to write.
    annotate: tokio::sync::mpsc::UnboundedSender<stacknet_controller::WriteBack>,
    /// Whether this replica leads (with leader election).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    /// The Lease to release on a graceful stop.
    lease: Option<(kube::Client, LeaseConfig)>,
}

/// With the Kubernetes API, whatever the backend: the cluster watched into `tx`, the Events
/// published, pods' annotations written, and with leader election the Lease kept.
async fn with_kube(
    config: &ControllerConfig,
    tx: tokio::sync::mpsc::Sender<Change>,
    events: std::sync::Arc<stacknet_controller::events::Events>,
) -> anyhow::Result<Kube> {
    stacknet_controller::kube_source::install_tls_provider();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG); or pass --manifests DIR")?;
    tokio::spawn(stacknet_controller::kube_source::run(client.clone(), tx, events.clone()));
    let (annotate, annotations) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(stacknet_controller::kube_source::write_back(client.clone(), annotations));
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
