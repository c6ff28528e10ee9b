//! The protocols' rules, as pure functions of bytes and header values, so they can be
//! unit-tested and fuzzed without sockets: the PROXY header ([`proxy_protocol`]), the
//! request head ([`request_head`]), the WebSocket upgrade ([`handshake`]), the choice of
//! Mosaic or nostr from the offered subprotocols ([`subprotocol`]), Mosaic 2025's HELLO
//! ([`hello`]), header lines whichever parser read them ([`fields`]) and the reasons an
//! upgrade is refused ([`reason`]).

pub mod fields;
pub mod handshake;
pub mod hello;
pub mod proxy_protocol;
pub mod reason;
pub mod request_head;
pub mod subprotocol;
