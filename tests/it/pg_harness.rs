//! The throwaway PostgreSQL cluster lives in the library
//! (`linetokd::store::pg::cluster`), where the store's own unit tests use
//! it too; the integration tests name it through here.

pub use linetokd::store::pg::cluster::*;
