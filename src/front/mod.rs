//! Fronts: the downstream protocols a web server speaks to us.
pub mod fastcgi;
