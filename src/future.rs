//! The response future shared by stages that can refuse a request before calling the next one:
//! either the inner service's future, or an error ready at once. Nothing is boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::error::GatewayError;

pin_project! {
    /// Either the inner future or an immediate refusal.
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields
    #[project = Projection]
    pub enum ResponseFuture<F> {
        /// Refused before the inner service was called.
        Rejected {
            error: Option<GatewayError>,
        },
        /// Waiting on the inner service.
        Future {
            #[pin]
            inner: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    /// A future that fails at once with `error`.
    pub fn rejected(error: GatewayError) -> Self {
        Self::Rejected { error: Some(error) }
    }

    /// A future that waits on `inner`.
    pub fn future(inner: F) -> Self {
        Self::Future { inner }
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    type Output = Result<T, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Future { inner } => inner.poll(cx),
            Projection::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending, // polled after completion: never resolves again
            },
        }
    }
}

pin_project! {
    /// Maps an upstream's answer into the gateway's response body and error types.
    pub struct MapUpstream<F> {
        #[pin]
        inner: F,
    }
}

impl<F> MapUpstream<F> {
    /// Wraps the upstream's future.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F, ResB, E> Future for MapUpstream<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    E: Into<crate::proxy::BoxError>,
{
    type Output =
        Result<http::Response<http_body_util::Either<http_body_util::Full<bytes::Bytes>, ResB>>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.project().inner.poll(cx));
        Poll::Ready(match result {
            Ok(response) => Ok(response.map(http_body_util::Either::Right)),
            Err(error) => Err(GatewayError::from_boxed(error.into())),
        })
    }
}
