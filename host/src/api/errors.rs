//! Errors on their way to the client: [`ApiError`] (any [`Error`] as `{"error": {"code",
//! "message"}}` with its status), and the logging of server-side failures.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// An [`Error`] on its way to the client as JSON.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub(super) struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

/// Builds the JSON error response for `status`, `code` and `message`.
pub(super) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response()
}

/// Logs an error on its way to a client: internals go to the log, never to the client.
pub(super) fn log_error(e: &Error) {
    match e {
        Error::Internal(detail) => tracing::error!(%detail, "internal error"),
        other if other.status() >= 500 => tracing::warn!(error = %other, "request failed"),
        _ => {}
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        log_error(&self.0);
        error_response(status, self.0.code(), self.0.public_message())
    }
}
