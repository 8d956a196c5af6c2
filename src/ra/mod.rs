//! ra
