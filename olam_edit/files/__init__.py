"""Bytes on disk: the one atomic writer every file of the project goes through, and fingerprints."""
