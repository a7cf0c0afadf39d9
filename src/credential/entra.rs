//! The gateway's side of Entra's token endpoint: the client credentials grant and the
//! on-behalf-of exchange, authenticated with a client secret or a certificate assertion
//! (a PS256 JWT with `x5t#S256`, as Entra's certificate-credential rules ask), sent with the
//! project's own hyper client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::CredentialError;
use crate::config::{ClientAuth, EntraApp};

/// Largest token response accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Bound on one call to the token endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of a client assertion (Entra accepts up to 10 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A token Entra issued: the header value to send upstream, and how long it lives.
#[derive(Clone)]
pub struct IssuedToken {
    /// `Bearer <access token>`, marked sensitive so hyper never logs it.
    pub authorization: http::HeaderValue,
    /// `expires_in` as Entra stated it.
    pub lifetime: Duration,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

/// Which grant to ask for.
pub enum Grant<'a> {
    /// The gateway's own app token.
    ClientCredentials,
    /// A token for the user of `assertion` (the caller's verified token).
    OnBehalfOf {
        /// The caller's token.
        assertion: &'a str,
    },
}

/// Calls the token endpoint of one app registration.
pub struct TokenClient {
    app: std::sync::Arc<EntraApp>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient").field("token_url", &self.app.token_url).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenClient {
    /// A client for `app`, connecting through `connector`.
    pub fn new(app: std::sync::Arc<EntraApp>, connector: HttpsConnector<HttpConnector>) -> Self {
        Self { app, client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// The app registration this client speaks for.
    pub fn app(&self) -> &EntraApp {
        &self.app
    }

    /// The form fields that prove the app's identity.
    fn client_auth_fields(&self) -> Result<Vec<(&'static str, String)>, CredentialError> {
        match &self.app.client_auth {
            ClientAuth::Secret(secret) => Ok(vec![("client_secret", secret.clone())]),
            ClientAuth::Certificate { key, thumbprint_s256 } => {
                let assertion = client_assertion(&self.app, key, thumbprint_s256)?;
                Ok(vec![
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned()),
                    ("client_assertion", assertion),
                ])
            }
        }
    }

    /// Asks for a token; Entra's refusals become [`CredentialError::Refused`].
    pub async fn request(&self, grant: Grant<'_>) -> Result<IssuedToken, CredentialError> {
        let exchange = matches!(grant, Grant::OnBehalfOf { .. });
        let form = self.form(grant)?;
        let request = Request::post(self.app.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| CredentialError::Unavailable(e.to_string()))?;
        self.call(request, exchange).await
    }

    /// The form of a token request: the grant's fields and the app's proof of identity.
    fn form(&self, grant: Grant<'_>) -> Result<String, CredentialError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", &self.app.client_id).append_pair("scope", &self.app.scope);
        match grant {
            Grant::ClientCredentials => {
                form.append_pair("grant_type", "client_credentials");
            }
            Grant::OnBehalfOf { assertion } => {
                form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                    .append_pair("requested_token_use", "on_behalf_of")
                    .append_pair("assertion", assertion);
            }
        }
        for (name, value) in self.client_auth_fields()? {
            form.append_pair(name, &value);
        }
        Ok(form.finish())
    }

    async fn call(&self, request: Request<Full<Bytes>>, exchange: bool) -> Result<IssuedToken, CredentialError> {
        let call = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    CredentialError::Unavailable(format!("the token endpoint could not be reached: {e}"))
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| CredentialError::Unavailable(format!("the token response could not be read: {e}")))?
                .to_bytes();
            Ok::<_, CredentialError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| CredentialError::Unavailable("the token endpoint did not answer in time".into()))??;
        parse_token_response(status, &body, exchange)
    }
}

/// The client assertion: `aud` is the token endpoint, `iss` = `sub` = the client id.
fn client_assertion(
    app: &EntraApp,
    key: &jsonwebtoken::EncodingKey,
    thumbprint_s256: &str,
) -> Result<String, CredentialError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(thumbprint_s256.to_owned());
    let now = unix_now();
    let claims = serde_json::json!({
        "aud": app.token_url.to_string(),
        "iss": app.client_id,
        "sub": app.client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME.as_secs(),
    });
    jsonwebtoken::encode(&header, &claims, key)
        .map_err(|e| CredentialError::Unavailable(format!("the client assertion could not be signed: {e}")))
}

/// Reads Entra's answer: a token, or an OAuth error with its `AADSTS` code (`exchange` says
/// whether the request was an on-behalf-of exchange).
pub fn parse_token_response(status: StatusCode, body: &[u8], exchange: bool) -> Result<IssuedToken, CredentialError> {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !status.is_success() {
        let code = json["error"].as_str().unwrap_or("unknown_error").to_owned();
        // Entra's descriptions start with the AADSTS code; the rest may carry trace ids and is
        // only logged.
        let aadsts = json["error_description"]
            .as_str()
            .and_then(|d| d.split(':').next())
            .filter(|c| c.starts_with("AADSTS") && c.len() < 16)
            .map(str::to_owned);
        tracing::warn!(status = status.as_u16(), error = %code, aadsts = ?aadsts, "the token endpoint refused");
        return Err(CredentialError::Refused { exchange, status: status.as_u16(), code, aadsts });
    }
    let token = json["access_token"].as_str().filter(|t| !t.is_empty());
    // Entra v2 sends a number; older endpoints a string.
    let lifetime = json["expires_in"].as_u64().or_else(|| json["expires_in"].as_str().and_then(|s| s.parse().ok()));
    let (Some(token), Some(lifetime)) = (token, lifetime) else {
        return Err(CredentialError::Unavailable("the token response has no access_token or expires_in".into()));
    };
    let mut authorization = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| CredentialError::Unavailable("the issued token is not a valid header value".into()))?;
    authorization.set_sensitive(true);
    Ok(IssuedToken { authorization, lifetime: Duration::from_secs(lifetime) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_response_gives_a_sensitive_bearer_header_and_its_lifetime() {
        let token = parse_token_response(
            StatusCode::OK,
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ.abc.def"}"#,
            false,
        )
        .unwrap();
        assert_eq!(token.authorization, "Bearer eyJ.abc.def");
        assert!(token.authorization.is_sensitive());
        assert_eq!(token.lifetime, Duration::from_secs(3599));
        let token = parse_token_response(StatusCode::OK, br#"{"expires_in":"60","access_token":"x"}"#, false).unwrap();
        assert_eq!(token.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn entra_errors_keep_their_oauth_and_aadsts_codes() {
        let body = br#"{"error":"interaction_required","error_description":"AADSTS50076: Due to a configuration change made by your administrator... Trace ID: 1","error_codes":[50076]}"#;
        let error = parse_token_response(StatusCode::BAD_REQUEST, body, true).unwrap_err();
        assert_eq!(error.caller_fault(), Some(crate::credential::CallerFault::ActionRequired));
        let CredentialError::Refused { status, code, aadsts, .. } = error else { panic!("{error:?}") };
        assert_eq!((status, code.as_str(), aadsts.as_deref()), (400, "interaction_required", Some("AADSTS50076")));
        // The same refusal of the gateway's own app token is the gateway's problem, not the caller's.
        let error = parse_token_response(StatusCode::BAD_REQUEST, body, false).unwrap_err();
        assert_eq!(error.caller_fault(), None);
        assert!(matches!(
            parse_token_response(StatusCode::OK, br#"{"token_type":"Bearer"}"#, false),
            Err(CredentialError::Unavailable(_))
        ));
        assert!(matches!(
            parse_token_response(StatusCode::SERVICE_UNAVAILABLE, b"<html>down</html>", false),
            Err(CredentialError::Refused { status: 503, .. })
        ));
    }
}
