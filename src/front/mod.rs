//! Fronts: the downstream protocols a web server speaks to us. Each turns its
//! protocol into a [`crate::request::Request`] and an [`crate::request::Exchange`].
pub mod cgi;
pub mod fastcgi;
pub mod outq;
pub mod scgi;
