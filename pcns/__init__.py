"""pcns: signed password changes in, an encrypted durable PostgreSQL queue, retried delivery out."""

__version__ = "0.1.0"
