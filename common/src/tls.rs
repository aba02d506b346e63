//! TLS (rustls): the coordinator serves TLS when given a certificate and key; workers and
//! clients connect with `https://` URLs and trust the CA certificate they are given.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::CommonError;

/// The server side: certificate chain and key, PEM.
///
/// # Errors
/// A message naming the file that cannot be read.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, CommonError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CommonError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    // tonic parses the PEM only when the server takes the config: do that now, so that a bad
    // certificate is an error at start-up, named, and not after the server said it was up.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| {
            CommonError::Tls(format!(
                "{} / {}: {}",
                cert.display(),
                key.display(),
                chain(&e)
            ))
        })?;
    Ok(config)
}

/// An error with its sources: tonic's transport errors say only their kind on top.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        // Wrappers often repeat their source's text; say it once.
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Whether `url` asks for TLS.
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
}

/// An endpoint for `url`: plain for `http://`, TLS trusting `ca` (PEM) for `https://`.
///
/// # Errors
/// A message when the URL is malformed, `https://` comes without a CA file, or the file
/// cannot be read.
pub fn client_endpoint(url: &str, ca: Option<&Path>) -> Result<Endpoint, CommonError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CommonError::Tls(format!("{url:?} is not a URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    match (is_https(url), ca) {
        (true, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|source| CommonError::Io {
                path: ca.display().to_string(),
                source,
            })?;
            endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| CommonError::Tls(format!("TLS: {}", chain(&e))))
        }
        (true, None) => Err(CommonError::Tls(format!(
            "{url} uses TLS: give the CA certificate that signed the coordinator's (tls_ca / --tls-ca)"
        ))),
        (false, Some(_)) => Err(CommonError::Tls(format!(
            "a CA certificate was given but {url} is not https://"
        ))),
        (false, None) => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ca_files_must_agree() {
        assert!(client_endpoint("http://127.0.0.1:7070", None).is_ok());
        let e = client_endpoint("HTTPS://127.0.0.1:7070", None).expect_err("https needs a CA");
        assert!(e.to_string().contains("tls-ca"), "{e}");
        let e = client_endpoint("http://127.0.0.1:7070", Some(Path::new("/ca.pem")))
            .expect_err("CA without https");
        assert!(e.to_string().contains("not https"), "{e}");
        let e = client_endpoint("https://127.0.0.1:7070", Some(Path::new("/no/such/ca.pem")))
            .expect_err("missing file");
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
        let e = server_config(Path::new("/no/cert.pem"), Path::new("/no/key.pem"))
            .expect_err("missing files");
        assert!(e.to_string().contains("/no/cert.pem"), "{e}");
    }
}
