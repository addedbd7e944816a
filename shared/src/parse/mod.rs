//! Streaming parsers for the files of an OpenAI batch (docs/spec/openai-batch.md): the input file's
//! targets, the output and error files' answers, and the 12-part result ids inside them.
//!
//! Nothing here does I/O beyond the reader (or file) it is handed, and nothing holds more than
//! one line (besides [`BatchIndex`]: where each receipt's lines are, so that a batch can be
//! processed a chunk of receipts at a time): the caller reads with [`LineReader`] /
//! [`AsyncLineReader`] (which number lines the way the verdict journal's `source` needs, give
//! their offsets, and cap their length), reads lines back with [`LineRef`], classifies each with
//! [`parse_output_line`] or [`parse_input_line`], and feeds the result on (to
//! [`crate::plan::PlanBuilder`] or [`TargetCollector`]). Bad input is a value, never an error or
//! a panic: every way a line, a result or an id can be wrong has its own variant, so it can be
//! counted and logged with its position and processing goes on.

mod cursor;
mod escaped;
mod fast;
pub mod index;
pub mod input;
mod json;
pub mod lines;
pub mod malformed;
pub mod output;
pub mod result_id;
mod scan;

pub use index::{BatchIndex, ReceiptLines, chunk_lines};
pub use input::{
    InputCounters, InputLine, RequestTargets, TARGETS_HEADER, TargetCollector, parse_input_line,
    parse_input_read,
};
pub use lines::{
    AsyncLineReader, DEFAULT_MAX_LINE_BYTES, LineReader, LineRef, LineTooLong, LocatedLine,
    NumberedLine, read_lines,
};
pub use malformed::{Malformed, MalformedKind};
pub use output::{
    MAX_CORRECT_LABEL, OutputParser, ParsedLine, ParsedResult, RequestFailure, ResultSkip,
    locate_custom_id, parse_output_line, parse_output_read, peek_custom_id,
};
pub use result_id::{ResultId, ResultIdError};
