//! Login: who is opening this WebSocket?
//!
//! The token is the whole query string (`wss://relay/?<jwt>`, as rmb-rs peers send it) or
//! an `Authorization: Bearer <jwt>` header. Checks, cheapest first: token shape and time
//! rules, then the registry lookup of twin `sub`, then the signature against its account,
//! then that the token was never used before ([`crate::logins`]). All of it happens
//! before the upgrade, so a refused replay never reaches the session it names (a session
//! that logs in again replaces the connection it had). Statuses and messages follow
//! rmb-rs (400 missing, 401 invalid/unknown, 500 registry); a token used before is 401,
//! a full or unreachable memory of used tokens 503.

use axum::http::{HeaderMap, StatusCode, header};
use rmb_identity::Token;

use crate::logins::FirstUse;
use crate::state::RelayState;
use crate::switch::SessionId;
use crate::throttle::LogThrottle;

/// Failures of the used-token store are logged at most once per this interval (every
/// login attempt meets them while Redis is down).
static STORE_LOG: LogThrottle = LogThrottle::new(std::time::Duration::from_secs(10));

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
    /// The token was accepted before (here or, with Redis, on another replica): only a
    /// copy of it can be shown again.
    #[error("invalid jwt: token already used; make a new one for each connection")]
    Replayed,
    /// `--login-memory` tokens that may still be replayed are remembered: refused rather
    /// than forgetting one.
    #[error("too many logins at once; try again shortly")]
    MemoryFull,
    /// Redis did not answer whether the token was used (details in the relay's log, not
    /// for the client).
    #[error("login check unavailable; try again shortly")]
    StoreUnavailable,
}

impl AuthError {
    /// The HTTP status rmb-rs answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing => StatusCode::BAD_REQUEST,
            AuthError::Invalid(_) | AuthError::UnknownTwin(_) | AuthError::Replayed => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Registry(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::Full | AuthError::MemoryFull | AuthError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Label for `relay_errors_total{kind}`: replays and a full or unreachable memory of
    /// used tokens apart from other refused logins, since they mean different things
    /// (a captured token, or too many logins, instead of clocks or keys).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Replayed => "login_replayed",
            AuthError::MemoryFull => "login_memory_full",
            AuthError::StoreUnavailable => "login_store",
            _ => "login",
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
    match state
        .used_logins
        .first_use(&token, &state.config.jwt, now)
        .await
    {
        FirstUse::First => {}
        FirstUse::Replayed => return Err(AuthError::Replayed),
        FirstUse::Full => return Err(AuthError::MemoryFull),
        FirstUse::Unavailable(e) => {
            // The Redis error is for the operator's log, not for the client.
            if let Some(held_back) = STORE_LOG.allow() {
                tracing::warn!(error = %e, held_back, "used login tokens cannot be checked in redis");
            }
            return Err(AuthError::StoreUnavailable);
        }
    }
    Ok(SessionId {
        twin: claims.sub,
        sid: claims.sid.clone().filter(|s| !s.is_empty()),
    })
}
