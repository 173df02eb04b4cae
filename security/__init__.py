"""TLS, identities, the ACL policy engine, masking and audit (DESIGN.md §7)."""
