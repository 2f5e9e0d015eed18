//! The client assertion (filled in on main by the lead).
