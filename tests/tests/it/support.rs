//! Shared set-up of the integration tests: a unique table and queues on moto per test.

use fleet_shared::aws::AwsClients;
use fleet_shared::store::Store;
use fleet_tests::aws_env::{self, Queues};

#[allow(dead_code)] // fields used by some test modules only
pub struct TestEnv {
    pub endpoint: String,
    pub clients: AwsClients,
    pub table: String,
    pub store: Store,
    pub queues: Queues,
}

impl TestEnv {
    /// A fresh table and queue pair (max receive count 3, visibility 30 s).
    pub async fn new() -> TestEnv {
        Self::with_queue_settings(3, 30).await
    }

    pub async fn with_queue_settings(max_receive_count: u32, visibility: u32) -> TestEnv {
        let (endpoint, clients) = aws_env::local_clients().expect("moto endpoint");
        let table = aws_env::unique("receipts");
        aws_env::create_receipts_table(&clients.dynamodb, &table)
            .await
            .expect("create table");
        let queues = aws_env::create_queues(
            &clients.sqs,
            &aws_env::unique("work"),
            max_receive_count,
            visibility,
        )
        .await
        .expect("create queues");
        let store = Store::new(clients.dynamodb.clone(), &table);
        TestEnv {
            endpoint,
            clients,
            table,
            store,
            queues,
        }
    }
}
