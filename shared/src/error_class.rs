//! What a caller should do about an error: the one classification the worker acts on.
//!
//! Errors of the batch (a poison body, a batch unknown to DynamoDB or OpenAI) are dead-lettered;
//! transient errors are retried with a growing back-off; errors of the deployment (a rejected
//! key, access denied, a missing table or queue, exhausted billing) are retried with the same
//! back-off but never cost a batch: they say nothing about the batch, and dead-lettering on them
//! would empty the queue into the dead-letter queue on every key rotation (docs/spec/fleet-design.md).

/// How to treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Throttling, 5xx, timeouts, a lost lease: the same work may succeed later.
    Transient,
    /// The deployment is wrong, not the batch: back off, report unready, never dead-letter.
    Deployment(DeploymentCause),
    /// The input itself is bad; retrying cannot help: dead-letter.
    Permanent,
}

/// Which part of the deployment is wrong (the `cause` label of
/// `fleet_deployment_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeploymentCause {
    /// OpenAI rejected the key (401, or 403 on the batch object).
    OpenAiKey,
    /// OpenAI answered 429 `insufficient_quota`: billing, not a rate limit.
    OpenAiQuota,
    /// Pinecone rejected the key (401/403).
    PineconeKey,
    /// AWS refused our credentials or permissions (`AccessDenied*`, `UnrecognizedClient`, …).
    AwsAccess,
    /// Our own table or queue does not exist (`ResourceNotFound`, `NonExistentQueue`).
    AwsMissingResource,
}

impl DeploymentCause {
    pub const ALL: [DeploymentCause; 5] = [
        DeploymentCause::OpenAiKey,
        DeploymentCause::OpenAiQuota,
        DeploymentCause::PineconeKey,
        DeploymentCause::AwsAccess,
        DeploymentCause::AwsMissingResource,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentCause::OpenAiKey => "openai_key",
            DeploymentCause::OpenAiQuota => "openai_quota",
            DeploymentCause::PineconeKey => "pinecone_key",
            DeploymentCause::AwsAccess => "aws_access",
            DeploymentCause::AwsMissingResource => "aws_missing_resource",
        }
    }
}

impl ErrorClass {
    /// The `class` label of `fleet_message_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Deployment(_) => "deployment",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// Worth trying again later (transient, or the deployment may be fixed meanwhile).
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorClass::Permanent)
    }
}

/// The AWS error codes that mean "our deployment is wrong", shared by the DynamoDB and SQS
/// classifiers.
pub fn aws_deployment_cause(code: &str) -> Option<DeploymentCause> {
    match code {
        "ResourceNotFoundException"
        | "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist"
        | "NonExistentQueue" => Some(DeploymentCause::AwsMissingResource),
        c if c.starts_with("AccessDenied")
            || c.starts_with("UnrecognizedClient")
            || c == "InvalidClientTokenId"
            || c == "ExpiredToken"
            || c == "ExpiredTokenException"
            || c == "InvalidSignatureException"
            || c == "SignatureDoesNotMatch"
            || c == "MissingAuthenticationToken"
            || c == "KMS.AccessDeniedException" =>
        {
            Some(DeploymentCause::AwsAccess)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_codes_of_the_deployment() {
        for (code, cause) in [
            ("AccessDeniedException", Some(DeploymentCause::AwsAccess)),
            ("AccessDenied", Some(DeploymentCause::AwsAccess)),
            (
                "UnrecognizedClientException",
                Some(DeploymentCause::AwsAccess),
            ),
            (
                "ResourceNotFoundException",
                Some(DeploymentCause::AwsMissingResource),
            ),
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                Some(DeploymentCause::AwsMissingResource),
            ),
            (
                "QueueDoesNotExist",
                Some(DeploymentCause::AwsMissingResource),
            ),
            ("ThrottlingException", None),
            ("ValidationException", None),
            ("ConditionalCheckFailedException", None),
        ] {
            assert_eq!(aws_deployment_cause(code), cause, "{code}");
        }
    }

    #[test]
    fn labels_are_bounded_and_distinct() {
        let labels: std::collections::BTreeSet<_> =
            DeploymentCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), DeploymentCause::ALL.len());
        assert_eq!(
            ErrorClass::Deployment(DeploymentCause::AwsAccess).as_str(),
            "deployment"
        );
        assert!(ErrorClass::Deployment(DeploymentCause::OpenAiKey).is_retryable());
        assert!(!ErrorClass::Permanent.is_retryable());
    }
}
