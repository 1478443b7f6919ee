//! The one shape of every refusal herald's HTTP side gives: JSON `{ error,
//! field? }` with the status the protocol assigns to its class.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::protocol::Invalid;

/// A refused request: status, message, and the field at fault if any.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    /// A machine-readable name of the refusal, where a client must tell
    /// refusals of one status apart (`OUTCOME_UNKNOWN`).
    code: Option<&'static str>,
    /// The request body was left unread: the connection cannot be reused.
    close: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            code: None,
            close: false,
        }
    }

    /// The same refusal, with a machine-readable code.
    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The same refusal, telling the client that the connection will be
    /// closed (its request body was left unread).
    pub(crate) fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }

    pub(crate) fn invalid(e: Invalid) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: e.message,
            field: (!e.field.is_empty()).then_some(e.field),
            code: None,
            close: false,
        }
    }
}

/// What a refusal told its client, kept on the response for whoever
/// records refusals (the dashboard's list of recent ones).
#[derive(Clone, Debug)]
pub(crate) struct Refused(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            field: self.field.as_deref(),
            code: self.code,
        };
        let mut res = (self.status, Json(body)).into_response();
        res.extensions_mut().insert(Refused(self.message));
        if self.close {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
