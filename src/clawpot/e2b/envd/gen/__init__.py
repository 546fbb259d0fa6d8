"""Generated from proto/e2b/envd (E2B's envd .proto files) by scripts/gen-proto.sh — do not edit."""
