//! Cards, readers and the authentication center (issue 4; SPEC F1–F3, F13–F15, I9, I10).

pub mod crypto;
