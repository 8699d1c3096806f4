"""The ovsdb benchmark's workloads through ovsdbapp, the library Neutron and kuryr use.

Run by `stacknet-bench ovsdb` in its own venv; prints one JSON object: events and seconds.
Pods are named and addressed exactly as the Rust side names them (keep the two in step).
"""
import json
import sys
import time

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

NODES = 100


def pod(prefix, i):
    n = i + 256
    ip = "10.%d.%d.%d" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)
    mac = "0a:58:0a:%02x:%02x:%02x" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)
    k = i % NODES
    return ("%s-%d" % (prefix, i), "bench-node-%d" % k, "bench_pg_%d" % k, "bench_as_%d" % k, ip, mac)


def main():
    remote, workload, prefix, start, count, batch = sys.argv[1:7]
    start, count, batch = int(start), int(count), int(batch)
    idl = connection.OvsdbIdl.from_server(remote, "OVN_Northbound")
    api = impl_idl.OvnNbApiIdlImpl(connection.Connection(idl=idl, timeout=600))

    def add(txn, i):
        name, sw, pg, aset, ip, mac = pod(prefix, i)
        lsp = txn.add(api.lsp_add(sw, name, addresses=["%s %s" % (mac, ip)]))
        txn.add(api.pg_add_ports(pg, lsp))
        txn.add(api.address_set_add_addresses(aset, ip))

    def remove(txn, i):
        name, sw, pg, aset, ip, mac = pod(prefix, i)
        txn.add(api.lsp_del(name))
        txn.add(api.address_set_remove_addresses(aset, ip))

    t0 = time.monotonic()
    if workload == "load":
        for b in range(start, start + count, batch):
            with api.transaction(check_error=True) as txn:
                for i in range(b, min(b + batch, start + count)):
                    add(txn, i)
        events = count
    else:
        half = count // 2
        for i in range(start, start + half):
            with api.transaction(check_error=True) as txn:
                add(txn, i)
        for i in range(start, start + half):
            with api.transaction(check_error=True) as txn:
                remove(txn, i)
        events = 2 * half
    print(json.dumps({"events": events, "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
