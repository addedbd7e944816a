//! In-process tests of the Pinecone emulator.
