//! Nova's `network_data.json` (`stacknet_node::netdata::parse`) and what the agent asks of it:
//! the NIC under each Neutron port and network (`nic_for_port`, `nic_for_network`).
//!
//! Input: the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stacknet_node::netdata;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(d) = netdata::parse(text) else { return };
    for port in d.ports() {
        let _ = d.nic_for_port(&port);
    }
    for net in &d.networks {
        let _ = d.nic_for_network(&net.network_id);
    }
    let _ = d.nic_for_port("not-a-port");
    let _ = d.nic_for_network("not-a-network");
});
