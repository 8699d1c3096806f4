//! The config drive (`stacknet_node::configdrive`): an ISO9660 image read without mounting it
//! (`IsoImage::open`, `read_file`), then `openstack/latest/network_data.json` on it
//! (`read_network_data`); and the metadata service's HTTP response and URL parsers.
//!
//! Input: the image from its volume descriptors on (the 16 sectors of system area before
//! them are zeros, added here; the file is padded with zeros to 1 MiB). The same bytes are
//! read as an HTTP response (given in two pieces, as a socket would) and as a URL.
//! Property: a response complete before the end of the stream is the same at its end.
#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stacknet_node::configdrive::{self, IsoImage, NETWORK_DATA_PATH, Source};

const SYSTEM_AREA: u64 = 16 * 2048;
const IMAGE_SIZE: u64 = 1 << 20;

/// One scratch image file per process, unlinked as soon as it is made (nothing is left
/// behind however the process ends): read through `/proc/self/fd/N`.
static IMAGE: LazyLock<(PathBuf, File)> = LazyLock::new(|| {
    let path = std::env::temp_dir().join(format!("stacknet-fuzz-configdrive-{}.iso", std::process::id()));
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("scratch image");
    std::fs::remove_file(&path).expect("unlink the scratch image");
    (PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())), file)
});

fuzz_target!(|data: &[u8]| {
    let (path, file) = &*IMAGE;
    file.set_len(0).expect("truncate");
    file.write_all_at(data, SYSTEM_AREA).expect("write the image");
    file.set_len(IMAGE_SIZE.max(SYSTEM_AREA + data.len() as u64)).expect("pad the image");
    if let Ok(iso) = IsoImage::open(path) {
        let _ = iso.volume_id();
        let _ = iso.has_joliet();
        let _ = iso.read_file(NETWORK_DATA_PATH);
        let _ = iso.read_file("openstack/latest/meta_data.json");
        let _ = iso.read_file("OPENSTACK/LATEST");
        let _ = configdrive::read_network_data(&Source::ConfigDrive(path.clone()));
    }

    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut first = None;
    for (buf, eof) in [(&data[..cut], false), (data, false), (data, true)] {
        match configdrive::fuzzing::parse_response(buf, eof) {
            Ok(Some(r)) => {
                let first = first.get_or_insert(r.clone());
                assert_eq!(*first, r, "the response changed as more bytes came");
            }
            Ok(None) => assert!(!eof, "nothing more comes, yet no answer"),
            Err(_) => break,
        }
    }
    if let Ok(url) = std::str::from_utf8(data) {
        let _ = configdrive::fuzzing::parse_http_url(url);
    }
});
