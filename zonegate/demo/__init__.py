"""The demo: a simulated tank PLC, the in-process zonegate stack and the narrated tour of `zonegate demo`."""
