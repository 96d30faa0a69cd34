//! Certificates an operator names as extra trust anchors (a private CA's PEM file): read once,
//! each checked to be usable as a root, so a bad file is a configuration error at start, not a
//! failed handshake later.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Every certificate in `pem` (other PEM sections, such as keys, are skipped), each one
/// accepted as a trust anchor. Fails when there is none, when a section is not valid PEM, or
/// when a certificate cannot be parsed; the message says which.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        certs.push(item.map_err(|e| format!("is not valid PEM: {e}"))?);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| format!("certificate {} cannot be a trust anchor: {e}", i + 1))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_for_what_is_wrong() {
        assert_eq!(ca_certificates(b"").unwrap_err(), "holds no PEM certificate");
        assert_eq!(ca_certificates(b"hello\n").unwrap_err(), "holds no PEM certificate");
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(ca_certificates(key_only).unwrap_err(), "holds no PEM certificate");
        let junk = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let e = ca_certificates(junk).unwrap_err();
        assert!(e.starts_with("certificate 1 cannot be a trust anchor"), "{e}");
        let unterminated = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(ca_certificates(unterminated).unwrap_err().starts_with("is not valid PEM"));
    }
}
