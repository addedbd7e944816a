//! The SQS side of one received message: delete, visibility, the follow-up that replaces it,
//! and the dead-letter queue. "Delete only after success": every way out that finishes the
//! message sends what replaces it first (a follow-up, a dead-letter copy) and deletes the
//! received copy last, so a crash in between leaves a duplicate (which the chain token kills)
//! and never a lost batch.

use std::sync::{Arc, OnceLock};

use fleet_shared::message::BatchMessage;
use fleet_shared::queue::{self, QueueError};

use crate::received::Received;

/// One received message and the queues it may go to.
#[derive(Debug, Clone)]
pub struct Delivery {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_queue_url: Option<String>,
    pub msg: Received,
    /// The chain this handling continues (the message's own token, or the one it started).
    chain: Arc<OnceLock<String>>,
}

/// Where a dead-lettered message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLettered {
    /// Sent to the dead-letter queue with its reason attributes, and deleted here.
    Sent,
    /// Made visible again for the redrive policy (no dead-letter queue configured, or the
    /// body with attributes would exceed SQS's size limit).
    LeftToRedrive,
}

impl Delivery {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        dead_letter_queue_url: Option<String>,
        msg: Received,
    ) -> Self {
        Delivery {
            sqs,
            queue_url,
            dead_letter_queue_url,
            msg,
            chain: Arc::default(),
        }
    }

    /// Records the chain this handling continues; follow-ups carry it.
    pub fn continue_chain(&self, token: String) {
        let _ = self.chain.set(token);
    }

    pub fn chain(&self) -> Option<String> {
        self.chain.get().cloned()
    }

    /// Deletes the handled message. A failure is only logged: the message comes back after
    /// its visibility timeout and is handled again, which every path tolerates.
    pub async fn delete(&self) {
        let result = self
            .sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(&self.msg.receipt_handle)
            .send()
            .await;
        if let Err(e) = result {
            let e = queue::classify("DeleteMessage", e);
            tracing::warn!(error = %e, "could not delete the message; it will be handled again");
        }
    }

    /// Makes the message invisible for `seconds` from now (0: visible at once).
    pub async fn set_visibility(&self, seconds: u32) -> Result<(), QueueError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&self.msg.receipt_handle)
            .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| queue::classify("ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// Leaves the message for a later try, `seconds` from now; a failure is logged (the
    /// message then returns after its visibility timeout).
    pub async fn leave_for(&self, seconds: u32) {
        if let Err(e) = self.set_visibility(seconds).await {
            tracing::warn!(error = %e, "could not set the message's visibility; it returns after the visibility timeout");
        }
    }

    /// Sends `next` to the work queue after `delay_seconds` (the received copy stays until
    /// [`Delivery::delete`]).
    pub async fn send(&self, next: &BatchMessage, delay_seconds: u32) -> Result<(), QueueError> {
        queue::send_one(
            &self.sqs,
            &self.queue_url,
            &next.to_body(),
            delay_seconds,
            &[],
        )
        .await?;
        Ok(())
    }

    /// Sends the body, unchanged, to the dead-letter queue with the reason attributes, then
    /// deletes it from the work queue.
    pub async fn dead_letter(&self, reason: &'static str) -> Result<DeadLettered, QueueError> {
        let Some(dlq) = self.dead_letter_queue_url.as_deref() else {
            self.leave_to_redrive(reason, "no dead-letter queue configured")
                .await;
            return Ok(DeadLettered::LeftToRedrive);
        };
        let attributes = queue::dead_letter_attributes(
            reason,
            "permanent",
            self.msg.receive_count,
            &self.msg.first_seen(),
        );
        match queue::send_one(&self.sqs, dlq, &self.msg.body, 0, &attributes).await {
            Ok(_) => {
                self.delete().await;
                Ok(DeadLettered::Sent)
            }
            Err(e) if e.is_transient() => Err(e),
            // The body plus attributes can exceed SQS's size limit; the body alone fits.
            Err(e) => {
                self.leave_to_redrive(reason, &e.to_string()).await;
                Ok(DeadLettered::LeftToRedrive)
            }
        }
    }

    /// Makes the message visible again so that the redrive policy moves it after
    /// `maxReceiveCount` receives (body unchanged, without reason attributes).
    async fn leave_to_redrive(&self, reason: &'static str, why: &str) {
        self.leave_for(0).await;
        tracing::warn!(reason, why, "message left to the redrive policy");
    }
}
