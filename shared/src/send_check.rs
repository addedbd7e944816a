//! Compile-time proof that the futures the worker awaits on its multi-threaded runtime are
//! `Send` (rustc's auto-trait inference over stream combinators is fragile: rust-lang/rust#102211).

#[allow(dead_code)]
fn assert_send<T: Send>(_: &T) {}

#[allow(
    dead_code,
    unreachable_code,
    unused_variables,
    clippy::diverging_sub_expression
)]
fn futures_are_send(
    services: &crate::finish::Services,
    pinecone: &crate::pinecone::client::PineconeClient,
) {
    let changes: Vec<(String, crate::pinecone::merge::MetadataChange)> = Vec::new();
    assert_send(&pinecone.apply_merges(changes));
    let _ = services;
}

#[allow(dead_code)]
fn todo_value<T>() -> T {
    unreachable!("only type-checked, never called")
}
