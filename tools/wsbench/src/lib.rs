//! The pieces of wsbench other tools reuse (tools/soak): connecting from rotating source
//! addresses, error reasons as tally keys, the open-file limit. The binary is `src/main.rs`.

pub mod common;
