//! The producer: one scheduler tick enqueues pending completion batches; operators' tools.
