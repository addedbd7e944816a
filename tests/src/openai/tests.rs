//! In-process tests of the OpenAI emulator.
