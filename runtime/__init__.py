"""The replay runtime: retrieve -> bundle -> local model -> deterministic gate -> escalate -> log."""
