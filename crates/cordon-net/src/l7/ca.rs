//! The per-session certificate authority that lets the gateway terminate the
//! sandbox's TLS.
//!
//! The CA key (ECDSA P-256) lives only in this process's memory and dies with
//! the session; its certificate is valid for the session's `ca_validity`
//! (a day by default) and is what the sandbox installs in its trust stores.
//! Leaf certificates are minted on demand, one per server name, and cached
//! (bounded) together with a ready rustls server configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Leaf configurations kept; past this the cache starts over.
const MAX_LEAVES: usize = 1024;
/// Certificates start this long in the past, for clocks running slightly
/// behind inside the sandbox.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The longest CA lifetime accepted; longer requests are clamped.
const MAX_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);

/// A CA failure; the message names what could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {reason}")]
pub(crate) struct CaError {
    what: String,
    reason: String,
}

fn ca_err(what: impl Into<String>, reason: impl std::fmt::Display) -> CaError {
    CaError {
        what: what.into(),
        reason: reason.to_string(),
    }
}

pub(crate) struct SessionCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
    /// Seconds since the epoch at which the CA (and every leaf) expires.
    not_after: u64,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ca_err("draw a certificate serial number", e))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

impl SessionCa {
    pub(crate) fn new(
        session: &str,
        validity: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<SessionCa, CaError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ca_err("read the clock", e))?;
        let validity = validity.clamp(Duration::from_secs(60), MAX_VALIDITY);
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let not_before = now.saturating_sub(BACKDATE);
        let not_after = now + validity;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err("generate the session CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let label: String = session
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(32)
            .collect();
        dn.push(DnType::OrganizationName, "Cordon");
        dn.push(
            DnType::CommonName,
            format!("Cordon session CA {label}").trim().to_string(),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = epoch + not_before;
        params.not_after = epoch + not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| ca_err("sign the session CA certificate", e))?;
        Ok(SessionCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            not_after: not_after.as_secs(),
            provider,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.pem
    }

    #[cfg(test)]
    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A certificate chain and key for `name` (a DNS name or IP literal).
    pub(crate) fn leaf(
        &self,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let what = || format!("make a certificate for {name:?}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ca_err(what(), e))?;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ca_err(what(), e))?;
        let mut params =
            CertificateParams::new(vec![name.to_string()]).map_err(|e| ca_err(what(), e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = epoch + now.saturating_sub(BACKDATE);
        params.not_after = epoch + Duration::from_secs(self.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| ca_err(what(), e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert.clone()], key))
    }

    /// The TLS server configuration that presents a leaf for `name`,
    /// offering `h2` and `http/1.1`.
    pub(crate) fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        let key = name.to_ascii_lowercase();
        if let Some(cfg) = self.lock().get(&key) {
            return Ok(cfg.clone());
        }
        let (chain, leaf_key) = self.leaf(&key)?;
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err("set up TLS", e))?
            .with_no_client_auth()
            .with_single_cert(chain, leaf_key)
            .map_err(|e| ca_err(format!("use the certificate for {name:?}"), e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let mut leaves = self.lock();
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(key, cfg.clone());
        Ok(cfg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServerConfig>>> {
        self.leaves.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify(ca: &SessionCa, chain: &[CertificateDer<'static>], name: &str) -> bool {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn leaf_verifies_against_the_session_ca_for_its_name_only() {
        let ca = SessionCa::new("s1", Duration::from_secs(86_400), provider()).unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let (chain, _) = ca.leaf("api.example.com").unwrap();
        assert!(verify(&ca, &chain, "api.example.com"));
        assert!(
            !verify(&ca, &chain, "other.example.com"),
            "SAN is exactly the name"
        );
        let (ip_chain, _) = ca.leaf("93.184.216.34").unwrap();
        assert!(verify(&ca, &ip_chain, "93.184.216.34"));

        let other = SessionCa::new("s2", Duration::from_secs(86_400), provider()).unwrap();
        assert!(
            !verify(&other, &chain, "api.example.com"),
            "another session's CA"
        );
    }

    #[test]
    fn server_configs_are_cached_per_name() {
        let ca = SessionCa::new("s", Duration::from_secs(3600), provider()).unwrap();
        let a = ca.server_config("Api.Example.com").unwrap();
        let b = ca.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
