//! The rules of docs/spec/processing-rules.md, one test per rule and per "fixes:" item, plus properties.

mod fixtures;
mod props;
mod rules;
