//! Digest authentication (RFC 7616, RFC 8760): the parameter parser and
//! the constant-time checks ([`digest`]), and the stateless HMAC nonces with
//! their bounded nonce-count replay table ([`nonce`]).

pub mod digest;
pub mod nonce;
