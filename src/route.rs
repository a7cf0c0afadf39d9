//! Classification: is this request a write to an Application Proxy connector, and which one?
//!
//! Graph treats path segments case-insensitively, decodes percent-escapes, and accepts OData key
//! syntax (`/connectors('id')`, `/applications(appId='x')`), so the decision is made on a canonical
//! form built by the same rules. Spellings no client sends but attackers try (encoded slashes, dot
//! segments, empty segments, bad escapes) are refused rather than guessed at.
//!
//! [`ClassifyLayer`] only classifies (it never fails, so metrics can label every request by its
//! class); [`RouteGuardLayer`] sits inside the rescue edge and refuses what classification rejected.

use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::config::OtherRequests;
use crate::error::GatewayError;

/// Headers that ask a server to treat a request as another method.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Graph API version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `/v1.0`.
    V1,
    /// `/beta`.
    Beta,
}

impl ApiVersion {
    /// As written in Graph URLs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1.0",
            Self::Beta => "beta",
        }
    }
}

/// How the connector was reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectorParent {
    /// `/applications/{id}/connectorGroup/members/{c}`.
    Application {
        /// The application's object id.
        id: String,
    },
    /// `/applications(appId='{appId}')/connectorGroup/members/{c}`.
    ApplicationByAppId {
        /// The application's client (app) id.
        app_id: String,
    },
    /// `/onPremisesPublishingProfiles/{p}/connectors/{c}` or `.../connectorGroups/{g}/members/{c}`.
    Profile {
        /// The publishing profile, usually `applicationProxy`.
        profile_id: String,
        /// The connector group, when reached through one.
        group_id: Option<String>,
    },
}

/// The connector a governed write targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectorTarget {
    /// `v1.0` or `beta`.
    pub api_version: ApiVersion,
    /// The connector id (GUIDs lower-cased, since Graph compares them case-insensitively).
    pub connector_id: String,
    /// The navigation used to reach it.
    pub parent: ConnectorParent,
}

/// The class of a request, used for policy and as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// A write to a connector entity: governed.
    ConnectorWrite,
    /// `POST /{v}/$batch`: governed when it carries a connector write.
    Batch,
    /// Anything else.
    Other,
}

impl RouteClass {
    /// Label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectorWrite => "connector_write",
            Self::Batch => "batch",
            Self::Other => "other",
        }
    }
}

/// Why classification refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path could be read more than one way.
    #[error("the request path is ambiguous: {reason}")]
    Ambiguous {
        /// What made it ambiguous.
        reason: &'static str,
    },
    /// A method-override header on a governed path.
    #[error("method-override header {header} is not accepted on connector paths")]
    MethodOverride {
        /// The header's name.
        header: &'static str,
    },
    /// A write method other than PATCH on a connector.
    #[error("{method} is not allowed on a connector; use PATCH to change one")]
    MethodNotAllowed {
        /// The refused method.
        method: Method,
    },
    /// `policy.other_requests = "deny"` and this is not a connector write.
    #[error("this gateway only forwards connector writes")]
    NotAConnectorWrite,
}

/// The classification of one request, in request extensions for every later stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The class.
    pub class: RouteClass,
    /// The connector, for connector writes.
    pub target: Option<ConnectorTarget>,
    /// Set when the request must be refused before anything else runs.
    pub rejection: Option<RouteError>,
}

impl Route {
    fn other() -> Self {
        Self { class: RouteClass::Other, target: None, rejection: None }
    }

    fn rejected(class: RouteClass, error: RouteError) -> Self {
        Self { class, target: None, rejection: Some(error) }
    }
}

/// Is this request governed: a connector write, or a batch carrying at least one?
pub fn is_governed(extensions: &http::Extensions) -> bool {
    match extensions.get::<Route>() {
        Some(Route { class: RouteClass::ConnectorWrite, .. }) => true,
        Some(Route { class: RouteClass::Batch, .. }) => {
            extensions.get::<crate::batch::BatchPlan>().is_some_and(|plan| !plan.writes.is_empty())
        }
        _ => false,
    }
}

/// Classifies a request from its method, URI and headers.
pub fn classify(method: &Method, uri: &Uri, headers: &HeaderMap) -> Route {
    let path = uri.path();
    let Some(rest) = path.strip_prefix('/') else {
        return Route::other();
    };
    let mut raw_segments = rest.split('/');
    let Some(version) = raw_segments.next().and_then(|s| decode(s).ok()).and_then(|s| api_version(&s)) else {
        return Route::other();
    };
    let mut tokens = Vec::with_capacity(8);
    let mut raw_segments = raw_segments.peekable();
    while let Some(raw) = raw_segments.next() {
        if raw.is_empty() {
            if raw_segments.peek().is_none() && !tokens.is_empty() {
                break; // one trailing slash
            }
            return Route::rejected(RouteClass::Other, RouteError::Ambiguous { reason: "empty path segment" });
        }
        let segment = match decode(raw) {
            Ok(segment) => segment,
            Err(reason) => {
                return Route::rejected(RouteClass::Other, RouteError::Ambiguous { reason });
            }
        };
        if segment == "." || segment == ".." {
            return Route::rejected(RouteClass::Other, RouteError::Ambiguous { reason: "dot segment" });
        }
        if let Err(reason) = tokenize(&segment, &mut tokens) {
            return Route::rejected(RouteClass::Other, RouteError::Ambiguous { reason });
        }
    }
    let override_header = METHOD_OVERRIDE_HEADERS.into_iter().find(|h| headers.contains_key(*h));
    if matches!(tokens.as_slice(), [Token::Name(name)] if name.eq_ignore_ascii_case("$batch")) {
        return match (override_header, method) {
            (Some(header), _) => Route::rejected(RouteClass::Batch, RouteError::MethodOverride { header }),
            (None, &Method::POST) => Route { class: RouteClass::Batch, target: None, rejection: None },
            (None, _) => Route::other(),
        };
    }
    let Some((target, nested)) = match_connector(version, &tokens) else {
        return Route::other();
    };
    let write = |rejection| Route { class: RouteClass::ConnectorWrite, target: Some(target.clone()), rejection };
    if let Some(header) = override_header {
        return write(Some(RouteError::MethodOverride { header }));
    }
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => Route::other(),
        Method::PATCH if !nested => write(None),
        _ => write(Some(RouteError::MethodNotAllowed { method: method.clone() })),
    }
}

fn api_version(segment: &str) -> Option<ApiVersion> {
    if segment.eq_ignore_ascii_case("v1.0") {
        Some(ApiVersion::V1)
    } else if segment.eq_ignore_ascii_case("beta") {
        Some(ApiVersion::Beta)
    } else {
        None
    }
}

/// Percent-decodes one segment, refusing escapes that would change how the path splits.
fn decode(raw: &str) -> Result<String, &'static str> {
    if raw.contains('\\') {
        return Err("backslash in path");
    }
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or("invalid percent-encoding")?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("invalid percent-encoding")?;
        match value {
            b'/' => return Err("encoded slash"),
            b'\\' => return Err("encoded backslash"),
            0 => return Err("encoded NUL"),
            _ => out.push(value),
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8")
}

/// One step of a canonical path: a navigation name or an entity key.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Name(String),
    Key(String),
    AppIdKey(String),
}

/// Splits `name('key')`, `name(key)` and `name(appId='key')` into name and key tokens.
fn tokenize(segment: &str, tokens: &mut Vec<Token>) -> Result<(), &'static str> {
    let Some((name, rest)) = segment.split_once('(') else {
        tokens.push(Token::Name(segment.to_owned()));
        return Ok(());
    };
    let inner = rest.strip_suffix(')').ok_or("unbalanced key parentheses")?;
    if name.is_empty() {
        return Err("key without a name");
    }
    tokens.push(Token::Name(name.to_owned()));
    let (app_id, value) = match inner.split_once('=') {
        Some((alias, value)) if alias.trim().eq_ignore_ascii_case("appid") => (true, value.trim()),
        Some(_) => return Err("unknown key alias"),
        None => (false, inner.trim()),
    };
    let value = unquote(value)?;
    if value.is_empty() {
        return Err("empty key");
    }
    tokens.push(if app_id { Token::AppIdKey(value) } else { Token::Key(value) });
    Ok(())
}

fn unquote(value: &str) -> Result<String, &'static str> {
    match value.strip_prefix('\'') {
        Some(quoted) => {
            let inner = quoted.strip_suffix('\'').ok_or("unbalanced quote in key")?;
            if inner.replace("''", "").contains('\'') {
                return Err("unbalanced quote in key");
            }
            Ok(inner.replace("''", "'"))
        }
        None if value.contains('\'') => Err("unbalanced quote in key"),
        None => Ok(value.to_owned()),
    }
}

fn is(token: Option<&Token>, name: &str) -> bool {
    matches!(token, Some(Token::Name(n)) if n.eq_ignore_ascii_case(name))
}

/// A key position accepts a key token or a plain segment.
fn key(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Key(k) | Token::Name(k)) => Some(k),
        _ => None,
    }
}

fn connector_id(id: &str) -> String {
    let guid_like = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if guid_like { id.to_ascii_lowercase() } else { id.to_owned() }
}

/// Matches the navigations that end at a connector; `nested` is true when the path goes on below it.
fn match_connector(api_version: ApiVersion, tokens: &[Token]) -> Option<(ConnectorTarget, bool)> {
    let at = |i: usize| tokens.get(i);
    let (parent, connector_at) = if is(at(0), "applications") {
        let parent = match at(1)? {
            Token::AppIdKey(app_id) => ConnectorParent::ApplicationByAppId { app_id: app_id.clone() },
            other => ConnectorParent::Application { id: key(Some(other))?.to_owned() },
        };
        (is(at(2), "connectorGroup") && is(at(3), "members")).then_some((parent, 4))?
    } else if is(at(0), "onPremisesPublishingProfiles") {
        let profile_id = key(at(1))?.to_owned();
        if is(at(2), "connectors") {
            (ConnectorParent::Profile { profile_id, group_id: None }, 3)
        } else if is(at(2), "connectorGroups") && is(at(4), "members") {
            (ConnectorParent::Profile { profile_id, group_id: Some(key(at(3))?.to_owned()) }, 5)
        } else {
            return None;
        }
    } else {
        return None;
    };
    let id = key(at(connector_at))?;
    let target = ConnectorTarget { api_version, connector_id: connector_id(id), parent };
    Some((target, tokens.len() > connector_at + 1))
}

/// Classifies every request and stores the [`Route`] in its extensions. Never fails, so metrics
/// and logs can label every request by its class.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClassifyRequest;

impl crate::step::RequestStep for ClassifyRequest {
    fn apply<B>(&self, request: &mut Request<B>) {
        let route = classify(request.method(), request.uri(), request.headers());
        request.extensions_mut().insert(route);
    }
}

/// The classification stage as a layer.
pub type ClassifyLayer = crate::step::StepLayer<ClassifyRequest>;
/// The classification stage as a service.
pub type Classify<S> = crate::step::Step<S, ClassifyRequest>;

/// Refuses what classification rejected, and non-connector traffic when policy says `deny`.
#[derive(Debug, Clone, Copy)]
pub struct RouteGuardLayer {
    other_requests: OtherRequests,
}

impl RouteGuardLayer {
    /// A guard applying `policy.other_requests`.
    pub fn new(other_requests: OtherRequests) -> Self {
        Self { other_requests }
    }
}

impl<S> Layer<S> for RouteGuardLayer {
    type Service = RouteGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteGuard { inner, other_requests: self.other_requests }
    }
}

/// See [`RouteGuardLayer`].
#[derive(Debug, Clone)]
pub struct RouteGuard<S> {
    inner: S,
    other_requests: OtherRequests,
}

impl<S, B, ResB> Service<Request<B>> for RouteGuard<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = GatewayError>,
{
    type Response = Response<ResB>;
    type Error = GatewayError;
    type Future = crate::future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let refusal = match request.extensions().get::<Route>() {
            Some(Route { rejection: Some(error), .. }) => Some(error.clone()),
            Some(Route { class: RouteClass::Other, .. }) | None if self.other_requests == OtherRequests::Deny => {
                Some(RouteError::NotAConnectorWrite)
            }
            _ => None,
        };
        match refusal {
            Some(error) => crate::future::ResponseFuture::rejected(error.into()),
            None => crate::future::ResponseFuture::future(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests;
