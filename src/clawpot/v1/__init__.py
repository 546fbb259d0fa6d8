"""Generated from proto/clawpot/v1 by scripts/gen-proto.sh — do not edit."""
