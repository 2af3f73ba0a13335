//! Tracing spans around futures, at no cost when traces are not exported.

use std::future::Future;

use futures::future::Either;
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

/// `future` in `span`; as it is when no layer wants the span (traces are not exported), so
/// that no disabled span is entered and left on every poll. Every hot path that opens a span
/// around a future goes through here.
pub fn in_span<F: Future>(future: F, span: tracing::Span) -> Either<F, Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(future)
    } else {
        Either::Right(future.instrument(span))
    }
}
