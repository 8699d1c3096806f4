//! The entrypoint alone, for an init container image (install it as `kubernetes-entrypoint`
//! too, the name openstack-helm's pod specs run).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    stacknet_entrypoint::cli(&args)
}
