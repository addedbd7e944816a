//! Store errors, classified so callers can choose: retry later, dead-letter, or crash.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error_class::{DeploymentCause, ErrorClass, aws_deployment_cause};
use crate::model::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Throttling, 5xx, timeouts, connection failures: the SDK already retried; try later.
    #[error("DynamoDB {op} failed (transient): {message}")]
    Transient { op: &'static str, message: String },
    /// Validation errors, missing table, access denied: retrying the same call will not help.
    #[error("DynamoDB {op} failed: {message}")]
    Permanent { op: &'static str, message: String },
    /// Access denied, unknown credentials, no such table: the deployment is wrong, not the data.
    #[error("DynamoDB {op} failed ({}): {message}", cause.as_str())]
    Deployment {
        op: &'static str,
        cause: DeploymentCause,
        message: String,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Transient { .. } => ErrorClass::Transient,
            StoreError::Deployment { cause, .. } => ErrorClass::Deployment(*cause),
            StoreError::Permanent { .. } | StoreError::Decode(_) => ErrorClass::Permanent,
        }
    }
}

const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "LimitExceededException",
];

pub(crate) fn classify<E, R>(op: &'static str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(&err).to_string();
    if let Some(cause) = err
        .as_service_error()
        .and_then(|e| e.code())
        .and_then(aws_deployment_cause)
    {
        return StoreError::Deployment { op, cause, message };
    }
    let transient = match &err {
        SdkError::ServiceError(se) => se
            .err()
            .code()
            .is_some_and(|code| TRANSIENT_CODES.contains(&code)),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    if transient {
        StoreError::Transient { op, message }
    } else {
        StoreError::Permanent { op, message }
    }
}
