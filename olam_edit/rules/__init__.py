"""Rules: what a user asks to change, turned into keys, targets and a solve. One sub-package per rule kind."""
