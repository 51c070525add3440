//! SPDY/3.1 as kubelet's streaming clients speak it (moby/spdystream, behind client-go's
//! `remotecommand` and `portforward`): the client opens streams with SYN_STREAM, each
//! named by headers (`streamType`, `port`, `requestID`); the server answers each with
//! SYN_REPLY and both sides send DATA frames, FIN half-closes. spdystream does no flow
//! control, so neither does this side (no SETTINGS or WINDOW_UPDATE are sent).

pub mod conn;
pub mod dictionary;
pub mod frame;

#[cfg(test)]
mod tests;
