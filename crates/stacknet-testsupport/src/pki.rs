//! A private CA for the TLS tests, as OVN deployments set one up: it signs both ends.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// The three files of one end: `<stem>.crt`, `<stem>.key` and the CA as `<stem>-ca.crt`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub ca_cert: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Pki { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA") }
    }

    /// Writes `<stem>.crt` / `<stem>.key` signed by this CA, and `<stem>-ca.crt`.
    pub fn issue(&self, dir: &Path, stem: &str, cn: &str) -> Issued {
        self.issue_with(dir, stem, cn, |_| {})
    }

    /// An expired certificate: valid through 2019 only.
    pub fn issue_expired(&self, dir: &Path, stem: &str, cn: &str) -> Issued {
        self.issue_with(dir, stem, cn, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(&self, dir: &Path, stem: &str, cn: &str, adjust: impl FnOnce(&mut CertificateParams)) -> Issued {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, cn);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        let issued = Issued {
            certificate: dir.join(format!("{stem}.crt")),
            private_key: dir.join(format!("{stem}.key")),
            ca_cert: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&issued.certificate, cert.pem()).expect("written");
        std::fs::write(&issued.private_key, key.serialize_pem()).expect("written");
        std::fs::write(&issued.ca_cert, self.ca.pem()).expect("written");
        issued
    }
}
