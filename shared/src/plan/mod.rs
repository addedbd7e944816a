//! The processing rules as a pure function.
