//! Login: who is opening this WebSocket?
//!
//! The token is the whole query string (`wss://relay/?<jwt>`, as rmb-rs peers send it) or
//! an `Authorization: Bearer <jwt>` header. Checks, cheapest first: token shape and time
//! rules, then the registry lookup of twin `sub`, then the signature against its account.
//! Statuses and messages follow rmb-rs (400 missing, 401 invalid/unknown, 500 registry).

use axum::http::{HeaderMap, StatusCode, header};
use rmb_identity::Token;

use crate::state::RelayState;
use crate::switch::SessionId;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing jwt")]
    Missing,
    #[error("invalid jwt: {0}")]
    Invalid(String),
    #[error("twin not found {0}")]
    UnknownTwin(u32),
    #[error("failed to get twin: {0}")]
    Registry(String),
    #[error("max number of users reached")]
    Full,
}

impl AuthError {
    /// The HTTP status rmb-rs answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing => StatusCode::BAD_REQUEST,
            AuthError::Invalid(_) | AuthError::UnknownTwin(_) => StatusCode::UNAUTHORIZED,
            AuthError::Registry(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::Full => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The token of an upgrade request, from the query string or a Bearer header.
pub fn token_of<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        return Some(query);
    }
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks a login token and returns the session it opens.
pub async fn authenticate(
    state: &RelayState,
    token: Option<&str>,
    now: u64,
) -> Result<SessionId, AuthError> {
    let token = Token::parse(token.ok_or(AuthError::Missing)?)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    token
        .check_time(now, &state.config.jwt)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let claims = token.claims();
    let twin = state
        .registry
        .get_twin(claims.sub)
        .await
        .map_err(|e| AuthError::Registry(e.to_string()))?
        .ok_or(AuthError::UnknownTwin(claims.sub))?;
    token
        .verify_signature(&twin.account)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    if state.switch.len() >= state.config.max_sessions {
        return Err(AuthError::Full);
    }
    Ok(SessionId {
        twin: claims.sub,
        sid: claims.sid.clone().filter(|s| !s.is_empty()),
    })
}
