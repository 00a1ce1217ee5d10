//! Turning `subxt` failures into answers a user can act on.
//!
//! A transaction the chain rejects must read as the chain's own error name
//! (`TfgridModule.InvalidRelayAddress`), which is what tfchain's docs and rmb-rs users
//! search for. Everything else is a [`OpError::Suspect`]: the failover logic then asks
//! the node whether it is still there.

use subxt::error::{
    BackendError, DispatchError, ExtrinsicError, RpcError, TransactionEventsError,
    TransactionFinalizedSuccessError, TransactionProgressError, TransactionStatusError,
};

use super::super::RegistryError;
use super::endpoints::OpError;

/// Any failure we did not recognise as an answer from the chain.
pub fn suspect(error: impl std::fmt::Display) -> OpError {
    OpError::Suspect(error.to_string())
}

/// A decoding failure: the node answered with something we cannot read.
pub fn invalid(what: &str, error: impl std::fmt::Display) -> OpError {
    OpError::Final(RegistryError::Invalid(format!("{what}: {error}")))
}

/// A failure to submit a transaction: the node's refusal (bad nonce, cannot pay fees, …)
/// or a transport problem.
pub fn submit_failed(error: ExtrinsicError) -> OpError {
    match &error {
        ExtrinsicError::ErrorSubmittingTransaction(BackendError::Rpc(RpcError::ClientError(
            subxt::rpcs::Error::User(refusal),
        ))) => {
            let data = refusal.data.as_ref().map(|d| format!(" ({})", d.get()));
            refused(format!("{}{}", refusal.message, data.unwrap_or_default()))
        }
        ExtrinsicError::TransactionStatusError(status) => status_refusal(status),
        _ => suspect(error),
    }
}

/// A failure while waiting for a transaction: a dispatch error names the pallet and error.
pub fn finalization_failed(error: TransactionFinalizedSuccessError) -> OpError {
    match &error {
        TransactionFinalizedSuccessError::SuccessError(
            TransactionEventsError::ExtrinsicFailed(dispatch),
        ) => refused(dispatch_error_name(dispatch)),
        TransactionFinalizedSuccessError::FinalizationError(
            TransactionProgressError::TransactionStatusError(status),
        ) => status_refusal(status),
        _ => suspect(error),
    }
}

/// `Pallet.Error` for module errors (`TfgridModule.TwinWithPubkeyExists`), the variant
/// otherwise (`BadOrigin`, `Token(FundsUnavailable)`).
pub fn dispatch_error_name(error: &DispatchError) -> String {
    match error {
        DispatchError::Module(module) => match module.details() {
            Ok(details) => format!("{}.{}", details.pallet.name(), details.variant.name),
            Err(_) => module.to_string(),
        },
        other => format!("{other:?}"),
    }
}

fn status_refusal(status: &TransactionStatusError) -> OpError {
    match status {
        TransactionStatusError::Invalid(message) => {
            refused(format!("invalid transaction: {message}"))
        }
        TransactionStatusError::Dropped(message) => {
            refused(format!("transaction dropped: {message}"))
        }
        TransactionStatusError::Error(message) => refused(format!("transaction failed: {message}")),
        other => suspect(other),
    }
}

fn refused(message: String) -> OpError {
    OpError::Final(RegistryError::Refused(message))
}
