//! Watching the DynamoDB requests a store makes: an SDK interceptor that shows a closure each
//! request's operation (`X-Amz-Target`) and JSON body before it is sent, and tells another when
//! its answer has been read. The tests use it to count reads, to see cursor writes, and to
//! hold one apply at an exact point while another runs.

use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use serde_json::Value;

type BeforeRequest = dyn Fn(&str, &Value) + Send + Sync;
type AfterAnswer = dyn Fn() + Send + Sync;

#[derive(Clone)]
pub struct Watch {
    before: Arc<BeforeRequest>,
    after: Arc<AfterAnswer>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

#[allow(dead_code)] // each test module uses its own part
impl Watch {
    /// Shows `before` every request (its target and body).
    pub fn requests(before: impl Fn(&str, &Value) + Send + Sync + 'static) -> Watch {
        Watch::requests_and_answers(before, || {})
    }

    /// Shows `before` every request, and tells `after` when its answer has been read.
    pub fn requests_and_answers(
        before: impl Fn(&str, &Value) + Send + Sync + 'static,
        after: impl Fn() + Send + Sync + 'static,
    ) -> Watch {
        Watch {
            before: Arc::new(before),
            after: Arc::new(after),
        }
    }

    /// A client of the same endpoint as `base` that this watch sees.
    pub fn client(self, base: &aws_sdk_dynamodb::Client) -> aws_sdk_dynamodb::Client {
        let conf = base.config().to_builder().interceptor(self).build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }
}

impl Intercept for Watch {
    fn name(&self) -> &'static str {
        "Watch"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let body: Value = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        (self.before)(target, &body);
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        _: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        (self.after)();
        Ok(())
    }
}
