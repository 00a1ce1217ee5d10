//! Errors of the local HTTP API: every refusal is a 4xx (or 5xx for the network's and
//! Redis's failures) with a JSON body saying what is wrong, never an empty answer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::topics::TopicError;
use crate::topics::wire::DraftError;

/// An error answer: `{"http": 400, "error": "...", "code": <remote code, if any>}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for people.
    pub message: String,
    /// The rmb error code a remote twin answered with, when it did.
    pub code: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    http: u16,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
}

impl ApiError {
    /// A 400 saying `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            http: self.status.as_u16(),
            error: &self.message,
            code: self.code,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> Self {
        let status = match &e {
            TopicError::Draft(DraftError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            TopicError::Name(_) | TopicError::Draft(_) | TopicError::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            TopicError::NotFound(_) | TopicError::NotSubscribed(_) => StatusCode::NOT_FOUND,
            TopicError::NotOwner { .. } | TopicError::Refused(_) => StatusCode::FORBIDDEN,
            // An owner pacing new subscriptions: the client should come back later.
            TopicError::Remote { error, .. } if error.code == 429 => StatusCode::TOO_MANY_REQUESTS,
            TopicError::Remote { .. } | TopicError::Send { .. } | TopicError::BadAnswer { .. } => {
                StatusCode::BAD_GATEWAY
            }
            TopicError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            TopicError::Busy | TopicError::Store(_) | TopicError::Closed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let code = match &e {
            TopicError::Remote { error, .. } => Some(error.code),
            TopicError::Send { error, .. } => Some(error.code()),
            _ => None,
        };
        ApiError {
            status,
            message: e.to_string(),
            code,
        }
    }
}
