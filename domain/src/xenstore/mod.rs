//! Xenstore wire codec and client (in progress).
