//! Stages that only adjust a request on its way in (classification, header hygiene) and never
//! answer themselves: one pass-through service for all of them, parameterised by what they do.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

/// One adjustment of an incoming request.
pub trait RequestStep: Clone {
    /// Adjusts `request` before it moves on.
    fn apply<B>(&self, request: &mut Request<B>);
}

/// Applies a [`RequestStep`] to every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepLayer<P> {
    step: P,
}

impl<P> StepLayer<P> {
    /// A layer applying `step`.
    pub const fn new(step: P) -> Self {
        Self { step }
    }
}

impl<S, P: Clone> Layer<S> for StepLayer<P> {
    type Service = Step<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Step { inner, step: self.step.clone() }
    }
}

/// See [`StepLayer`].
#[derive(Debug, Clone)]
pub struct Step<S, P> {
    inner: S,
    step: P,
}

impl<S, P, B> Service<Request<B>> for Step<S, P>
where
    S: Service<Request<B>>,
    P: RequestStep,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.step.apply(&mut request);
        self.inner.call(request)
    }
}
