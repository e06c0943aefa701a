//! The FastCGI front.
pub mod codec;
