//! The two ways the AWS SDK reaches a [`SimTable`]:
//!
//! - in process, through the SDK's own pluggable HTTP client ([`SimHttpClient`], set with
//!   `http_client` on the `SdkConfig`): the request the SDK signed and serialised is answered
//!   without a socket, so tests under tokio's paused clock stay deterministic;
//! - over loopback HTTP ([`serve`]), for programs in other processes (the worker binaries of
//!   the simulation): the same handler behind an axum route, reached with
//!   `AWS_ENDPOINT_URL_DYNAMODB`.
//!
//! Either way the fleet's store code runs unchanged: it builds the same requests it sends to
//! DynamoDB, and reads the same JSON 1.0 answers.

use std::net::SocketAddr;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fleet_shared::aws::AwsClients;

use super::SimTable;

/// The AWS SDK's HTTP client, answered by a [`SimTable`] in process.
#[derive(Debug, Clone)]
pub struct SimHttpClient {
    table: SimTable,
}

impl SimHttpClient {
    pub fn new(table: SimTable) -> Self {
        SimHttpClient { table }
    }
}

impl HttpClient for SimHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for SimHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let table = self.table.clone();
        HttpConnectorFuture::new(async move {
            let target = request
                .headers()
                .get("x-amz-target")
                .unwrap_or_default()
                .to_owned();
            let Some(body) = request.body().bytes().map(<[u8]>::to_vec) else {
                return Err(ConnectorError::other(
                    "SimTable needs an in-memory request body".into(),
                    None,
                ));
            };
            let reply = table.handle(&target, &body).await;
            let status = StatusCode::try_from(reply.status)
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let mut response = HttpResponse::new(status, SdkBody::from(reply.body));
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.0");
            response
                .headers_mut()
                .insert("x-amzn-requestid", "simtable");
            Ok(response)
        })
    }
}

/// SDK clients whose DynamoDB calls `table` answers in process, configured as
/// [`AwsClients::for_endpoint`] configures them for moto (retries, timeouts, the handling's
/// hooks): what the conformance suite and the property tests use. The SQS client is built
/// too but has nothing to talk to.
pub fn clients(table: &SimTable) -> AwsClients {
    use aws_config::{BehaviorVersion, SdkConfig};
    let config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url("http://simtable.invalid")
        .region(aws_config::Region::new(crate::aws_env::REGION))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "static"),
        ))
        .retry_config(fleet_shared::aws::retry_config())
        .timeout_config(fleet_shared::aws::timeout_config())
        .http_client(SharedHttpClient::new(SimHttpClient::new(table.clone())))
        .build();
    AwsClients::from_config(&config)
}

/// A [`SimTable`] served over loopback HTTP. Stops when dropped or on [`SimServer::shutdown`].
pub struct SimServer {
    server: crate::common::Server,
}

impl SimServer {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`, the value for `AWS_ENDPOINT_URL_DYNAMODB`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Serves `table` over HTTP on `addr` (DynamoDB's JSON 1.0 protocol on `POST /`).
pub async fn serve(table: SimTable, addr: SocketAddr) -> anyhow::Result<SimServer> {
    let app = axum::Router::new()
        .fallback(axum::routing::post(answer))
        .with_state(table);
    Ok(SimServer {
        server: crate::common::Server::bind(addr, app).await?,
    })
}

async fn answer(State(table): State<SimTable>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let reply = table.handle(&target, &body).await;
    let status =
        axum::http::StatusCode::from_u16(reply.status).unwrap_or(axum::http::StatusCode::OK);
    (
        status,
        [
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amzn-requestid", "simtable"),
        ],
        reply.body,
    )
        .into_response()
}
