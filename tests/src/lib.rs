//! End-to-end harness: real processes against real catalogs.
