//! sa
