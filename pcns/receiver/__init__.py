"""The HTTP side: signed password changes in, status, health and metrics out."""
