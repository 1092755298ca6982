//! Sans-IO core.
