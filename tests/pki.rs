//! Throwaway certificate authorities for tests (rcgen): a CA, and certificates it signs,
//! written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority for one test.
#[allow(missing_debug_implementations)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    ///
    /// # Panics
    /// If rcgen fails (it does not for these parameters).
    #[allow(clippy::unwrap_used)]
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA's issuer, for tests that sign certificates of their own shape.
    pub fn into_issuer(self) -> CertifiedIssuer<'static, KeyPair> {
        self.issuer
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/{name}.crt`.
    ///
    /// # Panics
    /// If the file cannot be written.
    #[allow(clippy::unwrap_used)]
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A certificate for `names` (DNS names or IP addresses; the first is also its common
    /// name) signed by this CA, written as `dir/{name}.crt` and `dir/{name}.key`.
    ///
    /// # Panics
    /// If rcgen fails or the files cannot be written.
    #[allow(clippy::unwrap_used)]
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, pem_key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        (crt, pem_key)
    }
}
