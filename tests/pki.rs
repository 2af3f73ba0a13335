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

    /// The CA certificate, DER (for a root store).
    pub fn der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        self.issuer.der()
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
    /// name) signed by this CA, and its key.
    #[allow(clippy::unwrap_used)]
    fn sign(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.issuer).unwrap(), key)
    }

    /// [`TestCa::sign`]ed for `names`, written as `dir/{name}.crt` and `dir/{name}.key`.
    ///
    /// # Panics
    /// If rcgen fails or the files cannot be written.
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (crt, key, _) = self.issue_der(dir, name, names);
        (crt, key)
    }

    /// [`TestCa::issue`], and the certificate's DER.
    ///
    /// # Panics
    /// If rcgen fails or the files cannot be written.
    #[allow(clippy::unwrap_used)]
    pub fn issue_der(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let (cert, key) = self.sign(names);
        let (crt, pem_key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        (crt, pem_key, cert.der().to_vec())
    }

    /// [`TestCa::sign`]ed for `names`: certificate and key in one PEM text (a client identity).
    pub fn identity_pem(&self, names: &[&str]) -> String {
        let (cert, key) = self.sign(names);
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}
