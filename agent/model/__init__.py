"""Decoded, validated, frozen desired-state objects. No I/O, no protobuf types leak past decode."""
