//! Real LXC containers: see issue 3.
