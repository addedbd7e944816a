//! SDK clients from the standard AWS chain. `AWS_ENDPOINT_URL` (read by aws-config itself)
//! points the same binaries at an emulator; tests build clients explicitly instead.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Attempts per AWS call, the first included. The SDK's standard mode backs off exponentially
/// with full jitter on throttling, 5xx and timeouts; that is the bounded retry the fleet wants.
pub const AWS_MAX_ATTEMPTS: u32 = 5;

/// Long enough for a 20 s SQS long poll plus transfer; short calls finish far sooner.
pub const AWS_OPERATION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(AWS_MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(5))
}

pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(AWS_OPERATION_ATTEMPT_TIMEOUT)
        .build()
}

/// Loads the standard chain (environment, profile, IRSA web identity, container and instance
/// credentials) with the fleet's retry and timeout settings.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry_config())
        .timeout_config(timeout_config())
        .load()
        .await
}

/// Both clients the fleet uses, built from one SdkConfig.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Both clients, each reporting its successful calls as progress of the handling that
    /// made them ([`crate::progress`]).
    pub fn from_config(config: &SdkConfig) -> Self {
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(config)
            .interceptor(HandlingHooks)
            .build();
        let sqs = aws_sdk_sqs::config::Builder::from(config)
            .interceptor(HandlingHooks)
            .build();
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
        }
    }

    /// Clients for a local emulator with static dummy credentials; reads no environment.
    pub fn for_endpoint(endpoint_url: &str, region: &str) -> Self {
        let config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(aws_config::Region::new(region.to_owned()))
            .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
                aws_sdk_dynamodb::config::Credentials::new(
                    "testing", "testing", None, None, "static",
                ),
            ))
            .retry_config(retry_config())
            .timeout_config(timeout_config())
            .build();
        Self::from_config(&config)
    }
}

/// The handling's hooks on every AWS call: refused before each attempt behind a closed
/// [`crate::fence`], and a tick of [`crate::progress`] on every 2xx answer (a write done, a page
/// read, a message sent). They run in the calling task, so calls outside a handling (the
/// heartbeat's, the lease renewals) are neither fenced nor counted as progress.
#[derive(Debug)]
struct HandlingHooks;

impl aws_smithy_runtime_api::client::interceptors::Intercept for HandlingHooks {
    fn name(&self) -> &'static str {
        "HandlingHooks"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        crate::fence::check().map_err(Into::into)
    }

    fn read_after_deserialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if context.response().status().is_success() {
            crate::progress::tick();
        }
        Ok(())
    }
}
