//! The manifest parser (`stacknet_engine::manifest::parse`): Kubernetes YAML, multi-document,
//! `kind: List`, into validated cluster objects (Pods with their network annotations,
//! NetworkPolicies, Services, NetworkAttachmentDefinitions...), then into the cluster index.
//!
//! Input: a YAML file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stacknet_engine::ClusterIndex;
use stacknet_engine::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = manifest::parse("fuzz.yaml", text) else { return };
    let _ = ClusterIndex::from_objects(m.objects);
});
