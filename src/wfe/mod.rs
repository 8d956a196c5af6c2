//! wfe
