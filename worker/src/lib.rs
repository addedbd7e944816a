//! The worker: a long-running SQS consumer that checks OpenAI completion batches and applies
//! finished ones.
