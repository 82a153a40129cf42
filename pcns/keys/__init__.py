"""Key custody in the service: data keys in PostgreSQL wrapped by a KEK, rotation, rewrap."""
