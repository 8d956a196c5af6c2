//! The request-rate limits (`ratelimit::RequestRateLimiter`, LIMITS.md §1)
//! as a tower layer over the ACME router, and the `RateLimit` /
//! `RateLimit-Policy` headers of a response: the HTTP side of the rate
//! limits, which the limiters themselves do not know.

use crate::ratelimit::{EndpointClass, RateLimitInfo, RequestRateLimiter, Verdict};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use std::future::Ready;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Add `RateLimit-Policy` and `RateLimit` for the most constrained limit a
/// request touched.
pub(crate) fn apply(info: &RateLimitInfo, headers: &mut HeaderMap) {
    for (name, value) in [
        ("ratelimit-policy", info.policy_header()),
        ("ratelimit", info.header()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

/// The client address the layer settled on, added to new-account requests
/// (the only handler that counts by IP) so it counts the same client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The tower layer. Put it inside the middleware that adds `Replay-Nonce`
/// and `Link` so refusals carry them too.
#[derive(Clone)]
pub struct RequestRateLayer {
    limiter: Arc<RequestRateLimiter>,
}

impl RequestRateLayer {
    /// Wrap a limiter; when called on a Tokio runtime this also starts its
    /// housekeeping (every 60 s).
    pub fn new(limiter: Arc<RequestRateLimiter>) -> RequestRateLayer {
        if tokio::runtime::Handle::try_current().is_ok() && !limiter.is_unlimited() {
            limiter.spawn_housekeeping(Duration::from_secs(60));
        }
        RequestRateLayer { limiter }
    }
}

impl<S> tower::Layer<S> for RequestRateLayer {
    type Service = RequestRateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestRateService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`RequestRateLayer`].
#[derive(Clone)]
pub struct RequestRateService<S> {
    inner: S,
    limiter: Arc<RequestRateLimiter>,
}

impl<S, B> tower::Service<Request<B>> for RequestRateService<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        match self.limiter.decide(req.uri().path(), peer, forwarded) {
            Verdict::Unlimited => Either::Right(self.inner.call(req)),
            Verdict::Allowed { class, client } => {
                if class == EndpointClass::NewAccount {
                    req.extensions_mut().insert(ClientIp(client));
                }
                Either::Right(self.inner.call(req))
            }
            Verdict::Refused {
                class,
                client,
                wait,
            } => Either::Left(std::future::ready(Ok(self
                .limiter
                .refusal(class, client, wait)
                .into_response()))),
        }
    }
}
