//! Authorisation: a verified principal may write connectors when its tenant is allowed and it
//! holds one of the configured permissions: for a delegated token, one of `delegated_scopes` is
//! exactly one of its scopes; for an application token, one of `application_roles` is exactly one
//! of its roles. Comparison is exact and case-sensitive, as Entra issues them; no prefixes.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::auth::{Principal, PrincipalKind};
use crate::config::{AuthConfig, PolicyConfig};
use crate::error::GatewayError;
use crate::future::ResponseFuture;

/// Why a verified principal may not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// None of the required permissions.
    #[error("the token lacks a required permission: one of {}", required.join(", "))]
    InsufficientScope {
        /// Any one of these would do.
        required: Vec<String>,
        /// Delegated (scopes) or application (roles).
        kind: PrincipalKind,
    },
    /// `tid` not in `allowed_tenants`.
    #[error("tenant {tenant_id} is not allowed to use this gateway")]
    TenantNotAllowed {
        /// The token's tenant.
        tenant_id: String,
    },
}

/// The rules, compiled once from config.
#[derive(Debug)]
pub struct Rules {
    delegated_scopes: Vec<String>,
    application_roles: Vec<String>,
    allowed_tenants: Vec<String>,
}

impl Rules {
    /// Rules from the `[policy]` and `[auth]` tables.
    pub fn new(policy: &PolicyConfig, auth: &AuthConfig) -> Self {
        Self {
            delegated_scopes: policy.delegated_scopes.clone(),
            application_roles: policy.application_roles.clone(),
            allowed_tenants: auth.allowed_tenants.iter().map(|t| t.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether the principal's tenant may use the gateway at all.
    pub fn check_tenant(&self, principal: &Principal) -> Result<(), PolicyError> {
        if !self.allowed_tenants.is_empty() && !self.allowed_tenants.contains(&principal.tenant_id.to_ascii_lowercase())
        {
            return Err(PolicyError::TenantNotAllowed { tenant_id: principal.tenant_id.clone() });
        }
        Ok(())
    }

    /// Decides for one principal: tenant, then permission to write connectors.
    pub fn check(&self, principal: &Principal) -> Result<(), PolicyError> {
        self.check_tenant(principal)?;
        let (granted, required) = match principal.kind {
            PrincipalKind::Delegated => (&principal.scopes, &self.delegated_scopes),
            PrincipalKind::Application => (&principal.roles, &self.application_roles),
        };
        if required.iter().any(|r| granted.contains(r)) {
            Ok(())
        } else {
            Err(PolicyError::InsufficientScope { required: required.clone(), kind: principal.kind })
        }
    }
}

/// Applies [`Rules`] to governed requests. Runs after authentication.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    rules: Arc<Rules>,
}

impl AuthorizeLayer {
    /// Authorisation with `rules`.
    pub fn new(rules: Rules) -> Self {
        Self { rules: Arc::new(rules) }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, rules: self.rules.clone() }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let governed = crate::route::is_governed(request.extensions());
        if governed {
            let decision = match request.extensions().get::<Principal>() {
                Some(principal) => self.rules.check(principal).map_err(GatewayError::from),
                // Authentication always runs first; a governed request without a principal is refused.
                None => Err(GatewayError::Auth(crate::auth::AuthError::MissingToken)),
            };
            if let Err(error) = decision {
                return ResponseFuture::rejected(error);
            }
        } else if let Some(principal) = request.extensions().get::<Principal>() {
            // Authenticated although not governed (the gateway calls Graph with its own
            // credential): only the tenant allowlist applies.
            if let Err(error) = self.rules.check_tenant(principal) {
                return ResponseFuture::rejected(error.into());
            }
        }
        ResponseFuture::future(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(kind: PrincipalKind, scopes: &[&str], roles: &[&str]) -> Principal {
        Principal {
            tenant_id: "6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de".into(),
            object_id: Some("o".into()),
            app_id: Some("a".into()),
            kind,
            name: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn rules(tenants: &[&str]) -> Rules {
        Rules {
            delegated_scopes: vec!["OnPremisesPublishingProfiles.ReadWrite.All".into()],
            application_roles: vec!["OnPremisesPublishingProfiles.ReadWrite.All".into()],
            allowed_tenants: tenants.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn exact_scope_and_role_matching() {
        let r = rules(&[]);
        let ok = "OnPremisesPublishingProfiles.ReadWrite.All";
        assert!(r.check(&principal(PrincipalKind::Delegated, &["User.Read", ok], &[])).is_ok());
        assert!(r.check(&principal(PrincipalKind::Application, &[], &[ok])).is_ok());
        for weak in [
            "OnPremisesPublishingProfiles.ReadWrite",
            "OnPremisesPublishingProfiles.ReadWrite.All.Extra",
            "onpremisespublishingprofiles.readwrite.all",
            "OnPremisesPublishingProfiles.Read.All",
        ] {
            assert!(r.check(&principal(PrincipalKind::Delegated, &[weak], &[])).is_err(), "{weak}");
            assert!(r.check(&principal(PrincipalKind::Application, &[], &[weak])).is_err(), "{weak}");
        }
        // A role does not help a delegated token, nor a scope an application token.
        assert!(r.check(&principal(PrincipalKind::Delegated, &[], &[ok])).is_err());
        assert!(r.check(&principal(PrincipalKind::Application, &[ok], &[])).is_err());
    }

    #[test]
    fn tenants_outside_the_allowlist_are_refused() {
        let ok = "OnPremisesPublishingProfiles.ReadWrite.All";
        let p = principal(PrincipalKind::Application, &[], &[ok]);
        assert!(rules(&["6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de"]).check(&p).is_ok());
        assert!(matches!(
            rules(&["00000000-0000-0000-0000-000000000001"]).check(&p),
            Err(PolicyError::TenantNotAllowed { .. })
        ));
    }
}
