//! The simulator's token endpoint (`/{tenant}/oauth2/v2.0/token`), with Entra's grants and errors:
//!
//! - `client_credentials`: an app token for `{resource}/.default`;
//! - `urn:ietf:params:oauth:grant-type:jwt-bearer` with `requested_token_use=on_behalf_of`: a
//!   user token for Graph, exchanged from a token the simulator issued for the dev app (its
//!   signature, lifetime and audience are checked; users named `mfa-...` get
//!   `interaction_required`, app-only tokens `invalid_grant`);
//!
//! each authenticated by the dev client secret or by a client assertion (PS256 or RS256 with
//! `x5t#S256`), whose signature is verified against the certificates the simulator trusts.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::entra::{
    DEV_AUDIENCE, DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_ROLE, DevKey, Grant, access_token_claims_for, now,
};
use crate::config::thumbprint_s256;

/// The certificate the simulator trusts for the dev app from the start: `config/dev/`.
pub const DEV_CERTIFICATE_PEM: &str = include_str!("../../config/dev/simulator-client.crt");
/// Its private key. A development value, public like [`DEV_CLIENT_SECRET`].
pub const DEV_PRIVATE_KEY_PEM: &str = include_str!("../../config/dev/simulator-client.key");

/// The delegated permission OBO tokens for Graph carry.
pub const OBO_SCOPE: &str = "OnPremisesPublishingProfiles.ReadWrite.All";

/// What the token endpoint needs to answer one request.
#[derive(Debug)]
pub struct TokenIssuer<'a> {
    /// `http://127.0.0.1:port`.
    pub base: &'a str,
    /// The URL this request was sent to (a client assertion's `aud`).
    pub token_url: &'a str,
    /// The signing key.
    pub key: &'a DevKey,
    /// Lifetime of issued tokens, in seconds.
    pub lifetime: u64,
    /// DER certificates trusted for client assertions.
    pub certificates: &'a [Vec<u8>],
}

/// An OAuth error answer as Entra shapes it.
pub fn oauth_error(error: &str, aadsts: &str, description: &str) -> Value {
    json!({
        "error": error,
        "error_description": format!("{aadsts}: {description}"),
        "error_codes": [aadsts.trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
        "timestamp": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    })
}

type Refusal = (u16, Value);

fn refuse(status: u16, error: &str, aadsts: &str, description: &str) -> Refusal {
    (status, oauth_error(error, aadsts, description))
}

/// The DER of the first certificate in a PEM text.
pub fn certificate_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok().map(|c| c.as_ref().to_vec())
}

/// Answers a token request (form fields already decoded): `Ok(token response)` or
/// `Err((status, oauth error))`.
///
/// Beyond Entra's own fields it accepts two dev-only fields for `client_credentials`, `roles` and
/// `scp` (space-separated), to choose what the token grants, so clients can try both token
/// shapes offline.
pub fn token_response(issuer: &TokenIssuer<'_>, form: &[(String, String)]) -> Result<Value, Refusal> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let grant_type = field("grant_type").ok_or_else(|| {
        refuse(
            400,
            "invalid_request",
            "AADSTS900144",
            "The request body must contain the following parameter: 'grant_type'.",
        )
    })?;
    if !matches!(grant_type, "client_credentials" | "urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err(refuse(
            400,
            "unsupported_grant_type",
            "AADSTS70003",
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    if field("client_id") != Some(DEV_CLIENT_ID) {
        return Err(refuse(
            400,
            "unauthorized_client",
            "AADSTS700016",
            "Application with identifier was not found in the directory.",
        ));
    }
    authenticate_client(issuer, &field)?;
    let scope = field("scope").unwrap_or_default();
    let Some(audience) = scope.strip_suffix("/.default") else {
        return Err(refuse(
            400,
            "invalid_scope",
            "AADSTS1002012",
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        ));
    };
    let (grant, oid) = if grant_type == "client_credentials" {
        let split = |v: &str| v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        let grant = match (field("scp"), field("roles")) {
            (Some(scp), _) => Grant::Delegated { scopes: split(scp), user: "adele@contoso.example".into() },
            (None, Some(roles)) => Grant::Application { roles: split(roles) },
            (None, None) => Grant::Application { roles: vec![DEV_ROLE.to_owned()] },
        };
        (grant, None)
    } else {
        if field("requested_token_use") != Some("on_behalf_of") {
            return Err(refuse(
                400,
                "invalid_request",
                "AADSTS900144",
                "The request body must contain the following parameter: 'requested_token_use'.",
            ));
        }
        on_behalf_of(issuer, field("assertion").unwrap_or_default())?
    };
    let mut claims = access_token_claims_for(issuer.base, audience, DEV_CLIENT_ID, &grant, issuer.lifetime);
    if let (Some(oid), Some(map)) = (oid, claims.as_object_mut()) {
        map.insert("oid".into(), oid);
    }
    Ok(json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": issuer.lifetime,
        "ext_expires_in": issuer.lifetime,
        "access_token": issuer.key.sign(&json!({}), &claims),
    }))
}

/// The client secret, or a client assertion signed by a trusted certificate.
fn authenticate_client<'f>(issuer: &TokenIssuer<'_>, field: &impl Fn(&str) -> Option<&'f str>) -> Result<(), Refusal> {
    match (field("client_assertion_type"), field("client_assertion")) {
        (Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), Some(assertion)) => {
            verify_client_assertion(issuer, assertion)
        }
        (Some(_), _) => Err(refuse(400, "invalid_request", "AADSTS50027", "Invalid client assertion type.")),
        (None, _) if field("client_secret") == Some(DEV_CLIENT_SECRET) => Ok(()),
        (None, _) => Err(refuse(401, "invalid_client", "AADSTS7000215", "Invalid client secret provided.")),
    }
}

fn verify_client_assertion(issuer: &TokenIssuer<'_>, assertion: &str) -> Result<(), Refusal> {
    let invalid = |aadsts: &str, what: &str| refuse(401, "invalid_client", aadsts, what);
    let mut parts = assertion.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("AADSTS50027", "JWT token is invalid or malformed."));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (Some(head), Some(claims), Ok(signature)) =
        (decode(header), decode(payload), URL_SAFE_NO_PAD.decode(signature))
    else {
        return Err(invalid("AADSTS50027", "JWT token is invalid or malformed."));
    };
    let algorithm = match head["alg"].as_str() {
        Some("PS256") => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        Some("RS256") => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err(invalid("AADSTS5002738", "Invalid JWT token. The token signing algorithm is not supported.")),
    };
    let thumbprint = head["x5t#S256"].as_str().unwrap_or_default();
    let Some(der) = issuer.certificates.iter().find(|der| thumbprint_s256(der) == thumbprint) else {
        return Err(invalid(
            "AADSTS700027",
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        ));
    };
    let certificate = CertificateDer::from(der.as_slice());
    let verified = webpki::EndEntityCert::try_from(&certificate)
        .map(|cert| cert.verify_signature(algorithm, format!("{header}.{payload}").as_bytes(), &signature).is_ok());
    if verified != Ok(true) {
        return Err(invalid("AADSTS700027", "Client assertion failed signature validation."));
    }
    if claims["aud"].as_str() != Some(issuer.token_url) {
        return Err(invalid(
            "AADSTS700212",
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    if claims["iss"].as_str() != Some(DEV_CLIENT_ID) || claims["sub"].as_str() != Some(DEV_CLIENT_ID) {
        return Err(invalid(
            "AADSTS700021",
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let now = now();
    let in_time = claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && claims["nbf"].as_u64().is_none_or(|nbf| nbf <= now + 300);
    if !in_time || claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("AADSTS700024", "Client assertion is not within its valid time range."));
    }
    Ok(())
}

/// Checks the caller's token for an on-behalf-of exchange; returns the user's grant and `oid`.
fn on_behalf_of(issuer: &TokenIssuer<'_>, assertion: &str) -> Result<(Grant, Option<Value>), Refusal> {
    let invalid_grant = |aadsts: &str, what: &str| refuse(400, "invalid_grant", aadsts, what);
    let jwk = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(issuer.key.jwk())
        .map_err(|_| invalid_grant("AADSTS50013", "Assertion failed signature validation."))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .map_err(|_| invalid_grant("AADSTS50013", "Assertion failed signature validation."))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[DEV_AUDIENCE, DEV_CLIENT_ID]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => {
                invalid_grant("AADSTS500133", "Assertion is not within its valid time range.")
            }
            ErrorKind::InvalidAudience => invalid_grant(
                "AADSTS50013",
                "Assertion audience does not match the Client app presenting the assertion.",
            ),
            _ => invalid_grant("AADSTS50013", "Assertion failed signature validation."),
        }
    })?;
    let claims = claims.claims;
    if claims["scp"].as_str().is_none() {
        return Err(invalid_grant(
            "AADSTS50013",
            "Assertion is not a user token: on-behalf-of needs a delegated token.",
        ));
    }
    let user = claims["preferred_username"].as_str().unwrap_or("adele@contoso.example").to_owned();
    if user.starts_with("mfa-") {
        let mut error = oauth_error(
            "interaction_required",
            "AADSTS50076",
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.",
        );
        error["claims"] = json!(r#"{"access_token":{"capolids":{"essential":true,"values":["sim"]}}}"#);
        return Err((400, error));
    }
    Ok((Grant::Delegated { scopes: vec![OBO_SCOPE.to_owned()], user }, claims.get("oid").cloned()))
}
