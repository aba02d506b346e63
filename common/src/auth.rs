//! Bearer-token checks: workers join only with the cluster token, clients act only with the
//! API token. Tokens are compared in constant time.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use crate::CommonError;

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl TokenCheck {
    /// A check for `token` (none: every request passes).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid token")),
            None => Err(Status::unauthenticated(
                "missing authorization: Bearer token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_tokens() {
        let mut c = TokenCheck::new(Some("s3cret"));
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().expect("ascii"));
        assert!(c.call(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer s3creT".parse().expect("ascii"));
        assert_eq!(
            c.call(bad).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        assert!(c.call(Request::new(())).is_err());
        assert!(TokenCheck::new(None).call(Request::new(())).is_ok());
    }
}

/// Adds `authorization: Bearer <token>` to every outgoing request (clients and workers).
#[derive(Debug, Clone)]
pub struct Bearer {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// A registered worker's secret, sent as `graft-worker-secret`.
    secret: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// The metadata key a registered worker's calls carry its secret in.
pub const WORKER_SECRET: &str = "graft-worker-secret";

impl Bearer {
    /// A bearer for `token` (none: no header).
    ///
    /// # Errors
    /// [`CommonError::TokenNotAscii`] when the token is not printable ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, CommonError> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| CommonError::TokenNotAscii)
            })
            .transpose()?;
        Ok(Self {
            header,
            secret: None,
        })
    }

    /// The same bearer, also sending a registered worker's `secret` with every call.
    ///
    /// # Errors
    /// [`CommonError::TokenNotAscii`] when the secret is not printable ASCII.
    pub fn with_worker_secret(&self, secret: &str) -> Result<Self, CommonError> {
        Ok(Self {
            header: self.header.clone(),
            secret: Some(secret.parse().map_err(|_| CommonError::TokenNotAscii)?),
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(s) = &self.secret {
            req.metadata_mut().insert(WORKER_SECRET, s.clone());
        }
        Ok(req)
    }
}
